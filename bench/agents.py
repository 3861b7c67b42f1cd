"""Agents for the runtime benchmarks: a no-op tool (imported on every Ray worker)."""

from __future__ import annotations

from services.realtime.agent import RealtimeAgent
from services.realtime.tools import function_tool


@function_tool
async def noop(n: int = 0) -> str:
    """Do nothing; measures the tool path itself."""
    return "ok"


AGENTS = {"bench": RealtimeAgent(name="Bench", instructions="Benchmark.", tools=[noop])}
