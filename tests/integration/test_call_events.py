"""The call-events stream against a real Redis: emit, tail, bound, consumer groups."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from services.errors import UserError
from services.toolbus import CALL_EVENTS_STREAM, CallEvent, CallEventLog, tail_events
from tests.conftest import TIMEOUT_FACTOR

pytestmark = pytest.mark.integration

WAIT = 10 * TIMEOUT_FACTOR


@pytest.fixture
def log(redis_client: aioredis.Redis) -> CallEventLog:
    return CallEventLog(redis_client, clock=lambda: 1_760_000_000.25)


async def collect(events: AsyncIterator[CallEvent]) -> list[CallEvent]:
    async with asyncio.timeout(WAIT):
        return [event async for event in events]


async def test_emit_writes_the_envelope_and_fields(
    log: CallEventLog, redis_client: aioredis.Redis
) -> None:
    entry_id = await log.call_ended("cr-1", reason="caller_hung_up", duration_s=12.5)
    entries = await redis_client.xrange(CALL_EVENTS_STREAM)
    assert [e for e, _ in entries] == [entry_id.encode()]
    assert entries[0][1] == {
        b"v": b"1",
        b"kind": b"call.ended",
        b"call_id": b"cr-1",
        b"ts": b"1760000000.25",
        b"reason": b"caller_hung_up",
        b"duration_s": b"12.5",
    }


async def test_every_typed_helper_writes_its_kind(
    log: CallEventLog, redis_client: aioredis.Redis
) -> None:
    await log.call_started("cr-1", transport="twilio", agent="Support")
    await log.call_answered("cr-1")
    await log.transcript("cr-1", "user", "I'd like to check my order")
    await log.tool_called("cr-1", "lookup_order", "call_9")
    await log.tool_returned("cr-1", "lookup_order", "call_9", "ok")
    await log.interrupted("cr-1")
    await log.dtmf("cr-1", "5")
    await log.call_ended("cr-1", "completed", 3)
    events = await collect(tail_events(redis_client, start="0", count=8))
    assert [(e.kind, e.fields) for e in events] == [
        ("call.started", {"transport": "twilio", "agent": "Support"}),
        ("call.answered", {}),
        ("transcript", {"role": "user", "text": "I'd like to check my order"}),
        ("tool.called", {"tool": "lookup_order", "tool_call_id": "call_9"}),
        ("tool.returned", {"tool": "lookup_order", "tool_call_id": "call_9", "outcome": "ok"}),
        ("interrupted", {}),
        ("dtmf", {"digit": "5"}),
        ("call.ended", {"reason": "completed", "duration_s": "3"}),
    ]
    assert {(e.call_id, e.ts) for e in events} == {("cr-1", 1_760_000_000.25)}


async def test_unknown_kinds_and_reserved_fields_are_refused(
    log: CallEventLog, redis_client: aioredis.Redis
) -> None:
    with pytest.raises(UserError, match=r"unknown call event kind 'call\.exploded'"):
        await log.emit("call.exploded", "cr-1")
    with pytest.raises(UserError, match=r"\['ts', 'v'\] are reserved"):
        await log.emit("dtmf", "cr-1", v="2", ts=1)
    assert await redis_client.xlen(CALL_EVENTS_STREAM) == 0


async def test_the_stream_stays_near_maxlen(redis_client: aioredis.Redis) -> None:
    log = CallEventLog(redis_client, maxlen=200)
    for i in range(1_000):
        last = await log.dtmf(f"cr-{i}", "1")
    length = await redis_client.xlen(CALL_EVENTS_STREAM)
    # MAXLEN ~ trims whole stream nodes (at most 100 entries each by default).
    assert 200 <= length <= 300
    newest = await redis_client.xrevrange(CALL_EVENTS_STREAM, count=1)
    assert newest[0][0].decode() == last


async def test_tail_from_now_sees_only_new_events(
    log: CallEventLog, redis_client: aioredis.Redis
) -> None:
    await log.dtmf("cr-old", "1")
    tail = asyncio.create_task(collect(tail_events(redis_client, count=2, block_ms=500)))

    async def tail_is_blocked() -> bool:
        clients = await redis_client.client_list()
        return any(c["cmd"] == "xread" and "b" in c["flags"] for c in clients)

    async with asyncio.timeout(WAIT):
        while not await tail_is_blocked():
            await asyncio.sleep(0.01)
    await log.dtmf("cr-new", "2")
    await log.interrupted("cr-new")
    events = await tail
    assert [(e.call_id, e.kind) for e in events] == [("cr-new", "dtmf"), ("cr-new", "interrupted")]


async def test_tail_skips_entries_that_are_not_call_events(
    log: CallEventLog, redis_client: aioredis.Redis
) -> None:
    await redis_client.xadd(CALL_EVENTS_STREAM, {"kind": "dtmf"})  # no envelope version
    await log.dtmf("cr-1", "9")
    events = await collect(tail_events(redis_client, start="0", count=1))
    assert [(e.call_id, e.fields) for e in events] == [("cr-1", {"digit": "9"})]


async def test_consumer_groups_each_read_every_event(
    log: CallEventLog, redis_client: aioredis.Redis
) -> None:
    for group in ("archive", "crm-sync"):
        await redis_client.xgroup_create(CALL_EVENTS_STREAM, group, id="$", mkstream=True)
    await log.call_started("cr-1", transport="sip")
    await log.transcript("cr-1", "assistant", "Hello! How can I help?")
    for group in ("archive", "crm-sync"):
        reply = await redis_client.xreadgroup(group, "worker-1", {CALL_EVENTS_STREAM: ">"})
        entries = reply[0][1]
        events = [CallEvent.from_entry(entry_id.decode(), fields) for entry_id, fields in entries]
        assert [e.kind for e in events] == ["call.started", "transcript"]
        assert events[1].fields["text"] == "Hello! How can I help?"
        acked = await redis_client.xack(CALL_EVENTS_STREAM, group, *(e.id for e in events))
        assert acked == 2
    pending = await redis_client.xpending(CALL_EVENTS_STREAM, "archive")
    assert pending["pending"] == 0


async def test_numbers_are_stored_as_json(log: CallEventLog, redis_client: aioredis.Redis) -> None:
    await log.emit("call.started", "cr-1", attempt=2, score=0.5, sip=True)
    (_, fields), *_ = await redis_client.xrange(CALL_EVENTS_STREAM)
    assert [json.loads(fields[k]) for k in (b"attempt", b"score", b"sip")] == [2, 0.5, True]
