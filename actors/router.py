"""``RouterActor``: the named, detached ``callray-router`` Ray actor over :class:`RouterCore`."""

from __future__ import annotations

import logging
from typing import Any

from actors import _ray
from services.media.vocabulary import CallSpec
from services.redis_client import connect as connect_redis
from services.runtime.events import BufferedEventSink
from services.runtime.placement import Rejected
from services.runtime.router import Opened, RouterCore
from services.toolbus.call_events import CallEventLog

logger = logging.getLogger(__name__)


class RouterActor:
    def __init__(
        self,
        redis_url: str,
        *,
        cluster_capacity: int,
        health_interval_s: float = 1.0,
        events_maxlen: int = 100_000,
    ) -> None:
        self._redis = connect_redis(redis_url)
        self._events = BufferedEventSink(CallEventLog(self._redis, maxlen=events_maxlen))
        self.core = RouterCore(
            cluster_capacity=cluster_capacity,
            events=self._events,
            health_interval_s=health_interval_s,
        )
        self._started = False

    async def start(self) -> None:
        """Start the health checks (Ray actors have no async constructor)."""
        if not self._started:
            self._started = True
            self._events.start()
            self.core.start()

    def ping(self) -> int:
        return _ray.own_pid()

    async def register_host(self, host_id: str, handle: Any, capacity: int, pid: int) -> None:
        self.core.register_host(host_id, _ray.HostClient(handle), handle, capacity, pid)

    async def open_call(self, spec: CallSpec) -> Opened | Rejected:
        return await self.core.open_call(spec)

    async def move_call(self, spec: CallSpec, from_host: str) -> Opened | Rejected:
        return await self.core.move_call(spec, from_host)

    def release(self, call_id: str, reason: str = "", host_id: str | None = None) -> None:
        self.core.release(call_id, reason, host_id)

    def host_of(self, call_id: str) -> str | None:
        """The session host a live call is on (None: not placed)."""
        return self.core.placement.host_of(call_id)

    def drain(self, host_id: str) -> bool:
        return self.core.drain(host_id)

    async def evacuate(self, host_id: str) -> str:
        return await self.core.evacuate(host_id)

    def host_handles(self) -> dict[str, Any]:
        return self.core.host_handles()

    def status(self) -> dict[str, Any]:
        return self.core.status()

    async def stop(self) -> None:
        await self.core.close()
        await self._events.close()
        await self._redis.aclose()
