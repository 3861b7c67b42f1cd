"""Agents for the runtime benchmarks (imported on every Ray worker).

* ``noop``: does nothing; measures the tool path itself (``bench.runtime``).
* ``count_run``: counts its own runs per tool call id in Redis, so ``bench.tool_storm`` can tell
  calls that ran twice (an executor killed after the side effect, before completing) from calls
  that never ran. It deliberately does *not* use the idempotency key to run once: it measures how
  often the side effect of a plain, non-idempotent tool repeats.
"""

from __future__ import annotations

import os
from typing import Final

import redis.asyncio as aioredis

from services.realtime.agent import RealtimeAgent
from services.realtime.tools import ToolContext, function_tool
from services.redis_client import connect

# The storm benchmark passes its Redis to the executors' processes through Ray's env_vars.
REDIS_URL_ENV: Final = "CALLRAY_BENCH_REDIS_URL"
RUNS_KEY: Final = "callray:bench:runs"

_redis: aioredis.Redis | None = None


@function_tool
async def noop(n: int = 0) -> str:
    """Do nothing; measures the tool path itself."""
    return "ok"


@function_tool
async def count_run(ctx: ToolContext, n: int = 0) -> str:
    """Count one run of this tool call (by its call id) in the benchmark's Redis."""
    global _redis
    if _redis is None:
        _redis = connect(os.environ[REDIS_URL_ENV])
    await _redis.hincrby(RUNS_KEY, ctx.idempotency_key, 1)
    return "ok"


AGENTS = {"bench": RealtimeAgent(name="Bench", instructions="Benchmark.", tools=[noop, count_run])}
