"""`callray events tail` as a user runs it, against a real Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from services.embedded.redis_server import EmbeddedRedis
from services.toolbus.call_events import CallEventLog
from tests.conftest import TIMEOUT_FACTOR

pytestmark = pytest.mark.integration


async def _tail(url: str, *, stderr: int) -> asyncio.subprocess.Process:
    """`callray events tail --start 0` against ``url``, as a user runs it."""
    return await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "services.cli", "events", "tail", "--start", "0"),
        env={**os.environ, "REDIS_URL": url},
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
    )


async def test_events_tail_prints_the_stream(
    redis_server: EmbeddedRedis, redis_client: aioredis.Redis
) -> None:
    log = CallEventLog(redis_client)
    await log.call_ended("call-tail-1", reason="caller_hangup", duration_s=12.5)
    proc = await _tail(redis_server.url, stderr=asyncio.subprocess.DEVNULL)
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


async def test_events_tail_goes_on_across_a_redis_restart(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path / "redis")
    url = first.start()
    port = first.port
    assert first.pid is not None and port is not None
    writer = aioredis.Redis.from_url(url)
    log = CallEventLog(writer)
    await log.call_ended("before-restart", reason="caller_hangup", duration_s=1.0)
    await asyncio.sleep(1.2)  # appendfsync everysec: the entry is in the AOF
    proc = await _tail(url, stderr=asyncio.subprocess.PIPE)
    second: EmbeddedRedis | None = None
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30 * TIMEOUT_FACTOR):
            assert "before-restart" in (await proc.stdout.readline()).decode()
            os.kill(first.pid, signal.SIGKILL)
            await asyncio.sleep(1.0)  # the tail's reads fail meanwhile
            first.stop()
            second = EmbeddedRedis(tmp_path / "redis")
            assert second.start(port=port) == url  # same directory, port and password
            await writer.aclose()
            writer = aioredis.Redis.from_url(url)
            await CallEventLog(writer).call_ended(
                "after-restart", reason="agent_hangup", duration_s=2.0
            )
            line = (await proc.stdout.readline()).decode()
        assert "after-restart" in line, line  # not the old entry again, nothing skipped
        assert proc.returncode is None
    finally:
        proc.terminate()
        _, err = await proc.communicate()
        await writer.aclose()
        if second is not None:
            second.stop()
        first.stop()
    assert b"Traceback" not in err
    assert b"retrying" in err and urlsplit(url).password.encode() not in err  # type: ignore[union-attr]
