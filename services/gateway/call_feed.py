"""Call events for the browsers on this ingress: one tail of the call-events stream, fanned out.

The call page shows its call's live transcript. Each page subscribing to the Redis stream on
its own would make every event cost one read per open page; instead the ingress follows the
stream once (started by the first subscriber) and hands each event to the subscribers of its
call. A subscriber's queue is bounded: a page that does not keep up loses its oldest events,
never the ingress's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

logger = logging.getLogger(__name__)

# Kinds a page is shown (the rest stay with the call center: tool calls, digits).
PAGE_KINDS = frozenset({"transcript", "interrupted", "call.ended"})
QUEUE_LIMIT = 256


class CallFeed:
    def __init__(self, tail: Callable[[], AsyncIterator[Any]]) -> None:
        self._tail = tail
        self._subscribers: dict[str, set[asyncio.Queue[dict[str, str]]]] = {}
        self._task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def subscribe(self, call_id: str) -> AsyncIterator[asyncio.Queue[dict[str, str]]]:
        queue: asyncio.Queue[dict[str, str]] = asyncio.Queue(QUEUE_LIMIT)
        self._subscribers.setdefault(call_id, set()).add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._follow(), name="call-feed")
        try:
            yield queue
        finally:
            queues = self._subscribers.get(call_id)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._subscribers[call_id]

    async def _follow(self) -> None:
        try:
            async for event in self._tail():
                queues = self._subscribers.get(event.call_id)
                if not queues or event.kind not in PAGE_KINDS:
                    continue
                message = {"kind": event.kind, **event.fields}
                for queue in queues:
                    if queue.full():
                        queue.get_nowait()  # the page is behind: its oldest event goes
                    queue.put_nowait(message)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("the call-event feed for pages stopped")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
