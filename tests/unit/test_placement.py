"""Admission and placement: caps are never exceeded, least-loaded first, drain, lost hosts."""

from __future__ import annotations

from services.runtime.placement import (
    BUSY_CLUSTER,
    BUSY_HOSTS,
    NO_HOSTS,
    Placed,
    Placement,
    Rejected,
)


def test_no_hosts_rejects() -> None:
    assert Placement(10).place("c1") == Rejected(NO_HOSTS)


def test_least_loaded_host_gets_the_call() -> None:
    p = Placement(100)
    p.add_host("h1", 10)
    p.add_host("h2", 20)
    placed = [p.place(f"c{n}") for n in range(6)]
    # By fill ratio, then free seats: the bigger host fills twice as fast.
    order = [x.host_id for x in placed if isinstance(x, Placed)]
    assert order == ["h2", "h1", "h2", "h2", "h1", "h2"]
    assert {s.host_id: len(s.calls) for s in p.hosts()} == {"h1": 2, "h2": 4}


def test_host_and_cluster_caps_are_exact() -> None:
    p = Placement(cluster_capacity=150)
    for n in range(4):
        p.add_host(f"h{n}", 50)
    results = [p.place(f"c{n}") for n in range(200)]
    admitted = [r for r in results if isinstance(r, Placed)]
    assert len(admitted) == 150
    assert {r.reason for r in results if isinstance(r, Rejected)} == {BUSY_CLUSTER}
    assert max(len(s.calls) for s in p.hosts()) <= 50


def test_host_cap_rejects_when_cluster_has_room() -> None:
    p = Placement(1000)
    p.add_host("h1", 2)
    assert [p.place(c) for c in ("a", "b", "c")][-1] == Rejected(BUSY_HOSTS)
    p.release("a")
    assert p.place("c") == Placed("h1")


def test_repeated_open_keeps_its_seat() -> None:
    p = Placement(1)
    p.add_host("h1", 1)
    assert p.place("a") == Placed("h1")
    assert p.place("a") == Placed("h1")
    assert p.active_calls == 1


def test_drain_stops_placement_and_reports_when_empty() -> None:
    p = Placement(100)
    p.add_host("h1", 10)
    p.add_host("h2", 10)
    p.place("a")  # h1
    assert p.drain("h1")
    assert all(p.place(f"n{k}") == Placed("h2") for k in range(5))
    assert not p.drained("h1")
    assert p.release("a") == "h1"
    assert p.drained("h1")
    assert p.remove_host("h1") == []


def test_lost_host_returns_its_calls() -> None:
    p = Placement(100)
    p.add_host("h1", 10)
    p.place("a")
    p.place("b")
    assert p.remove_host("h1") == ["a", "b"]
    assert p.active_calls == 0 and p.host_of("a") is None
    assert p.place("c") == Rejected(NO_HOSTS)
