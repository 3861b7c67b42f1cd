"""The call page in real headless Chromium against a real ``callray up``.

Debian's ``chromium`` (``scripts/setup.sh`` installs it) driven by Playwright through
``executable_path``: Playwright's own browser download is never used. Chromium's fake devices
grant the microphone and feed it a WAV tone; ``--allow-loopback-in-peer-connection`` lets it
gather ICE on 127.0.0.1, where the server gathers too (``CALLRAY_WEBRTC_ICE_ADDRESSES``), so
the suite runs in the loopback-only network namespace of ``scripts/test.sh``. Without
Chromium or Playwright the tests skip (tests/e2e/test_call_page.py).

Screenshots and the server's log land in ``tests/e2e/artifacts/`` (``CALLRAY_E2E_ARTIFACTS``
overrides it) for CI to keep.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import wave
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import TIMEOUT_FACTOR, free_port

if TYPE_CHECKING:
    from playwright.async_api import Browser

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("CALLRAY_E2E_ARTIFACTS") or Path(__file__).parent / "artifacts")
READY_LINE = "Ctrl-C stops everything"


@dataclass(frozen=True)
class Deployment:
    base: str
    log: Path
    data_dir: Path
    # Server-side secrets set for the run: no page traffic may ever carry them.
    secrets: tuple[str, ...]

    async def ended(self, call_id: str, within_s: float = 10.0) -> str:
        """The reason of the call's ``call.ended`` event, from the call-event stream."""
        import redis.asyncio as aioredis

        from services.toolbus.call_events import CallEvent
        from services.toolbus.streams import CALL_EVENTS_STREAM

        redis = aioredis.from_url((self.data_dir / "redis.url").read_text().strip())
        try:
            deadline = time.monotonic() + within_s * TIMEOUT_FACTOR
            while True:
                for entry_id, fields in await redis.xrange(CALL_EVENTS_STREAM):
                    event = CallEvent.from_entry(entry_id, fields)
                    if event.call_id == call_id and event.kind == "call.ended":
                        return event.fields["reason"]
                assert time.monotonic() < deadline, f"no call.ended for {call_id}"
                await asyncio.sleep(0.1)
        finally:
            await redis.aclose()

    def log_tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def _write_wav(path: Path, samples: array.array[int], rate: int) -> Path:
    """16-bit mono PCM (Chromium loops the file)."""
    if sys.byteorder != "little":
        samples.byteswap()
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return path


def write_tone(
    path: Path, seconds: float = 3.0, hz: float = 440.0, peak: float = 0.03, rate: int = 48_000
) -> Path:
    """A steady tone. Its RMS, ``peak / sqrt(2)`` of full scale, stays under the local model's
    speech threshold (0.05), so the agent's greeting is not taken as interrupted, and over what
    the page's microphone meter shows."""
    amplitude = peak * 32767
    samples = array.array(
        "h",
        (
            round(amplitude * math.sin(2 * math.pi * hz * n / rate))
            for n in range(int(seconds * rate))
        ),
    )
    return _write_wav(path, samples, rate)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """``callray up`` for the module: one session host with room for one call, so a second
    call is busy; ICE on loopback; the local model, which greets first."""
    tmp = tmp_path_factory.mktemp("callray-up")
    port = free_port()
    stream_secret = "e2e-stream-secret-" + secrets.token_hex(16)
    twilio_token = "e2e-twilio-token-" + secrets.token_hex(16)
    env = {
        **os.environ,
        "CALLRAY_DATA_DIR": str(tmp / "data"),
        "CALLRAY_PORT": str(port),
        "CALLRAY_METRICS_PORT": str(free_port()),
        "CALLRAY_SIP_PORT": "off",  # browsers only here
        "CALLRAY_HOSTS": "1",
        "CALLRAY_HOST_CAPACITY": "1",
        "CALLRAY_CLUSTER_CAPACITY": "1",
        "CALLRAY_EXECUTORS": "1",
        "CALLRAY_DRAIN_TIMEOUT_S": "2",
        "CALLRAY_WEBRTC_ICE_ADDRESSES": "127.0.0.1",
        "CALLRAY_STREAM_SECRET": stream_secret,
        "TWILIO_AUTH_TOKEN": twilio_token,
        "RAY_AUTH_MODE": "disabled",
        "PYTHONUNBUFFERED": "1",
    }
    for name in (
        "REDIS_URL",
        "RAY_ADDRESS",
        "OPENAI_API_KEY",
        "CALLRAY_MODEL_URL",
        "CALLRAY_PUBLIC_URL",
        "CALLRAY_HOST",
        "CALLRAY_WEBRTC_TOKEN_SECRET",
        "CALLRAY_WEBRTC_ADVERTISE_ADDRESS",
        "CALLRAY_WEBRTC_ICE_SERVERS",
    ):
        env.pop(name, None)
    log = tmp / "callray-up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "up", "--no-browser"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, for the kill of last resort
        )
    up = Deployment(f"http://127.0.0.1:{port}", log, tmp / "data", (stream_secret, twilio_token))
    try:
        deadline = time.monotonic() + 120 * TIMEOUT_FACTOR
        while READY_LINE not in log.read_text(errors="replace"):
            if proc.poll() is not None:
                pytest.fail(f"callray up exited ({proc.returncode}):\n{up.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"callray up not ready in time:\n{up.log_tail()}")
            time.sleep(0.1)
        yield up
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60 * TIMEOUT_FACTOR)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, ARTIFACTS / "callray-up.log")


@pytest.fixture(scope="module")
def fake_microphone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tone(tmp_path_factory.mktemp("audio") / "tone-440hz.wav")


def write_barge_in(path: Path, rate: int = 48_000) -> Path:
    """1.5 s of silence, then 1.5 s of a loud 300 Hz tone (RMS ~0.35 of full scale, well over
    the model's speech threshold): a caller talking over the agent's greeting."""
    quiet = int(1.5 * rate)
    samples = array.array(
        "h",
        (
            0 if n < quiet else round(0.5 * 32767 * math.sin(2 * math.pi * 300 * n / rate))
            for n in range(3 * rate)
        ),
    )
    return _write_wav(path, samples, rate)


@pytest.fixture
async def barge_in_browser(tmp_path: Path) -> AsyncIterator[Browser]:
    """Chromium whose fake microphone talks over the agent (:func:`write_barge_in`)."""
    async with _chromium(write_barge_in(tmp_path / "barge-in.wav")) as chromium:
        yield chromium


@pytest.fixture
async def browser(fake_microphone: Path) -> AsyncIterator[Browser]:
    """Headless Chromium with a granted fake microphone playing the tone, able to use loopback
    for WebRTC."""
    async with _chromium(fake_microphone) as chromium:
        yield chromium


@contextlib.asynccontextmanager
async def _chromium(fake_microphone: Path) -> AsyncIterator[Browser]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={fake_microphone}",
                "--allow-loopback-in-peer-connection",
            ],
        )
        try:
            yield chromium
        finally:
            await chromium.close()
