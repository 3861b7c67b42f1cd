"""The outbound packetizer: random start (from the injected source), +1 sequence and +samples
timestamp per packet across both wraps, the marker on talkspurt starts only; and the whole path
Playout (G.711) → RtpSender → RtpLatch → JitterBuffer gives back the frames sent."""

from __future__ import annotations

import random
from collections.abc import Callable

from services.media.playout import PCMU, Playout
from services.telephony.rtp import JitterBuffer, RtpLatch, RtpPacket, RtpSender


def fixed(*values: int) -> Callable[[int], int]:
    """A random source whose draws are ``values`` (ssrc, sequence, timestamp, in that order)."""
    draws = iter(values)

    def randbits(k: int) -> int:
        value = next(draws)
        assert 0 <= value < 1 << k
        return value

    return randbits


def test_the_start_is_random_from_the_injected_source() -> None:
    a = RtpSender(0, randbits=random.Random(7).getrandbits)
    b = RtpSender(0, randbits=random.Random(7).getrandbits)
    c = RtpSender(0, randbits=random.Random(8).getrandbits)
    assert (a.ssrc, a.sequence, a.timestamp) == (b.ssrc, b.sequence, b.timestamp)
    assert (a.ssrc, a.sequence, a.timestamp) != (c.ssrc, c.sequence, c.timestamp)
    assert RtpSender(0, ssrc=42, randbits=random.Random(7).getrandbits).ssrc == 42


def test_sequence_and_timestamp_advance_and_wrap_and_the_first_packet_is_marked() -> None:
    sender = RtpSender(8, randbits=fixed(0xCAFE, 0xFFFE, 0xFFFF_FF00))
    sent = [RtpPacket.parse(sender.packet(bytes([i]) * 160)) for i in range(4)]
    assert [p.sequence for p in sent] == [0xFFFE, 0xFFFF, 0, 1]
    assert [p.timestamp for p in sent] == [0xFFFF_FF00, 0xFFFF_FFA0, 0x40, 0xE0]
    assert [p.marker for p in sent] == [True, False, False, False]
    assert {(p.payload_type, p.ssrc) for p in sent} == {(8, 0xCAFE)}
    assert [p.payload for p in sent] == [bytes([i]) * 160 for i in range(4)]
    assert (sender.packets, sender.octets) == (4, 640)


def test_a_skip_starts_a_talkspurt_and_a_marker_can_be_forced() -> None:
    sender = RtpSender(0, randbits=fixed(1, 100, 1000))
    sender.packet(bytes(160))
    sender.skip(8000)  # a second with nothing sent (silence suppressed)
    resumed = RtpPacket.parse(sender.packet(bytes(240)))  # a 30 ms frame
    assert (resumed.sequence, resumed.timestamp, resumed.marker) == (101, 1000 + 160 + 8000, True)
    plain = RtpPacket.parse(sender.packet(bytes(160)))
    assert (plain.timestamp, plain.marker) == (1000 + 160 + 8000 + 240, False)
    assert RtpPacket.parse(sender.packet(bytes(160), marker=True)).marker


def test_playout_to_sender_to_latch_to_jitter_buffer_gives_back_the_frames() -> None:
    playout = Playout(PCMU)
    audio = bytes(range(1, 201)) * 8  # 1,600 bytes: 200 ms, none of it silence
    playout.push("item", 0, audio)
    playout.done("item")
    sender = RtpSender(0, randbits=random.Random(1).getrandbits)
    latch = RtpLatch(("127.0.0.1", 5004), {0})
    buffer = JitterBuffer(0, PCMU)
    heard = b""
    for tick in range(12):
        frame, _ = playout.next_frame()
        packet = latch.accept(sender.packet(frame), ("127.0.0.1", 5004), tick * 0.02)
        assert packet is not None
        heard += buffer.push(packet, tick * 0.02)
    assert heard == audio + b"\xff" * 320  # then the pacer's idle μ-law silence
