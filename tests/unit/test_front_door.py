"""The front door's sans-I/O parts: the bound on unauthenticated streams, the log limiter, the
in-memory token ledger."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import REGISTRY

from services.gateway.front_door import PendingStreams, Ticket
from services.gateway.token_ledger import LocalTokenLedger
from services.gateway.twilio_bridge import Ignored, TwilioBridge
from services.observability import metrics
from services.observability.log_limits import LogLimiter
from services.telephony.stream_tokens import StreamTokens
from tests.virtual_time import FakeClock


def test_pending_streams_are_bounded_in_total_and_per_source() -> None:
    pending = PendingStreams(total=3, per_source=2)
    a1, a2 = pending.admit("a"), pending.admit("a")
    assert isinstance(a1, Ticket) and isinstance(a2, Ticket)
    assert pending.admit("a") == "too many unauthenticated streams from this address"
    b1 = pending.admit("b")
    assert isinstance(b1, Ticket)
    assert pending.admit("c") == "too many unauthenticated streams"
    a1.release()
    a1.release()  # once per stream, however often it is called
    assert pending.total == 2 and pending.pending("a") == 1
    assert isinstance(pending.admit("c"), Ticket)
    for ticket in (a2, b1):
        ticket.release()
    assert pending.pending("a") == pending.pending("b") == 0


def _suppressed(reason: str) -> float:
    metrics.flush()
    return REGISTRY.get_sample_value("callray_log_suppressed_total", {"reason": reason}) or 0


def test_the_log_limiter_lets_one_line_per_peer_and_reason_through(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    limiter = LogLimiter(logging.getLogger("test.limits"), interval_s=10.0, clock=clock)
    before = _suppressed("test_bad")
    with caplog.at_level(logging.WARNING, logger="test.limits"):
        assert limiter.warning("1.2.3.4", "test_bad", "bad frame %d", 1)
        assert not any(limiter.warning("1.2.3.4", "test_bad", "bad frame %d", n) for n in range(5))
        assert limiter.warning("5.6.7.8", "test_bad", "bad frame %d", 7)  # another peer
        assert limiter.warning("1.2.3.4", "test_other", "other")  # another reason
        clock.advance(10.0)
        assert limiter.warning("1.2.3.4", "test_bad", "bad frame %d", 9)
    assert [r.getMessage() for r in caplog.records] == [
        "bad frame 1",
        "bad frame 7",
        "other",
        "bad frame 9 (5 more like it suppressed)",
    ]
    assert _suppressed("test_bad") == before + 5


def test_the_log_limiter_forgets_the_oldest_peers_past_its_bound() -> None:
    limiter = LogLimiter(logging.getLogger("test.limits"), max_keys=2, clock=FakeClock())
    assert limiter.warning("a", "r", "x") and limiter.warning("b", "r", "x")
    assert limiter.warning("c", "r", "x")  # "a" is forgotten
    assert limiter.warning("a", "r", "x") and not limiter.warning("c", "r", "x")


async def test_the_local_ledger_keeps_a_calls_first_token_until_it_expires() -> None:
    clock = FakeClock()
    ledger = LocalTokenLedger(clock=clock)
    assert await ledger.token_for_call("CA1", "t1", 60_000) == "t1"
    assert await ledger.token_for_call("CA1", "t2", 60_000) == "t1"
    clock.advance(61)
    assert await ledger.token_for_call("CA1", "t3", 60_000) == "t3"
    expires_ms = int((clock() + 30) * 1000)
    assert await ledger.claim("n1", expires_ms) and not await ledger.claim("n1", expires_ms)
    clock.advance(31)
    assert await ledger.claim("n1", expires_ms + 60_000)  # forgotten once its token expired


def test_an_unknown_twilio_event_is_reported_not_logged_by_the_bridge() -> None:
    bridge = TwilioBridge(StreamTokens(b"0" * 32, 30.0))
    assert bridge.receive('{"event": "future-thing"}') == [Ignored("future-thing")]
