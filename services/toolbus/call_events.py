"""Call events on ``callray:call-events``: what happened on every call, for anyone to consume.

Writers use :class:`CallEventLog`. Every entry has the fields ``v`` (envelope version, now 1),
``kind``, ``call_id`` (the callray call id) and ``ts`` (unix seconds), plus the fields of its kind:

==================  ============================================
``call.started``     anything the host adds (``transport``, ``agent``, ...)
``call.answered``    as above
``call.ended``       ``reason``, ``duration_s``
``call.moved``       ``reason``, ``duration_s`` (of the session that let it go; the call goes on
                     on another host, whose session adds a second ``call.started``)
``model.disconnected`` (none): the model socket dropped mid-call; the session reconnects
``model.reconnected`` ``gap_ms``, ``attempts``, ``replayed`` (conversation items re-sent)
``transcript``       ``role`` (user/assistant), ``text``; an assistant line also ``item_id``,
                     and, when the caller cut it short, ``interrupted`` (true), ``heard_ms``
                     and ``audio_ms`` (it is written once the caller heard it out or cut it)
``tool.called``      ``tool``, ``tool_call_id``
``tool.returned``    ``tool``, ``tool_call_id``, ``outcome``
``interrupted``      (none)
``dtmf``             ``digit``
==================  ============================================

Strings are stored verbatim, numbers as JSON. The stream is capped near ``maxlen`` entries
(``XADD MAXLEN ~``), so a consumer that falls further behind than that loses the oldest events.

**Consuming.** ``callray events tail`` (:func:`tail_events`) follows the stream with plain XREAD.
A service that must process every event once (archiving, analytics, CRM sync) uses its own
consumer group, which keeps its position and hands each entry to one of its workers::

    XGROUP CREATE callray:call-events crm-sync $ MKSTREAM        # once; "0" to start at the oldest
    XREADGROUP GROUP crm-sync worker-1 COUNT 100 BLOCK 5000 STREAMS callray:call-events >
    XACK callray:call-events crm-sync <id> ...                   # after handling each entry
    XAUTOCLAIM callray:call-events crm-sync worker-2 60000 0     # take over a dead worker's entries

Groups do not disturb each other or the tail; :meth:`CallEvent.from_entry` parses what they read.
Events may hold personal data (transcripts, digits): they go to this stream, never to logs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Final

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.errors import ProtocolError, UserError
from services.runtime.events import EVENT_KINDS
from services.toolbus.envelopes import ENVELOPE_VERSION
from services.toolbus.streams import (
    CALL_EVENTS_STREAM,
    Fields,
    as_str,
    block_ms_within,
    reraise_swallowed_cancel,
    stream_entries,
    xadd_fields,
)

logger = logging.getLogger(__name__)

_ENVELOPE_FIELDS: Final = frozenset({"v", "kind", "call_id", "ts"})

FieldValue = str | int | float


@dataclasses.dataclass(frozen=True, slots=True)
class CallEvent:
    """One entry of the call-events stream."""

    id: str  # the stream entry id
    kind: str
    call_id: str
    ts: float
    fields: dict[str, str]  # the kind's own fields, as stored (numbers as JSON text)

    @classmethod
    def from_entry(cls, entry_id: str, fields: Fields) -> CallEvent:
        values = {as_str(k): as_str(v) for k, v in fields.items()}
        for name in ("v", "kind", "call_id", "ts"):
            if name not in values:
                raise ProtocolError(f"call event field {name!r}: missing", field=name)
        if values["v"] != str(ENVELOPE_VERSION):
            raise ProtocolError(f"call event: unknown envelope version {values['v']!r}", field="v")
        try:
            ts = float(values["ts"])
        except ValueError:
            raise ProtocolError("call event field 'ts': not a number", field="ts") from None
        extra = {k: v for k, v in values.items() if k not in _ENVELOPE_FIELDS}
        return cls(entry_id, values["kind"], values["call_id"], ts, extra)


class CallEventLog:
    """Writes call events; one per process, shared by its calls."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        maxlen: int = 100_000,
        stream: str = CALL_EVENTS_STREAM,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self.maxlen = maxlen
        self.stream = stream
        self._clock = clock

    async def emit(self, kind: str, call_id: str, **fields: FieldValue) -> str:
        """Append one event; returns its entry id."""
        if kind not in EVENT_KINDS:
            raise UserError(f"unknown call event kind {kind!r}; known: {sorted(EVENT_KINDS)}")
        clash = _ENVELOPE_FIELDS.intersection(fields)
        if clash:
            raise UserError(f"call event fields {sorted(clash)} are reserved")
        entry = {
            "v": str(ENVELOPE_VERSION),
            "kind": kind,
            "call_id": call_id,
            "ts": json.dumps(self._clock()),
        }
        for name, value in fields.items():
            entry[name] = value if isinstance(value, str) else json.dumps(value)
        entry_id = await self._redis.xadd(
            self.stream, xadd_fields(entry), maxlen=self.maxlen, approximate=True
        )
        return as_str(entry_id)

    async def call_started(self, call_id: str, **fields: FieldValue) -> str:
        return await self.emit("call.started", call_id, **fields)

    async def call_answered(self, call_id: str, **fields: FieldValue) -> str:
        return await self.emit("call.answered", call_id, **fields)

    async def call_ended(self, call_id: str, reason: str, duration_s: float) -> str:
        return await self.emit("call.ended", call_id, reason=reason, duration_s=duration_s)

    async def transcript(self, call_id: str, role: str, text: str) -> str:
        return await self.emit("transcript", call_id, role=role, text=text)

    async def tool_called(self, call_id: str, tool: str, tool_call_id: str) -> str:
        return await self.emit("tool.called", call_id, tool=tool, tool_call_id=tool_call_id)

    async def tool_returned(self, call_id: str, tool: str, tool_call_id: str, outcome: str) -> str:
        return await self.emit(
            "tool.returned", call_id, tool=tool, tool_call_id=tool_call_id, outcome=outcome
        )

    async def interrupted(self, call_id: str) -> str:
        return await self.emit("interrupted", call_id)

    async def dtmf(self, call_id: str, digit: str) -> str:
        return await self.emit("dtmf", call_id, digit=digit)


async def tail_events(
    redis: aioredis.Redis,
    *,
    start: str = "$",
    count: int | None = None,
    block_ms: int = 2_000,
    stream: str = CALL_EVENTS_STREAM,
) -> AsyncIterator[CallEvent]:
    """Follow the stream from ``start`` (``"$"``: events after the first read; ``"0"``: all).

    Stops after ``count`` events, else runs until the consumer stops iterating. Entries that are
    not call events are logged and skipped. When Redis goes away (a restart) it keeps retrying
    and goes on from the last entry it yielded.
    """
    if start == "$":
        # A concrete id: re-reading from "$" after an empty read would skip what came between.
        newest = await redis.xrevrange(stream, count=1)
        start = as_str(newest[0][0] or "0-0") if newest else "0-0"
    block_ms = block_ms_within(redis, block_ms)
    seen = 0
    failures = 0
    while count is None or seen < count:
        batch = None if count is None else count - seen
        try:
            reply = await redis.xread({stream: start}, block=block_ms, count=batch)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            # Redis restarted or is away: wait and read on from the last entry seen, so nothing
            # is skipped or repeated (the stream outlives a restart in its AOF).
            reraise_swallowed_cancel()
            failures += 1
            if failures == 1:
                logger.warning("call events: Redis unreachable (%s); retrying", exc)
            await asyncio.sleep(min(2.0, 0.1 * 2 ** min(failures, 5)))
            continue
        reraise_swallowed_cancel()
        if failures:
            logger.warning("call events: Redis is back after %d failed reads", failures)
            failures = 0
        for _stream, entries in stream_entries(reply):
            for entry_id, fields in entries:
                start = entry_id
                if fields is None:
                    continue
                try:
                    event = CallEvent.from_entry(entry_id, fields)
                except ProtocolError as exc:
                    logger.warning("skipping call event %s: %s", entry_id, exc)
                    continue
                seen += 1
                yield event


_FIELD_ORDER: Final = ("reason", "duration_s", "role", "tool", "tool_call_id", "outcome", "digit")


def format_event(event: CallEvent) -> str:
    """One line for a terminal: time (UTC), call id, kind, then the event's fields."""
    when = datetime.fromtimestamp(event.ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    names: list[str] = [n for n in _FIELD_ORDER if n in event.fields]
    names += sorted(n for n in event.fields if n not in _FIELD_ORDER and n != "text")
    parts = [f"{name}={event.fields[name]}" for name in names]
    if "text" in event.fields:
        parts.append(json.dumps(event.fields["text"], ensure_ascii=False))
    return " ".join([when, event.call_id, event.kind, *parts]).rstrip()
