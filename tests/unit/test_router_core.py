"""RouterCore in virtual time: health checks, a lost host's calls, a drain's release — driven
round by round through the injected sleep, with fake hosts; nothing waits on a wall clock."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from services.errors import CallrayError, TransportError
from services.media.vocabulary import CallSpec
from services.runtime.events import ListEventSink
from services.runtime.placement import Rejected
from services.runtime.router import HOST_LOST, Opened, RouterCore


class FakeHost:
    def __init__(self) -> None:
        self.answers = True
        self.shut_down = False
        self.killed = False
        self.opened: list[CallSpec] = []
        self.closed: list[tuple[str, str]] = []
        self.handed_off: list[str] = []
        self.goodbyes: list[str] = []

    async def open_call(self, spec: CallSpec) -> float:
        self.opened.append(spec)
        return 0.001

    async def close_call(self, call_id: str, reason: str) -> None:
        if not self.answers:
            raise TransportError("no answer")
        self.closed.append((call_id, reason))

    async def ping(self, limit_s: float) -> Any:
        if not self.answers:
            raise TransportError("no answer")
        return 0

    async def shutdown(self, limit_s: float) -> None:
        self.shut_down = True

    def kill(self) -> None:
        self.killed = True

    async def hand_off_all(self, reason: str) -> int:
        self.handed_off.append(reason)
        return len(self.opened)

    async def say_goodbye_all(self, reason: str) -> int:
        self.goodbyes.append(reason)
        return len(self.opened)


class VirtualTime:
    """The router's sleep: records each wait and lets the test decide when it ends."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await asyncio.sleep(0)


async def test_a_host_is_lost_after_the_missed_rounds_and_its_calls_end() -> None:
    events = ListEventSink()
    time = VirtualTime()
    core = RouterCore(cluster_capacity=10, events=events, misses_before_lost=2, sleep=time.sleep)
    good, bad = FakeHost(), FakeHost()
    core.register_host("good", good, "good-handle", 5, 1)
    core.register_host("bad", bad, "bad-handle", 5, 2)
    placed = [await core.open_call(CallSpec(f"c{n}")) for n in range(4)]
    on_bad = [o.call_id for o in placed if isinstance(o, Opened) and o.host_id == "bad"]
    assert on_bad
    bad.answers = False
    await core.check_hosts()
    assert core.lost == []  # one missed round is not enough
    await core.check_hosts()
    assert core.lost == ["bad"]
    for _ in range(3):
        await asyncio.sleep(0)
    assert 5.0 in time.slept  # after the ingress's chance to move them (it did not, here)
    ended = [
        (call, fields["reason"]) for kind, call, fields in events.events if kind == "call.ended"
    ]
    assert sorted(ended) == sorted((c, HOST_LOST) for c in on_bad)
    again = await core.open_call(CallSpec("after"))
    assert isinstance(again, Opened) and again.host_id == "good"


async def test_an_answer_between_misses_resets_the_count() -> None:
    core = RouterCore(cluster_capacity=10, events=ListEventSink(), misses_before_lost=2)
    host = FakeHost()
    core.register_host("h", host, "handle", 5, 1)
    for answers in (False, True, False, True, False):
        host.answers = answers
        await core.check_hosts()
    assert core.lost == []


async def test_a_drained_host_is_released_once_its_last_call_ends() -> None:
    clock = VirtualTime()
    core = RouterCore(cluster_capacity=10, events=ListEventSink(), sleep=clock.sleep)
    host = FakeHost()
    core.register_host("h", host, "handle", 5, 1)
    opened = await core.open_call(CallSpec("c1"))
    assert isinstance(opened, Opened)
    assert core.drain("h")
    for _ in range(5):
        await asyncio.sleep(0)
    assert core.released == [] and not host.shut_down and clock.slept  # polling, virtually
    core.release("c1")
    for _ in range(5):
        await asyncio.sleep(0)
    assert core.released == ["h"] and host.shut_down and host.killed
    await core.close()


async def test_a_moved_call_lands_on_another_host_and_the_old_one_is_told() -> None:
    events = ListEventSink()
    core = RouterCore(cluster_capacity=10, events=events, misses_before_lost=2)
    a, b = FakeHost(), FakeHost()
    core.register_host("a", a, "a-handle", 5, 1)
    core.register_host("b", b, "b-handle", 5, 2)
    first = await core.open_call(CallSpec("c1"))
    assert isinstance(first, Opened)
    old, other = (a, "b") if first.host_id == "a" else (b, "a")
    moved = await core.move_call(CallSpec("c1", greet=False, resumed=True), first.host_id)
    assert isinstance(moved, Opened) and moved.host_id == other and moved.call_id == "c1"
    assert core.placement.host_of("c1") == other and core.placement.active_calls == 1
    await asyncio.sleep(0)  # the old host is told without the move waiting for it
    assert old.closed == [("c1", "moved")]
    # When the old host is then found lost, the moved call is not reported ended with it.
    old.answers = False
    await core.check_hosts()
    await core.check_hosts()
    assert core.lost == [first.host_id]
    for _ in range(3):
        await asyncio.sleep(0)
    assert not any(kind == "call.ended" for kind, _, _ in events.events)


async def test_a_call_moved_within_the_grace_after_its_host_was_lost_is_not_ended() -> None:
    events = ListEventSink()
    released = asyncio.Event()

    async def sleep(_seconds: float) -> None:
        await released.wait()  # the grace lasts until the test says so

    core = RouterCore(cluster_capacity=10, events=events, misses_before_lost=1, sleep=sleep)
    a, b = FakeHost(), FakeHost()
    core.register_host("a", a, "a-handle", 5, 1)
    await core.open_call(CallSpec("c1"))
    await core.open_call(CallSpec("c2"))
    core.register_host("b", b, "b-handle", 5, 2)
    a.answers = False
    await core.check_hosts()
    assert core.lost == ["a"]
    moved = await core.move_call(CallSpec("c1", resumed=True), "a")  # the ingress moved c1
    assert isinstance(moved, Opened) and moved.host_id == "b"
    released.set()
    for _ in range(3):
        await asyncio.sleep(0)
    ended = [call for kind, call, _ in events.events if kind == "call.ended"]
    assert ended == ["c2"]  # c2's ingress never moved it


async def test_a_call_with_nowhere_to_move_is_refused() -> None:
    core = RouterCore(cluster_capacity=10, events=ListEventSink())
    only = FakeHost()
    core.register_host("only", only, "h", 5, 1)
    await core.open_call(CallSpec("c1"))
    moved = await core.move_call(CallSpec("c1", resumed=True), "only")
    assert isinstance(moved, Rejected)
    assert core.placement.active_calls == 0  # its seat on the lost host is freed


async def test_a_moved_calls_old_session_ending_does_not_free_its_new_seat() -> None:
    core = RouterCore(cluster_capacity=10, events=ListEventSink(), sleep=VirtualTime().sleep)
    a, b = FakeHost(), FakeHost()
    core.register_host("a", a, "a-handle", 5, 1)
    core.register_host("b", b, "b-handle", 5, 2)
    first = await core.open_call(CallSpec("c1"))
    assert isinstance(first, Opened)
    moved = await core.move_call(CallSpec("c1", resumed=True), first.host_id)
    assert isinstance(moved, Opened) and moved.host_id != first.host_id
    core.release("c1", "moved", first.host_id)  # the old session, closed by the move
    assert core.placement.host_of("c1") == moved.host_id
    core.release("c1", "caller_hangup", moved.host_id)
    assert core.placement.host_of("c1") is None


async def test_evacuating_a_drained_host_moves_its_calls_when_another_has_room() -> None:
    core = RouterCore(cluster_capacity=10, events=ListEventSink(), sleep=VirtualTime().sleep)
    a, b = FakeHost(), FakeHost()
    core.register_host("a", a, "a-handle", 5, 1)
    core.register_host("b", b, "b-handle", 5, 2)
    core.drain("a")
    assert await core.evacuate("a") == "moved"
    assert a.handed_off == ["host_drained"] and a.goodbyes == []
    core.drain("b")  # now nowhere has room: goodbyes instead
    assert await core.evacuate("b") == "goodbye"
    assert b.goodbyes == ["host_drained"] and b.handed_off == []


async def test_only_a_draining_host_can_be_evacuated() -> None:
    core = RouterCore(cluster_capacity=10, events=ListEventSink(), sleep=VirtualTime().sleep)
    core.register_host("a", FakeHost(), "a-handle", 5, 1)
    with pytest.raises(CallrayError, match="not draining"):
        await core.evacuate("a")


async def test_host_handles_lists_every_registered_host_until_it_is_released() -> None:
    # The ingress takes these at start (actors/ingress.py: the warm-up), so it must see each
    # host the router would place a call on, and only those.
    core = RouterCore(cluster_capacity=10, events=ListEventSink(), sleep=VirtualTime().sleep)
    core.register_host("a", FakeHost(), "handle-a", 5, 1)
    core.register_host("b", FakeHost(), "handle-b", 5, 2)
    assert core.host_handles() == {"a": "handle-a", "b": "handle-b"}
    assert core.drain("a")
    for _ in range(5):
        await asyncio.sleep(0)
    assert core.released == ["a"]
    assert core.host_handles() == {"b": "handle-b"}
    await core.close()


async def test_every_rejection_reason_is_counted_from_zero_at_start() -> None:
    # A counter born at its first rejection gives increase() nothing to compare: the alert on
    # rejections would never fire.
    from services.observability import metrics
    from services.runtime.placement import REJECTION_REASONS

    for reason in REJECTION_REASONS:  # as in a fresh process (other tests may have rejected)
        with contextlib.suppress(KeyError):
            metrics.ADMISSION_REJECTIONS.remove(reason)
    assert "callray_admission_rejections_total{" not in metrics.render()[0].decode()
    core = RouterCore(cluster_capacity=10, events=ListEventSink(), sleep=VirtualTime().sleep)
    core.start()
    text = metrics.render()[0].decode()
    for reason in REJECTION_REASONS:
        assert f'callray_admission_rejections_total{{reason="{reason}"}}' in text
    await core.close()
