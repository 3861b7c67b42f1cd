"""1,000 tool calls over three executor processes, one SIGKILLed mid-run: nothing is lost,
nothing times out, and every side effect happens exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from services.embedded.redis_server import EmbeddedRedis
from services.realtime.tools import ToolCall, ToolContext, ToolResult
from services.toolbus import EXECUTOR_GROUP, TOOL_CALLS_STREAM, RedisToolRunner
from services.toolbus.streams import DONE_KEY_PREFIX
from tests.conftest import TIMEOUT_FACTOR
from tests.integration.toolbus_tools import REDIS_URL_ENV, RUNS_KEY, SIDE_EFFECTS_KEY, TOOLS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CALLS = 1_000
KILL_AFTER = 300
WAIT = 60 * TIMEOUT_FACTOR


class ExecutorProcess:
    """``python -m services.toolbus.executor_main`` with the test tools, its log in a file."""

    def __init__(self, consumer: str, log_dir: Path) -> None:
        self.consumer = consumer
        self.log_path = log_dir / f"{consumer}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, redis_url: str) -> None:
        with self.log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.toolbus.executor_main",
                *("--redis-url", redis_url, "--consumer", self.consumer),
                *("--tools", "tests.integration.toolbus_tools:TOOLS"),
                *("--claim-idle-ms", "500", "--concurrency", "32"),
                *("--forget-consumer-ms", "1500"),
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                cwd=REPO,
                env={**os.environ, REDIS_URL_ENV: redis_url},
            )
        assert await self.line() == {"ready": self.consumer}, self.log_path.read_text()

    async def line(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        async with asyncio.timeout(WAIT):
            return dict(json.loads(await self.proc.stdout.readline()))

    async def stop(self) -> dict[str, Any]:
        """SIGTERM, then the stats it prints as it exits."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        stats = await self.line()
        async with asyncio.timeout(WAIT):
            assert await self.proc.wait() == 0
        return stats

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def pending_of(redis: aioredis.Redis, consumer: str) -> int:
    entries = await redis.xpending_range(
        TOOL_CALLS_STREAM, EXECUTOR_GROUP, "-", "+", CALLS, consumername=consumer
    )
    return len(entries)


async def until(check: Any, what: str) -> None:
    try:
        async with asyncio.timeout(WAIT):
            while not await check():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {WAIT:g}s: {what}") from None


async def test_a_thousand_calls_survive_an_executor_killed_mid_run(
    redis_server: EmbeddedRedis, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    executors = [ExecutorProcess(f"exec-{i}", tmp_path) for i in range(3)]
    victim, survivors = executors[0], executors[1:]
    try:
        for executor in executors:
            await executor.start(redis_server.url)
        runner = RedisToolRunner(redis_client, host_id="crash-host", default_timeout=WAIT)
        await runner.start()
        completed = 0
        gate = asyncio.Semaphore(150)  # more calls in flight than the executors have slots

        async def one(i: int) -> ToolResult:
            nonlocal completed
            ctx = ToolContext(ToolCall(f"call_{i:04d}", "record", json.dumps({"n": i})), "Agent")
            async with gate:
                result = await runner.run(TOOLS["record"], ctx)
            completed += 1
            return result

        calls = [asyncio.create_task(one(i)) for i in range(CALLS)]

        async def victim_is_busy() -> bool:
            return completed >= KILL_AFTER and await pending_of(redis_client, "exec-0") > 0

        await until(victim_is_busy, f"{KILL_AFTER} calls done and the victim holding entries")
        await victim.kill()
        # Dead now: what it held stays pending until a survivor reclaims it.
        orphaned = await pending_of(redis_client, "exec-0")
        async with asyncio.timeout(WAIT):
            results = await asyncio.gather(*calls)
        await runner.stop()

        assert orphaned > 0
        assert [(r.output, r.outcome) for r in results] == [
            (str(2 * i), "ok") for i in range(CALLS)
        ]
        assert int(await redis_client.get(SIDE_EFFECTS_KEY)) == CALLS
        runs = int(await redis_client.get(RUNS_KEY))
        assert runs >= CALLS  # more when the victim had started some of the orphaned calls
        done_keys = [key async for key in redis_client.scan_iter(f"{DONE_KEY_PREFIX}*", count=500)]
        assert len(done_keys) == CALLS

        async def victim_forgotten() -> bool:
            consumers = await redis_client.xinfo_consumers(TOOL_CALLS_STREAM, EXECUTOR_GROUP)
            return b"exec-0" not in [c["name"] for c in consumers]

        await until(victim_forgotten, "the dead executor removed from the group")
        stats = [await survivor.stop() for survivor in survivors]
        assert sum(s["reclaimed"] for s in stats) >= orphaned
        assert sum(s["consumers_removed"] for s in stats) >= 1
        assert (await redis_client.xpending(TOOL_CALLS_STREAM, EXECUTOR_GROUP))["pending"] == 0
        print(f"runs={runs} orphaned={orphaned} stats={stats}")
    finally:
        for executor in executors:
            await executor.kill()
