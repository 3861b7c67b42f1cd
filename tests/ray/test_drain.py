"""SIGTERM to ``callray up`` with calls in progress, as an operator's rolling restart sends it:
readiness fails at once and new calls are turned away busy, the calls go on until the drain
deadline, then each hears a goodbye and is hung up; then everything stops, no process left.
Real processes and signals, Twilio callers on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import psutil
import pytest

from tests.conftest import TIMEOUT_FACTOR, free_port
from tests.ray.test_up import _alive
from tests.twilio_caller import TwilioCaller

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.slow]

DRAIN_S = 3.0


async def _readline_until(stream: asyncio.StreamReader, marker: str, limit_s: float) -> str:
    seen = ""
    async with asyncio.timeout(limit_s):
        while marker not in seen:
            line = (await stream.readline()).decode()
            if not line:
                raise AssertionError(f"callray up exited before {marker!r}:\n{seen}")
            seen += line
    return seen


async def test_sigterm_drains_then_says_goodbye_and_stops_clean(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "CALLRAY_DATA_DIR": str(tmp_path / "data"),
        "CALLRAY_PORT": str(port),
        "CALLRAY_METRICS_PORT": str(free_port()),
        "CALLRAY_HOSTS": "1",
        "CALLRAY_EXECUTORS": "1",
        "CALLRAY_DRAIN_TIMEOUT_S": str(DRAIN_S),
        "RAY_AUTH_MODE": "disabled",
    }
    for name in ("REDIS_URL", "RAY_ADDRESS", "OPENAI_API_KEY", "CALLRAY_MODEL_URL"):
        env.pop(name, None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "up",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        stdin=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    base = f"http://127.0.0.1:{port}"
    callers: list[TwilioCaller] = []
    try:
        await _readline_until(proc.stdout, "Ctrl-C stops everything", 120 * TIMEOUT_FACTOR)
        started = psutil.Process(proc.pid).children(recursive=True)
        for _ in range(3):
            caller = TwilioCaller(base)
            await caller.dial()
            callers.append(caller)
        async with asyncio.timeout(30 * TIMEOUT_FACTOR):
            while not all(c.received_audio > 8 * 500 for c in callers):
                await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/readyz") as reply:
                assert reply.status == 200, await reply.text()

            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            async with asyncio.timeout(5 * TIMEOUT_FACTOR):
                while True:
                    async with http.get(f"{base}/readyz") as reply:
                        if reply.status == 503:
                            assert "draining" in (await reply.json())["reasons"]
                            break
                    await asyncio.sleep(0.05)
            assert time.monotonic() - signalled < 1.0 * TIMEOUT_FACTOR
            form = {"CallSid": "CA" + "9" * 32, "From": "+15550100", "To": "+15550199"}
            async with http.post(f"{base}/twilio/voice", data=form) as reply:
                twiml = await reply.text()
            assert "<Hangup" in twiml and "<Stream" not in twiml  # turned away busy

        # The calls in progress go on until the drain deadline ...
        heard = {c.call_sid: c.received_audio for c in callers}
        await asyncio.sleep(max(0.0, signalled + DRAIN_S - 0.5 - time.monotonic()))
        assert all(c.closed_reason is None for c in callers)
        # ... then each hears a goodbye and is hung up.
        deadline = signalled + DRAIN_S
        goodbye_at: dict[str, float] = {}
        async with asyncio.timeout(20 * TIMEOUT_FACTOR):
            while not all(c.closed_reason is not None for c in callers):
                for c in callers:
                    if c.call_sid not in goodbye_at and c.received_audio > heard[c.call_sid]:
                        goodbye_at[c.call_sid] = time.monotonic()
                await asyncio.sleep(0.02)
        assert len(goodbye_at) == len(callers), "every caller heard the goodbye before the end"
        assert all(t - deadline < 1.5 * TIMEOUT_FACTOR for t in goodbye_at.values()), [
            round(t - deadline, 2) for t in goodbye_at.values()
        ]
        assert {c.closed_reason for c in callers} == {"shutdown"}

        assert await asyncio.wait_for(proc.wait(), 90 * TIMEOUT_FACTOR) == 0
        rest = (await proc.stdout.read()).decode()
        assert "draining: 3 calls in progress" in rest and "3 calls end with a goodbye" in rest
        assert "stopped" in rest
        end = time.monotonic() + 20 * TIMEOUT_FACTOR
        alive = [p for p in started if _alive(p)]
        while alive and time.monotonic() < end:
            await asyncio.sleep(0.2)
            alive = [p for p in started if _alive(p)]
        assert not alive, [(p.pid, p.name()) for p in alive]
    finally:
        for c in callers:
            await c.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
