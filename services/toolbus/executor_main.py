"""Run one tool executor as its own process (outside Ray: tests, or a plain process pool).

    python -m services.toolbus.executor_main --redis-url redis://127.0.0.1:6379/0 \\
        --consumer exec-1 --tools myapp.tools:TOOLS

``--tools`` names a module attribute holding the tools: a mapping of name to ``FunctionTool``, or
a sequence of them. The process prints one JSON line ``{"ready": <consumer>}`` once its consumer
group exists, serves until SIGTERM or SIGINT, finishes the calls in hand, and prints
``{"stopped": <consumer>, ...}`` with its :class:`ExecutorStats`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Mapping, Sequence

from services.agents.registry import load_object
from services.errors import ConfigError
from services.observability import logs
from services.realtime.tools import FunctionTool
from services.redis_client import connect as connect_redis
from services.toolbus.executor import ToolExecutor
from services.toolbus.streams import EXECUTOR_GROUP


def load_tools(spec: str) -> dict[str, FunctionTool]:
    """The tools at ``module:attribute``."""
    found = load_object(spec, setting="--tools")
    tools = list(found.values()) if isinstance(found, Mapping) else found
    if not isinstance(tools, Sequence) or not all(isinstance(t, FunctionTool) for t in tools):
        raise ConfigError(f"{spec!r} is not a mapping or sequence of FunctionTool")
    return {tool.name: tool for tool in tools}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m services.toolbus.executor_main")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--consumer", required=True)
    parser.add_argument("--tools", required=True, help="module:attribute holding the tools")
    parser.add_argument("--group", default=EXECUTOR_GROUP)
    parser.add_argument("--claim-idle-ms", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--forget-consumer-ms", type=int, default=300_000)
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace, tools: dict[str, FunctionTool]) -> ToolExecutor:
    client = connect_redis(args.redis_url)
    try:
        executor = ToolExecutor(
            client,
            tools,
            consumer=args.consumer,
            group=args.group,
            claim_idle_ms=args.claim_idle_ms,
            concurrency=args.concurrency,
            forget_consumer_ms=args.forget_consumer_ms,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await executor.ensure_group()
        print(json.dumps({"ready": args.consumer}), flush=True)
        await executor.run(stop)
        return executor
    finally:
        await client.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    logs.configure(args.log_level, os.environ.get(logs.FORMAT_ENV, "text").strip().lower())
    try:
        tools = load_tools(args.tools)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    executor = asyncio.run(_serve(args, tools))
    print(json.dumps({"stopped": args.consumer, **dataclasses.asdict(executor.stats)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
