"""``ToolExecutorActor``: one member of the tool-executor pool, a Ray actor running a
:class:`ToolExecutor` loop over ``callray:tool-calls`` with the agents' tools."""

from __future__ import annotations

import asyncio
import logging

from actors import _ray
from services.agents.registry import load_agents
from services.observability import logs
from services.redis_client import connect as connect_redis
from services.toolbus.executor import ToolExecutor

logger = logging.getLogger(__name__)


class ToolExecutorActor:
    def __init__(
        self, consumer: str, *, redis_url: str, agent_spec: str | None, concurrency: int = 64
    ) -> None:
        logs.configure_from_env()  # this actor's process: its entry point
        self._redis = connect_redis(redis_url)
        self._executor = ToolExecutor(
            self._redis,
            load_agents(agent_spec).tools(),
            consumer=consumer,
            concurrency=concurrency,
        )
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        if self._task is None:
            await self._executor.ensure_group()
            self._task = asyncio.create_task(self._executor.run(self._stop), name="tool-executor")
        return _ray.own_pid()

    def ping(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait([self._task], timeout=5.0)
        await self._redis.aclose()
