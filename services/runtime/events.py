"""Where a host's call events go: a non-blocking sink in front of the Redis stream.

Session code runs inside event handlers and must never wait on Redis, so events are queued and
one writer task per host sends them in order (pipelined when several are waiting).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

from services.errors import UserError
from services.observability import metrics

logger = logging.getLogger(__name__)

# Every kind of call event (their fields: services/toolbus/call_events.py); a sink refuses others.
EVENT_KINDS: Final[frozenset[str]] = frozenset(
    {
        "call.started",
        "call.answered",
        "call.ended",
        "call.moved",
        "model.disconnected",
        "model.reconnected",
        "transcript",
        "tool.called",
        "tool.returned",
        "interrupted",
        "dtmf",
    }
)


class EventSink(Protocol):
    def emit(self, kind: str, call_id: str, **fields: Any) -> None: ...


class ListEventSink:
    """Keeps events in memory (tests, and hosts run without Redis)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def emit(self, kind: str, call_id: str, **fields: Any) -> None:
        if kind not in EVENT_KINDS:  # as the Redis log does, so tests catch a new kind
            raise UserError(f"unknown call event kind {kind!r}")
        self.events.append((kind, call_id, fields))

    def kinds(self, call_id: str | None = None) -> list[str]:
        return [k for k, c, _ in self.events if call_id is None or c == call_id]


class EventLogLike(Protocol):
    async def emit(self, kind: str, call_id: str, **fields: Any) -> Any: ...


class BufferedEventSink:
    """Queues events and writes them to an event log from one task, in order.

    While the log is unreachable (Redis restarting) events wait in the queue, up to
    ``max_queued``; past it they are dropped and counted (``callray_call_events_dropped_total``).
    An outage is logged when it starts and when it ends, not at every retry.
    """

    def __init__(
        self,
        log: EventLogLike,
        *,
        max_queued: int = 100_000,
        retry_s: float = 0.5,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._log = log
        self._queue: deque[tuple[str, str, dict[str, Any]]] = deque()
        self._max = max_queued
        self._retry_s = retry_s
        self._sleep = sleep
        self._wakeup = asyncio.Event()
        self._emptied = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._write_loop(), name="call-events-writer")

    def emit(self, kind: str, call_id: str, **fields: Any) -> None:
        if len(self._queue) >= self._max:
            # Redis is down or slow: keep the calls running, count what could not be kept.
            self.dropped += 1
            metrics.call_events_dropped()
            return
        self._queue.append((kind, call_id, fields))
        self._wakeup.set()

    async def _write_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            failures = 0
            while self._queue:
                kind, call_id, fields = self._queue[0]
                try:
                    await self._log.emit(kind, call_id, **fields)
                except UserError as exc:
                    # The event itself is wrong (a kind the log does not know): no retry can
                    # write it, and holding it would hold every event behind it.
                    logger.error("dropped a call event that cannot be written: %s", exc)
                    self._queue.popleft()
                    self.dropped += 1
                    metrics.call_events_dropped()
                    continue
                except Exception as exc:
                    failures += 1
                    if failures == 1:
                        logger.warning("call events cannot be written (%s); holding them", exc)
                    await self._sleep(self._retry_s)
                    continue
                if failures:
                    logger.warning(
                        "call events written again after %d failed tries; %d held, %d dropped",
                        failures,
                        len(self._queue),
                        self.dropped,
                    )
                    failures = 0
                self._queue.popleft()
            self._emptied.set()

    async def close(self, grace_s: float = 2.0) -> None:
        if self._task is None:
            return
        try:
            async with asyncio.timeout(grace_s):
                while self._queue:
                    self._emptied.clear()
                    await self._emptied.wait()
        except TimeoutError:
            logger.warning("%d call events not written at shutdown", len(self._queue))
        self._task.cancel()
