"""Tools the tool-bus tests run, in the test process and in executor processes
(``--tools tests.integration.toolbus_tools:TOOLS``).

Tools that touch Redis read its URL from ``CALLRAY_TEST_REDIS_URL``, which the tests set.
"""

from __future__ import annotations

import asyncio
import json
import os

import redis.asyncio as aioredis

from services.errors import ToolError
from services.realtime.tools import FunctionTool, ToolContext, function_tool
from services.redis_client import connect as connect_redis

REDIS_URL_ENV = "CALLRAY_TEST_REDIS_URL"
RUNS_KEY = "test:runs"
SIDE_EFFECTS_KEY = "test:side-effects"

_client: aioredis.Redis | None = None

_ONCE = """
if redis.call('SET', KEYS[1], 1, 'NX') then
  redis.call('INCR', KEYS[2])
end
"""


def _shared_client() -> aioredis.Redis:
    # One client for the life of an executor process (a single event loop).
    global _client
    if _client is None:
        _client = connect_redis(os.environ[REDIS_URL_ENV])
    return _client


@function_tool
def double(n: int) -> int:
    """Double a number."""
    return n * 2


@function_tool
def whoami(ctx: ToolContext) -> str:
    """Say what the executor told the tool about the call."""
    return json.dumps(
        {
            "idempotency_key": ctx.idempotency_key,
            "call_id": ctx.call.call_id,
            "agent": ctx.agent_name,
            "session": ctx.context.call_id,
            "host": ctx.context.host_id,
        }
    )


@function_tool
def refuse(order: str) -> str:
    """Refuse with a reason the model should hear."""
    raise ToolError(f"Order {order} does not exist.")


@function_tool
def crash() -> str:
    """Fail with an internal error the model must not see."""
    raise RuntimeError("secret internal detail: db password is hunter2")


@function_tool
async def wait_forever() -> str:
    """Never finish on its own."""
    await asyncio.Event().wait()
    return "unreachable"


@function_tool
async def hold(ctx: ToolContext, key: str) -> str:
    """Count the run, then wait until the key ``release:<key>`` exists."""
    async with connect_redis(os.environ[REDIS_URL_ENV]) as r:
        await r.incr(f"runs:{key}")
        while not await r.exists(f"release:{key}"):
            await asyncio.sleep(0.02)
    return f"released {key}"


@function_tool
async def record(ctx: ToolContext, n: int) -> int:
    """A tool with a side effect, made exactly-once with the idempotency key."""
    r = _shared_client()
    await r.incr(RUNS_KEY)
    # The marker and the effect in one step: an executor killed between two separate commands
    # would leave the marker set and the effect undone, and the rerun would then skip it.
    await r.eval(_ONCE, 2, f"test:side:{ctx.idempotency_key}", SIDE_EFFECTS_KEY)
    # Long enough that an executor killed mid-run holds pending entries.
    await asyncio.sleep(0.05)
    return n * 2


TOOLS: dict[str, FunctionTool] = {
    tool.name: tool for tool in (double, whoami, refuse, crash, wait_forever, hold, record)
}
