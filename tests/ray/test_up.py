"""`callray up` from nothing: everything starts, the endpoint answers, SIGTERM leaves nothing."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest

from tests.conftest import TIMEOUT_FACTOR

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_up_starts_everything_and_stops_clean(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "CALLRAY_DATA_DIR": str(tmp_path / "data"),
        "CALLRAY_METRICS_PORT": str(port),
        "CALLRAY_HOSTS": "1",
        "CALLRAY_EXECUTORS": "1",
        "RAY_AUTH_MODE": "disabled",
    }
    for name in ("REDIS_URL", "RAY_ADDRESS", "OPENAI_API_KEY", "CALLRAY_MODEL_URL"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner: list[str] = []
        deadline = time.monotonic() + 120 * TIMEOUT_FACTOR
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            banner.append(line)
            if "Ctrl-C stops everything" in line:
                break
        text = "".join(banner)
        assert "callray is up" in text, text
        assert "embedded redis-server" in text and "local model server" in text
        # The embedded Redis has a password; it is in a file only we can read, not the banner.
        url_file = tmp_path / "data" / "redis.url"
        password = urlsplit(url_file.read_text().strip()).password
        assert password and password not in text
        assert stat.S_IMODE(url_file.stat().st_mode) == 0o600
        started = psutil.Process(proc.pid).children(recursive=True)
        names = {p.name() for p in started}
        assert any("redis-server" in n for n in names), names
        assert any("raylet" in n for n in names) and any("gcs_server" in n for n in names), names
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            exposed = response.read()
        assert b"callray_tool_reclaims_total" in exposed
        assert b"autoscaler_" not in exposed  # Ray's own series stay off our endpoint

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90 * TIMEOUT_FACTOR) == 0
        rest = proc.stdout.read()
        assert "stopped" in rest
        deadline = time.monotonic() + 20 * TIMEOUT_FACTOR
        alive = [p for p in started if _alive(p)]
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = [p for p in started if _alive(p)]
        assert not alive, [(p.pid, p.name()) for p in alive]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
