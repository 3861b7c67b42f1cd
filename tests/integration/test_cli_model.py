"""`callray model` as a user runs it: a real process, the official client, Ctrl-C."""

from __future__ import annotations

import asyncio
import re
import signal
import sys

import pytest
from openai import AsyncOpenAI

from tests.conftest import TIMEOUT_FACTOR

pytestmark = pytest.mark.integration


async def start_model(*flags: str) -> asyncio.subprocess.Process:
    """``callray model --port 0 FLAGS`` in a child process, its banner on stdout."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "model",
        "--port",
        "0",
        *flags,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_model_command_serves_the_official_client_and_stops_on_ctrl_c() -> None:
    proc = await start_model("--mode", "echo")
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20 * TIMEOUT_FACTOR):
            line = (await proc.stdout.readline()).decode()
        match = re.search(r"ws://127\.0\.0\.1:(\d+)/v1/realtime", line)
        assert match, line
        client = AsyncOpenAI(api_key="test", base_url=f"http://127.0.0.1:{match.group(1)}/v1")
        async with client.realtime.connect(model="gpt-realtime") as conn:
            event = await conn.recv()
            assert event.type == "session.created"
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(10 * TIMEOUT_FACTOR):
            code = await proc.wait()
        assert code == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_model_command_answers_webrtc_calls_on_the_ice_address_given() -> None:
    """``--ice-address 127.0.0.1``: its calls gather a loopback candidate (aioice alone never
    does), so a peer on this machine's loopback can reach it."""
    from pathlib import Path

    import aiohttp

    offer = (Path(__file__).parents[1] / "unit" / "data" / "chromium_offer.sdp").read_text()
    proc = await start_model("--ice-address", "127.0.0.1")
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20 * TIMEOUT_FACTOR):
            banner = (await proc.stdout.readline()).decode()
            banner += (await proc.stdout.readline()).decode()
            banner += (await proc.stdout.readline()).decode()
        match = re.search(r"WebRTC calls: POST (http://127\.0\.0\.1:\d+/v1/realtime/calls)", banner)
        assert match, banner
        headers = {"Content-Type": "application/sdp"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(match.group(1), data=offer, headers=headers) as reply,
        ):
            answer = await reply.text()
            assert reply.status == 201, answer
        candidates = [ln for ln in answer.splitlines() if ln.startswith("a=candidate:")]
        assert candidates and all(" 127.0.0.1 " in ln for ln in candidates), candidates
    finally:
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(10 * TIMEOUT_FACTOR):
            await proc.wait()
