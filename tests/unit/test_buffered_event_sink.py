"""BufferedEventSink through an outage of its log: events held in order and written after,
overflow dropped and counted, one log line when it starts and one when it ends."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from prometheus_client import REGISTRY

from services.errors import UserError
from services.runtime.events import EVENT_KINDS, BufferedEventSink, ListEventSink


class FlakyLog:
    def __init__(self) -> None:
        self.down = False
        self.written: list[str] = []

    async def emit(self, kind: str, call_id: str, **fields: Any) -> None:
        if self.down:
            raise ConnectionError("Connection refused")
        self.written.append(call_id)


async def _no_wait(_seconds: float) -> None:
    await asyncio.sleep(0)


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def _dropped() -> float:
    return REGISTRY.get_sample_value("callray_call_events_dropped_total") or 0.0


async def test_events_wait_out_an_outage_in_order_and_overflow_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = FlakyLog()
    sink = BufferedEventSink(log, max_queued=3, sleep=_no_wait)
    sink.start()
    before = _dropped()
    with caplog.at_level(logging.WARNING, logger="services.runtime.events"):
        sink.emit("call.started", "c1")
        await _settle()
        log.down = True
        for n in range(2, 7):  # c2..c4 are held, c5 and c6 find the queue full
            sink.emit("transcript", f"c{n}")
        await _settle()
        assert log.written == ["c1"]
        log.down = False
        await sink.close()
    assert log.written == ["c1", "c2", "c3", "c4"]
    assert sink.dropped == 2 and _dropped() == before + 2
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "cannot be written" in messages[0] and "written again" in messages[1]


async def test_an_event_of_an_unknown_kind_is_dropped_not_held_before_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class StrictLog(FlakyLog):
        async def emit(self, kind: str, call_id: str, **fields: Any) -> None:
            if kind not in EVENT_KINDS:
                raise UserError(f"unknown call event kind {kind!r}")
            await super().emit(kind, call_id, **fields)

    log = StrictLog()
    sink = BufferedEventSink(log, sleep=_no_wait)
    sink.start()
    before = _dropped()
    with caplog.at_level(logging.ERROR, logger="services.runtime.events"):
        sink.emit("no.such.kind", "c1")
        sink.emit("call.ended", "c2")
        await _settle()
    assert log.written == ["c2"]
    assert _dropped() == before + 1
    assert "cannot be written" in caplog.text
    await sink.close()


def test_the_in_memory_sink_refuses_kinds_the_log_would() -> None:
    sink = ListEventSink()
    for kind in ("call.moved", "model.disconnected", "model.reconnected"):
        sink.emit(kind, "c1")
    with pytest.raises(UserError, match="unknown call event kind"):
        sink.emit("model.exploded", "c1")
