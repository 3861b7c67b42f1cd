"""A call's conversation record in Redis: saved at each turn, replayed by the session that
resumes the call on another host, fenced so the host it moved off cannot overwrite it (and ends
its copy). Two CallHosts, real Redis, the local model on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from services.agents.registry import load_agents
from services.config import LocalModelSettings
from services.embedded.redis_server import EmbeddedRedis
from services.localmodel.server import LocalModelServer
from services.media.vocabulary import CallEnded, CallSpec
from services.realtime.tools import InProcessToolRunner
from services.runtime.call_session import RESUME_INSTRUCTIONS
from services.runtime.events import ListEventSink
from services.runtime.host import CallHost
from services.toolbus.conversations import EPOCH_PREFIX, RECORD_PREFIX, RedisConversations
from tests.conftest import TIMEOUT_FACTOR
from tests.integration.test_call_host import MODEL, SILENCE, collect, speech
from tests.wire import WireValidator

pytestmark = pytest.mark.integration


@pytest.fixture
async def model(wire: WireValidator) -> AsyncIterator[LocalModelServer]:
    async with LocalModelServer(LocalModelSettings(port=0, speed=20.0), observer=wire) as server:
        yield server


def _host(name: str, url: str, redis: aioredis.Redis, events: ListEventSink) -> CallHost:
    return CallHost(
        name,
        model=MODEL,
        model_url=url,
        agents=load_agents(),
        tool_runner=InProcessToolRunner(),
        events=events,
        conversations=RedisConversations(redis),
    )


async def _until(predicate: Any, what: str) -> None:
    async with asyncio.timeout(10 * TIMEOUT_FACTOR):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_a_moved_call_resumes_its_conversation_and_the_old_copy_is_fenced_off(
    model: LocalModelServer, wire: WireValidator, redis_client: aioredis.Redis
) -> None:
    events_a, events_b = ListEventSink(), ListEventSink()
    a = _host("a", model.url, redis_client, events_a)
    b = _host("b", model.url, redis_client, events_b)
    await a.open_call(CallSpec("c1"))
    await _until(lambda: "transcript" in events_a.kinds("c1"), "the greeting")
    a.feed([("c1", speech(600)), ("c1", SILENCE)])
    await _until(
        lambda: (
            events_a.kinds("c1").count("transcript") >= 3
            and "tool.returned" in events_a.kinds("c1")
        ),
        "the tool turn and its answer",
    )
    await _until(lambda: not a.calls["c1"].transport.response_active, "the answer's end")

    async def record() -> list[dict[str, Any]]:
        raw = await redis_client.get(RECORD_PREFIX + "c1")
        return json.loads(raw) if raw else []

    async with asyncio.timeout(5 * TIMEOUT_FACTOR):
        while len(await record()) < 5:
            await asyncio.sleep(0.02)
    saved = await record()
    assert [(i["type"], i.get("role")) for i in saved] == [
        ("message", "assistant"),
        ("message", "user"),
        ("function_call", None),
        ("function_call_output", None),
        ("message", "assistant"),
    ]
    assert saved[2]["name"] == "lookup_order"
    assert 0 < await redis_client.pttl(RECORD_PREFIX + "c1") <= 2 * 3600 * 1000

    # Host a is taken for lost (it is only slow); the ingress moves the call to b.
    seen = len(wire.client_log)
    await b.open_call(CallSpec("c1", greet=False, resumed=True))
    assert await redis_client.get(EPOCH_PREFIX + "c1") == b"2"
    after = wire.client_log[seen:]
    created = [e["item"] for e in after if e["type"] == "conversation.item.create"]
    assert created == saved  # the whole conversation, in order, on b's new model session
    creates = [e for e in after if e["type"] == "response.create"]
    assert creates and creates[0]["response"]["instructions"] == RESUME_INSTRUCTIONS

    # a's copy of the call takes another turn; its save is refused and it ends its copy.
    a.feed([("c1", speech(600)), ("c1", SILENCE)])
    ended = await collect(a, lambda got: any(isinstance(c, CallEnded) for c in got), "a's end")
    assert CallEnded("c1", "moved") in ended
    assert "c1" not in a.calls and "c1" in b.calls
    assert [i["id"] for i in await record()][: len(saved)] == [i["id"] for i in saved]
    await b.close_all("test_over")


async def test_saves_of_an_older_epoch_are_refused(any_redis: EmbeddedRedis) -> None:
    client = aioredis.Redis.from_url(any_redis.url)
    store = RedisConversations(client, ttl_s=60)
    call = f"fence-{id(store)}"
    try:
        first = await store.claim(call)
        assert await store.save(call, first, [{"type": "message", "id": "m1"}])
        second = await store.claim(call)
        assert second == first + 1
        assert not await store.save(call, first, [{"type": "message", "id": "stale"}])
        assert await store.load(call) == [{"type": "message", "id": "m1"}]
        assert await store.save(call, second, [{"type": "message", "id": "m2"}])
        assert await store.load(call) == [{"type": "message", "id": "m2"}]
        assert await store.load("never-saved") == []
    finally:
        await client.aclose()
