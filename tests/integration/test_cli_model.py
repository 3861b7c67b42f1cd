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


async def test_model_command_serves_the_official_client_and_stops_on_ctrl_c() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "model",
        "--port",
        "0",
        "--mode",
        "echo",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
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
