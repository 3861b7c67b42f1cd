"""RFC 4733 DTMF: the payload both ways; sip-tester's real captures (``dtmf_2833_*.pcap``, one
key press each: 10 packets, the end packet three times) give exactly their digit, once, on the
first packet; losses, reordering, long-press segments and floods."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.errors import RtpError
from services.telephony.rtp import DtmfReceiver, RtpPacket, TelephoneEvent
from tests import rtp_pcap
from tests.rtp_pcap import read_udp, sip_tester_capture

CAPTURES = {
    **{str(d): f"dtmf_2833_{d}.pcap" for d in range(10)},
    "*": "dtmf_2833_star.pcap",
    "#": "dtmf_2833_pound.pcap",
}


def capture(digit: str) -> list[tuple[float, RtpPacket]]:
    path = sip_tester_capture(CAPTURES[digit])
    return [(d.time, RtpPacket.parse(d.payload)) for d in read_udp(path)]


def event_packet(
    ts: int, event: int = 1, *, end: bool = False, duration: int = 160, ssrc: int = 7, seq: int = 0
) -> RtpPacket:
    payload = bytes(TelephoneEvent(event, end, 10, duration))
    return RtpPacket(101, seq, ts, ssrc, payload, marker=duration == 0)


# ----- the payload ---------------------------------------------------------------------------


def test_payload_fields_both_ways() -> None:
    event = TelephoneEvent.parse(bytes.fromhex("0b8a0320"))
    assert event == TelephoneEvent(event=11, end=True, volume=10, duration=800)
    assert event.digit == "#"
    assert bytes(event) == bytes.fromhex("0b8a0320")
    assert TelephoneEvent.parse(bytes.fromhex("0a3f0000")) == TelephoneEvent(10, False, 63, 0)


def test_event_codes_map_to_keys() -> None:
    keys = [TelephoneEvent(code, False, 10, 0).digit for code in range(17)]
    assert "".join(k for k in keys if k) == "0123456789*#ABCD"
    assert keys[16] is None  # flash: not a key


def test_a_short_payload_is_an_rtp_error() -> None:
    with pytest.raises(RtpError) as caught:
        TelephoneEvent.parse(b"\x01\x8a\x00")
    assert caught.value.reason == "dtmf"


# ----- sip-tester's captures -----------------------------------------------------------------


@pytest.mark.parametrize("digit", list(CAPTURES))
def test_each_capture_gives_its_digit_once_on_the_first_packet(digit: str) -> None:
    packets = capture(digit)
    assert len(packets) == 10 and TelephoneEvent.parse(packets[-1][1].payload).end
    receiver = DtmfReceiver()
    out = [receiver.push(packet, now) for now, packet in packets]
    assert out == [digit] + [None] * 9
    assert receiver.digits == 1 and not any(receiver.drops.values())


def test_the_captures_as_one_stream_give_one_digit_each() -> None:
    """The twelve files come from one sender (one SSRC) but separate recordings, so they are
    played in the order of that sender's RTP clock, a second apart."""
    captures = {digit: capture(digit) for digit in CAPTURES}
    assert len({p.ssrc for ps in captures.values() for _, p in ps}) == 1
    order = sorted(captures, key=lambda d: captures[d][0][1].timestamp)
    receiver = DtmfReceiver()
    digits = []
    for second, digit in enumerate(order):
        for now, packet in captures[digit]:
            if found := receiver.push(packet, second + now - captures[digit][0][0]):
                digits.append(found)
    assert digits == order and receiver.digits == 12


def test_a_lost_start_still_gives_the_digit_once() -> None:
    packets = capture("5")
    receiver = DtmfReceiver()
    out = [receiver.push(packet, now) for now, packet in packets[3:]]
    assert out == ["5"] + [None] * 6


def test_only_the_end_packets_still_give_the_digit_once() -> None:
    packets = capture("#")
    receiver = DtmfReceiver()
    assert [receiver.push(packet, now) for now, packet in packets[-3:]] == ["#", None, None]


# ----- built events --------------------------------------------------------------------------


def test_a_straggler_of_the_previous_event_is_not_a_new_press() -> None:
    receiver = DtmfReceiver()
    assert receiver.push(event_packet(1000, 1), 0.0) == "1"
    assert receiver.push(event_packet(3000, 2), 0.3) == "2"
    assert receiver.push(event_packet(1000, 1, end=True, duration=800), 0.31) is None
    assert receiver.push(event_packet(3000, 2, end=True), 0.32) is None


def test_the_same_key_twice_is_two_presses() -> None:
    receiver = DtmfReceiver()
    assert receiver.push(event_packet(1000, 1, end=True, duration=800), 0.0) == "1"
    assert receiver.push(event_packet(1000 + 800 + 400, 1), 0.15) == "1"
    assert receiver.digits == 2


def test_a_long_press_cut_into_segments_is_one_press() -> None:
    receiver = DtmfReceiver()
    ts = 0xFFFF_0000  # the segments cross the timestamp wrap too
    assert receiver.push(event_packet(ts, 9, duration=0), 0.0) == "9"
    assert receiver.push(event_packet(ts, 9, duration=0xFFFF), 8.19) is None
    second = (ts + 0xFFFF) & 0xFFFF_FFFF  # §2.5.1: the next segment starts where it ended
    assert receiver.push(event_packet(second, 9, duration=160), 8.21) is None
    assert receiver.push(event_packet(second, 9, end=True, duration=2000), 8.45) is None
    assert receiver.digits == 1


def test_a_new_ssrc_is_a_new_press_even_at_the_same_timestamp() -> None:
    receiver = DtmfReceiver()
    assert receiver.push(event_packet(500, 4, ssrc=1), 0.0) == "4"
    assert receiver.push(event_packet(500, 4, ssrc=2), 0.1) == "4"


def test_unknown_events_and_bad_payloads_are_counted_not_emitted() -> None:
    receiver = DtmfReceiver()
    assert receiver.push(event_packet(100, 16), 0.0) is None  # flash
    assert receiver.push(RtpPacket(101, 1, 900, 7, b"\x01"), 0.1) is None
    assert receiver.drops == {"dtmf": 1, "event": 1, "flood": 0}
    assert receiver.digits == 0


def test_a_flood_is_cut_to_the_rate_and_recovers() -> None:
    receiver = DtmfReceiver(max_per_second=10)
    now, emitted = 0.0, []
    for i in range(100):  # 100 distinct events in 1 s: ten times what a hand can press
        emitted.append(receiver.push(event_packet(i * 80, i % 10), now))
        now += 0.01
    assert sum(d is not None for d in emitted) == 10 + 9  # the burst, then the refill
    assert receiver.drops["flood"] == 100 - 19
    assert receiver.push(event_packet(100 * 80 + 8000, 3), now + 1.0) == "3"


def test_a_missing_capture_skips_here_and_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(rtp_pcap, "SIP_TESTER", tmp_path)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        rtp_pcap.sip_tester_capture("dtmf_2833_1.pcap")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        rtp_pcap.sip_tester_capture("dtmf_2833_1.pcap")
