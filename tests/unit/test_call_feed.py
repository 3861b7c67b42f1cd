"""The page feed: one tail fanned out by call id, only the kinds a page is shown, bounded
queues that lose their oldest event when a page falls behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from services.gateway.call_feed import QUEUE_LIMIT, CallFeed
from services.toolbus.call_events import CallEvent


def ev(call_id: str, kind: str, **fields: str) -> CallEvent:
    return CallEvent("1-0", kind, call_id, 0.0, fields)


class Tail:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[CallEvent] = asyncio.Queue()
        self.started = 0

    async def __call__(self) -> AsyncIterator[Any]:
        self.started += 1
        while True:
            yield await self.queue.get()


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_each_page_gets_its_own_calls_page_events_only() -> None:
    tail = Tail()
    feed = CallFeed(tail)
    async with feed.subscribe("a") as qa, feed.subscribe("b") as qb:
        tail.queue.put_nowait(ev("a", "transcript", role="user", text="hello"))
        tail.queue.put_nowait(ev("a", "tool.called", tool="lookup"))  # not for pages
        tail.queue.put_nowait(ev("b", "call.ended", reason="caller_hangup"))
        tail.queue.put_nowait(ev("c", "transcript", role="user", text="not subscribed"))
        await settle()
        assert qa.get_nowait() == {"kind": "transcript", "role": "user", "text": "hello"}
        assert qa.empty()
        assert qb.get_nowait() == {"kind": "call.ended", "reason": "caller_hangup"}
    assert tail.started == 1  # one tail for every page
    await feed.close()


async def test_a_page_that_falls_behind_loses_its_oldest_events() -> None:
    tail = Tail()
    feed = CallFeed(tail)
    async with feed.subscribe("a") as queue:
        for n in range(QUEUE_LIMIT + 5):
            tail.queue.put_nowait(ev("a", "transcript", role="assistant", text=str(n)))
        await settle()
        assert queue.qsize() == QUEUE_LIMIT
        assert queue.get_nowait()["text"] == "5"
    await feed.close()
