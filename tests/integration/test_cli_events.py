"""`callray events tail` as a user runs it, against a real Redis."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
import redis.asyncio as aioredis

from services.embedded.redis_server import EmbeddedRedis
from services.toolbus.call_events import CallEventLog
from tests.conftest import TIMEOUT_FACTOR

pytestmark = pytest.mark.integration


async def test_events_tail_prints_the_stream(
    redis_server: EmbeddedRedis, redis_client: aioredis.Redis
) -> None:
    log = CallEventLog(redis_client)
    await log.call_ended("call-tail-1", reason="caller_hangup", duration_s=12.5)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "events",
        "tail",
        "--start",
        "0",
        env={**os.environ, "REDIS_URL": redis_server.url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20 * TIMEOUT_FACTOR):
            first = (await proc.stdout.readline()).decode()
            await log.transcript("call-tail-1", role="assistant", text="Goodbye!")
            second = (await proc.stdout.readline()).decode()
        assert "call-tail-1 call.ended" in first and "reason=caller_hangup" in first
        assert "transcript" in second and '"Goodbye!"' in second
    finally:
        proc.terminate()
        await proc.wait()
