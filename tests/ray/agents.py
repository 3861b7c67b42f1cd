"""Agents for runtime tests: importable on every Ray worker (PYTHONPATH is the repo root)."""

from __future__ import annotations

import asyncio

from services.agents.demo import DEMO_AGENT, hang_up, lookup_order
from services.realtime.agent import RealtimeAgent
from services.realtime.tools import function_tool


@function_tool(timeout=0.3)
async def slow_lookup(order_id: str) -> str:
    """A lookup that always takes longer than its deadline."""
    await asyncio.sleep(2.0)
    return f"{order_id} found late"


SLOW_AGENT = RealtimeAgent(name="Slow", instructions="Slow tools.", tools=[slow_lookup, hang_up])

AGENTS = {
    "demo": DEMO_AGENT,
    "slow": SLOW_AGENT,
    "lookup": RealtimeAgent(name="L", tools=[lookup_order]),
}

# The exactly-once side-effect tool of the tool-bus tests (reads CALLRAY_TEST_REDIS_URL).
from tests.integration.toolbus_tools import record  # noqa: E402

AGENTS["record"] = RealtimeAgent(name="Recorder", tools=[record])
