"""The SIP load caller's media, sans-I/O, on a virtual clock: a simulated ingress pacer echoes
what it sends (optionally cutting a barge-in as callray should, or playing on as a buggy ingress
would) and the caller's measurements are checked against what happened."""

from __future__ import annotations

from collections import deque

from services.loadgen.audio import tone_ulaw
from services.loadgen.frame_tags import TagScanner
from services.loadgen.rtp_caller import CUT_RUN, RtpCaller
from services.loadgen.script import CallerScript
from services.telephony.rtp import RtpPacket, RtpSender

IDLE = b"\xff" * 160
SPEECH = tone_ulaw(1000)


def script(**kw: object) -> CallerScript:
    return CallerScript(duration_s=kw.pop("duration_s", 2.0), speech=SPEECH, **kw)  # type: ignore[arg-type]


class Ingress:
    """One call's pacer: a frame out every 20 ms (phase ``phase_s``), echoing what it received
    ``delay_s`` earlier; ``cut`` (first, last) drops the echoes of those frames; ``stall`` makes
    the tick at those indexes run before the echo is in (one idle packet, then the queue)."""

    def __init__(self, delay_s: float = 0.004, phase_s: float = 0.01) -> None:
        self.sender = RtpSender(0, ssrc=1, randbits=lambda n: 0)
        self.queue: deque[tuple[float, bytes]] = deque()
        self.delay_s, self.phase_s = delay_s, phase_s
        self.cut: tuple[int, int] | None = None
        self.stall: set[int] = set()
        self.ticks = 0

    def receive(self, datagram: bytes, now: float) -> None:
        payload = RtpPacket.parse(datagram).payload
        [(_, sequence)] = TagScanner().feed(payload)
        if self.cut and self.cut[0] <= sequence <= self.cut[1]:
            return
        self.queue.append((now + self.delay_s, payload))

    def tick(self, now: float) -> bytes:
        self.ticks += 1
        if self.queue and self.queue[0][0] <= now and self.ticks not in self.stall:
            return self.sender.packet(self.queue.popleft()[1])
        return self.sender.packet(IDLE)


def run(caller: RtpCaller, ingress: Ingress, until: float = 10.0) -> None:
    """Step both on a 1 ms virtual clock until the caller is done."""
    caller.open(0.0)
    now, next_pacer = 0.0, ingress.phase_s
    while not caller.done and now < until:
        for datagram in caller.tick(now):
            ingress.receive(datagram, now)
        if now >= next_pacer - 1e-9:
            caller.receive(ingress.tick(now), now + 0.0005)
            next_pacer += 0.02
        now = round(now + 0.001, 6)


def test_every_frame_is_tagged_echoed_and_timed() -> None:
    caller, ingress = RtpCaller(script()), Ingress(delay_s=0.004)
    run(caller, ingress)
    stats, echo = caller.stats, caller.stats.echo
    assert echo is not None and stats.frames_sent == 100
    assert echo.echoed == 100 and echo.lost() == 0 and echo.unknown == 0
    # Sent on the caller's grid (0, 20, ...), echoed at the pacer's next tick (10, 30, ...).
    assert 9.0 <= min(echo.latencies_ms) and max(echo.latencies_ms) <= 11.0
    assert caller.ended_by == "caller" and stats.clears_received == 0
    assert caller.idle_received >= 1  # the pacer's first tick had nothing yet


def test_late_ticks_catch_up_on_the_grid_and_record_the_lag() -> None:
    caller = RtpCaller(script())
    caller.open(0.0)
    assert len(caller.tick(0.0)) == 1
    packets = caller.tick(0.1)  # five frames due: 20, 40, 60, 80, 100 ms
    assert len(packets) == 5 and caller.stats.max_tick_lag_ms == 80.0
    sequences = [RtpPacket.parse(p).sequence for p in packets]
    assert sequences == [(sequences[0] + i) & 0xFFFF for i in range(5)]


def test_a_pacer_tick_before_the_echo_is_no_cut_and_no_loss() -> None:
    caller, ingress = RtpCaller(script(barge_in_after_s=0.5)), Ingress()
    ingress.stall = {40}  # during the barge-in, which starts at 0.5 s
    run(caller, ingress)
    barge, echo = caller.stats.barge_in, caller.stats.echo
    assert barge is not None and barge.started_at is not None and echo is not None
    assert barge.cleared_at is None and echo.lost() == 0 and echo.flushed() == 0


def test_a_barge_in_cut_is_seen_and_its_gap_flushed() -> None:
    caller, ingress = RtpCaller(script(barge_in_after_s=0.5, barge_in_ms=200)), Ingress()
    ingress.cut = (25, 44)  # from the first speech frame until well after the burst
    run(caller, ingress)
    barge, echo = caller.stats.barge_in, caller.stats.echo
    assert barge is not None and echo is not None and barge.first_sequence == 25
    assert barge.clear_latency_ms is not None and 10.0 <= barge.clear_latency_ms <= 31.0
    assert echo.flushed() == 20 and echo.lost() == 0 and barge.stale_bytes == 0
    assert caller.heard_before_cut_ms == 25 * 20  # frames 0..24, as the truncate should say


def test_audio_that_plays_on_after_the_cut_is_stale() -> None:
    # What the SIP ingress does today: the interrupt drops the queued frame, the rest of the
    # interrupted response keeps coming.
    caller, ingress = RtpCaller(script(barge_in_after_s=0.5, barge_in_ms=200)), Ingress()
    ingress.cut = (25, 25)
    run(caller, ingress)
    barge, echo = caller.stats.barge_in, caller.stats.echo
    assert barge is not None and echo is not None and barge.cleared_at is not None
    assert echo.flushed() == 1 and echo.lost() == 0
    assert barge.stale_bytes == 9 * 160  # frames 26..34: the rest of the burst
    assert caller.heard_before_cut_ms == 25 * 20


def test_a_gap_without_a_barge_in_is_lost() -> None:
    caller, ingress = RtpCaller(script()), Ingress()
    ingress.cut = (30, 32)
    run(caller, ingress)
    echo = caller.stats.echo
    assert echo is not None and echo.lost() == 3 and caller.stats.clears_received == 0


def test_without_tags_the_cut_is_a_run_of_idle_packets() -> None:
    caller = RtpCaller(script(barge_in_after_s=0.1, echo=False, duration_s=1.0))
    caller.open(0.0)
    ingress = RtpSender(0, ssrc=2)
    t = 0.0
    for _ in range(8):  # the agent talks; the barge-in starts at 0.1 s
        caller.tick(t)
        caller.receive(ingress.packet(SPEECH[:160]), t + 0.001)
        t += 0.02
    barge = caller.stats.barge_in
    assert barge is not None and barge.started_at == 0.1
    for n in range(CUT_RUN):
        assert barge.cleared_at is None
        caller.receive(ingress.packet(IDLE), t + n * 0.02)
    assert barge.cleared_at == t and caller.stats.media_received == 8
    assert caller.heard_before_cut_ms == 8 * 20
    caller.tick(t + 0.06)
    caller.receive(ingress.packet(SPEECH[:160]), t + 0.065)  # the agent goes on: stale
    assert barge.stale_bytes == 160


def test_the_ingress_bye_ends_the_call_and_bad_packets_are_counted() -> None:
    caller = RtpCaller(script())
    caller.open(0.0)
    caller.receive(b"\x00" * 8, 0.01)
    caller.receive(bytes(RtpPacket(8, 1, 160, 5, IDLE)), 0.02)  # PCMA: not what we offered
    assert caller.bad_packets == 2
    caller.peer_hung_up("agent_hangup")
    assert caller.done and caller.ended_by == "ingress" and caller.close_reason == "agent_hangup"
    assert caller.tick(1.0) == []
