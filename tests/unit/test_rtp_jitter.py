"""The receive jitter buffer, in virtual time: property tests over arrival orders, losses and
duplicates within the reorder window (hypothesis), and one case each for what makes it give up a
packet or start over: the window, the wait, sequence wrap, SSRC change, marker, timestamp jump,
sequence jump; and sipp's 30 ms A-law capture through it untouched."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.errors import UserError
from services.media.playout import PCMA, PCMU, FrameFormat
from services.telephony.rtp import JitterBuffer, RtpLatch, RtpPacket
from tests.rtp_pcap import read_udp, sip_tester_capture

WINDOW = 3
SSRC = 0x1234_5678


def frame(i: int, size: int = 160) -> bytes:
    """Packet i's audio: a byte no codec uses for silence (0xFF, 0xD5)."""
    return bytes([i % 200 + 1]) * size


def pkt(
    seq: int,
    ts: int,
    payload: bytes,
    *,
    pt: int = 0,
    ssrc: int = SSRC,
    marker: bool = False,
) -> RtpPacket:
    return RtpPacket(pt, seq & 0xFFFF, ts & 0xFFFF_FFFF, ssrc, payload, marker)


def stream(
    n: int, *, seq0: int = 100, ts0: int = 8000, size: int = 160, pt: int = 0
) -> list[RtpPacket]:
    return [pkt(seq0 + i, ts0 + i * size, frame(i, size), pt=pt) for i in range(n)]


def silence(fmt: FrameFormat, nbytes: int) -> bytes:
    return bytes([fmt.silence_byte]) * nbytes


# ----- properties ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_arrival_order_loss_and_duplication_within_the_window(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 60), label="packets")
    size = data.draw(st.sampled_from([160, 240]), label="bytes per packet (20 or 30 ms)")
    fmt = data.draw(st.sampled_from([PCMU, PCMA]))
    seq0 = data.draw(st.integers(0, 0xFFFF), label="first sequence number")
    ts0 = data.draw(st.integers(0, 0xFFFF_FFFF), label="first timestamp")
    lost = data.draw(st.sets(st.integers(1, n - 1)) if n > 1 else st.just(set()), label="lost")
    # Each packet arrives up to WINDOW places late: at most WINDOW later packets overtake it.
    delays = [0, *data.draw(st.lists(st.integers(0, WINDOW), min_size=n - 1, max_size=n - 1))]
    kept = [i for i in range(n) if i not in lost]
    dups = data.draw(st.lists(st.tuples(st.sampled_from(kept), st.integers(0, 10)), max_size=10))
    pt = 0 if fmt is PCMU else 8
    sent = stream(n, seq0=seq0, ts0=ts0, size=size, pt=pt)
    arrivals = sorted(
        [(i + delays[i], 0, i) for i in kept] + [(i + d, 1, i) for i, d in dups]
    )  # the first packet arrives first: the stream starts where its first packet says

    buffer = JitterBuffer(pt, fmt, max_fill_ms=10_000)
    out = b""
    for _, _, i in arrivals:
        out += buffer.push(sent[i], now=0.0)
        assert buffer.depth <= WINDOW
    out += buffer.flush()

    last = max(kept)
    expected = b"".join(
        silence(fmt, size) if i in lost else sent[i].payload for i in range(last + 1)
    )
    assert out == expected  # in order, each once, every gap exactly its time of codec silence
    assert buffer.drops == {"duplicate": len(dups), "late": 0}
    assert buffer.filled_bytes == size * sum(1 for i in lost if i < last)
    assert buffer.depth == 0 and not any(buffer.resyncs.values())


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF_FFFF), st.integers(1, 40))
def test_in_order_packets_are_released_on_arrival(seq0: int, ts0: int, n: int) -> None:
    buffer = JitterBuffer(0)
    for packet in stream(n, seq0=seq0, ts0=ts0):
        assert buffer.push(packet, now=0.0) == packet.payload  # zero added delay
        assert buffer.depth == 0 and buffer.deadline is None


# ----- giving up a missing packet ------------------------------------------------------------


def test_a_hole_is_given_up_when_the_fourth_packet_after_it_arrives() -> None:
    p = stream(6)
    buffer = JitterBuffer(0)
    assert buffer.push(p[0], 0.0) == p[0].payload
    for i in (2, 3, 4):  # 1 is missing: these wait, a packet overtaken by 3 is still used
        assert buffer.push(p[i], 0.0) == b""
    assert buffer.depth == WINDOW
    out = buffer.push(p[5], 0.0)
    assert out == silence(PCMU, 160) + b"".join(x.payload for x in p[2:6])
    assert buffer.push(p[1], 0.0) == b"" and buffer.drops["late"] == 1


def test_a_reordered_packet_inside_the_window_is_played_in_its_place() -> None:
    p = stream(5)
    buffer = JitterBuffer(0)
    out = [buffer.push(p[i], 0.0) for i in (0, 2, 3, 4, 1)]
    assert out == [p[0].payload, b"", b"", b"", b"".join(x.payload for x in p[1:])]
    assert buffer.filled_bytes == 0


def test_when_the_stream_pauses_after_a_hole_the_wait_is_bounded_in_time() -> None:
    p = stream(3)
    buffer = JitterBuffer(0)
    buffer.push(p[0], now=10.0)
    assert buffer.push(p[2], now=10.04) == b""
    assert buffer.deadline == pytest.approx(10.04 + (WINDOW + 1) * 0.02)
    assert buffer.expire(now=10.119) == b""
    assert buffer.expire(now=10.12) == silence(PCMU, 160) + p[2].payload
    assert buffer.deadline is None
    assert buffer.push(p[1], now=10.13) == b"" and buffer.drops["late"] == 1


def test_a_push_after_the_wait_gives_up_first() -> None:
    p = stream(4)
    buffer = JitterBuffer(0)
    buffer.push(p[0], 0.0)
    buffer.push(p[2], 0.0)
    assert buffer.push(p[3], 1.0) == silence(PCMU, 160) + p[2].payload + p[3].payload


def test_duplicates_and_late_packets_are_told_apart() -> None:
    p = stream(6)
    buffer = JitterBuffer(0)
    for i in (0, 0, 2, 2, 3, 4, 5, 1, 3):
        buffer.push(p[i], 0.0)
    assert buffer.drops == {"duplicate": 3, "late": 1}


def test_the_window_is_a_setting() -> None:
    p = stream(3)
    buffer = JitterBuffer(0, window=1)
    buffer.push(p[0], 0.0)
    assert buffer.push(p[2], 0.0) == b""
    buffer.push(p[2], 0.0)  # a duplicate does not count toward the window
    assert buffer.push(stream(4)[3], 0.0) != b""
    with pytest.raises(UserError):
        JitterBuffer(0, window=0)


# ----- wrap and resynchronisation ------------------------------------------------------------


def test_sequence_and_timestamp_wrap() -> None:
    p = stream(6, seq0=65533, ts0=0xFFFF_FFFF - 300)
    assert [x.sequence for x in p] == [65533, 65534, 65535, 0, 1, 2]
    buffer = JitterBuffer(0)
    out = b"".join(buffer.push(p[i], 0.0) for i in (0, 2, 1, 3, 5))  # 4 lost
    out += buffer.flush()
    assert out == b"".join(x.payload for x in p[:4]) + silence(PCMU, 160) + p[5].payload
    assert not any(buffer.resyncs.values())


def test_a_new_ssrc_flushes_the_old_stream_and_starts_over() -> None:
    old = stream(4)
    new = [pkt(9000 + i, 555 + i * 160, frame(50 + i), ssrc=0xBEEF) for i in range(2)]
    buffer = JitterBuffer(0)
    buffer.push(old[0], 0.0)
    buffer.push(old[2], 0.0)  # 1 is missing
    out = buffer.push(new[0], 0.01)
    assert out == silence(PCMU, 160) + old[2].payload + new[0].payload  # no fill before new
    assert buffer.resyncs["ssrc"] == 1
    assert buffer.push(old[1], 0.02) == b""  # a straggler of the old source
    assert buffer.drops["late"] == 1
    assert buffer.push(new[1], 0.03) == new[1].payload
    assert buffer.push(old[3], 1.0) == old[3].payload  # long after: the old source is back
    assert buffer.resyncs["ssrc"] == 2


def test_a_marker_starts_a_talkspurt_without_filling_the_silence_before_it() -> None:
    buffer = JitterBuffer(0)
    first = pkt(10, 0, frame(1), marker=True)
    assert buffer.push(first, 0.0) == first.payload  # the stream's first: nothing to resync
    talkspurt = pkt(11, 160 + 8000, frame(2), marker=True)
    assert buffer.push(talkspurt, 1.0) == talkspurt.payload
    assert buffer.resyncs["marker"] == 1 and buffer.filled_bytes == 0
    after = pkt(13, 160 + 8000 + 320, frame(3))  # and after it, loss is filled as ever
    assert buffer.push(after, 1.04) == b""
    assert buffer.flush() == silence(PCMU, 160) + after.payload


@pytest.mark.parametrize(
    ("ts_delta", "filled"),
    [(160 + 1600, 1600), (160 + 1601, 0), (160 + 80_000, 0), (-160, 0)],
    ids=["200 ms: filled", "just over 200 ms: resync", "10 s: resync", "backwards: resync"],
)
def test_a_timestamp_jump_beyond_max_fill_resyncs(ts_delta: int, filled: int) -> None:
    buffer = JitterBuffer(0)
    buffer.push(pkt(1, 1000, frame(1)), 0.0)
    out = buffer.push(pkt(2, 1000 + ts_delta, frame(2)), 0.02)  # no sequence gap
    assert out == silence(PCMU, filled) + frame(2)
    assert buffer.resyncs["ts_jump"] == (0 if filled else 1)


def test_a_sequence_jump_is_a_restart_not_a_loss() -> None:
    buffer = JitterBuffer(0)
    buffer.push(pkt(1, 0, frame(1)), 0.0)
    jumped = pkt(1 + 5000, 160, frame(2))
    assert buffer.push(jumped, 0.02) == jumped.payload
    assert buffer.resyncs["seq_jump"] == 1
    back = pkt(1, 320, frame(3))  # far behind the new numbering: a restart too
    assert buffer.push(back, 0.04) == back.payload
    assert buffer.resyncs["seq_jump"] == 2


# ----- the other payloads of the stream ------------------------------------------------------


def test_telephone_events_take_their_place_in_the_sequence_and_play_nothing() -> None:
    buffer = JitterBuffer(0)
    assert buffer.push(pkt(1, 0, frame(1)), 0.0) == frame(1)
    event = b"\x05\x0a\x00\xa0"
    assert buffer.push(pkt(2, 160, event, pt=101, marker=True), 0.02) == b""
    assert buffer.push(pkt(3, 160, event, pt=101), 0.04) == b""
    # Audio resumes 60 ms later in time: released at once, the event's time as silence.
    assert buffer.push(pkt(4, 640, frame(4)), 0.06) == silence(PCMU, 480) + frame(4)
    assert buffer.depth == 0 and buffer.resyncs["marker"] == 0


def test_alaw_gaps_are_alaw_silence() -> None:
    buffer = JitterBuffer(8, PCMA)
    buffer.push(pkt(1, 0, frame(1), pt=8), 0.0)
    assert buffer.push(pkt(2, 320, frame(2), pt=8), 0.0) == b"\xd5" * 160 + frame(2)


def test_sipp_g711a_capture_passes_through_untouched() -> None:
    """sipp's bundled A-law capture: 30 ms packets of 240 bytes."""
    datagrams = read_udp(sip_tester_capture("g711a.pcap"))
    latch = RtpLatch(None, {8, 101})
    buffer = JitterBuffer(8, PCMA)
    out = b""
    payloads = b""
    for d in datagrams:
        packet = latch.accept(d.payload, d.source, d.time)
        assert packet is not None
        payloads += packet.payload
        out += buffer.push(packet, d.time)
    assert len(datagrams) == 236
    assert {len(RtpPacket.parse(d.payload).payload) for d in datagrams} == {240}
    assert out == payloads and buffer.filled_bytes == 0 and not any(buffer.drops.values())
