"""The silent-connection policy in virtual time, and the one aiohttp internal the guard reads."""

from __future__ import annotations

import inspect

from aiohttp import web_protocol

from services.gateway.front_door import SilentConnections


def test_a_connection_silent_past_the_deadline_is_closed() -> None:
    policy = SilentConnections(deadline_s=10.0, total=100, per_source=100)
    assert policy.sweep(0.0, [("a", "1.2.3.4", False), ("b", "1.2.3.4", True)]) == []
    assert policy.sweep(9.9, [("a", "1.2.3.4", False)]) == []
    assert policy.sweep(10.0, [("a", "1.2.3.4", False)]) == [("a", "header_timeout")]


def test_a_connection_that_sends_its_request_is_let_go_and_forgotten() -> None:
    policy = SilentConnections(deadline_s=10.0, total=100, per_source=100)
    policy.sweep(0.0, [("a", "1.2.3.4", False)])
    assert policy.sweep(20.0, [("a", "1.2.3.4", True)]) == []
    # Its first sighting was forgotten: silent again (a new connection, same key) starts anew.
    assert policy.sweep(21.0, [("a", "1.2.3.4", False)]) == []


def test_past_the_bounds_the_newest_silent_connections_go() -> None:
    policy = SilentConnections(deadline_s=10.0, total=3, per_source=2)
    policy.sweep(0.0, [("a1", "A", False), ("a2", "A", False)])
    later = [("a1", "A", False), ("a2", "A", False), ("a3", "A", False), ("b1", "B", False)]
    assert policy.sweep(1.0, later) == [("a3", "connection_limit")]
    more = [*later[:2], ("b1", "B", False), ("c1", "C", False)]
    assert policy.sweep(2.0, more) == [("c1", "connection_limit")]  # four silent, total is 3


def test_aiohttp_still_counts_parsed_requests_where_the_guard_reads_them() -> None:
    # connection_guard.has_sent_a_request reads RequestHandler._request_count: if aiohttp renames
    # or stops incrementing it, slowloris connections would be held for ever again.
    handler = web_protocol.RequestHandler
    assert "_request_count" in handler.__slots__
    assert "self._request_count += 1" in inspect.getsource(handler.data_received)


def test_a_source_over_its_rate_is_refused_until_its_bucket_refills() -> None:
    from services.gateway.front_door import SourceRate

    rate = SourceRate(rate=5.0, burst=10.0)
    assert all(rate.allow("A", 0.0) for _ in range(10))
    assert not rate.allow("A", 0.0)
    assert rate.allow("B", 0.0)  # another source has its own bucket
    assert rate.allow("A", 0.2) and not rate.allow("A", 0.2)  # one token back after 0.2 s
