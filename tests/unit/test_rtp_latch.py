"""Symmetric RTP latching (RFC 4961) and the source check, in virtual time: the first valid packet
latches; other sources are dropped before parsing while the latched one talks; a re-latch only
after it has been silent; a re-INVITE's new address unlatches."""

from __future__ import annotations

import pytest

from services.telephony.rtp import RtpLatch, RtpPacket

ANNOUNCED = ("192.0.2.10", 4000)  # what the SDP's c=/m= said
NATTED = ("198.51.100.7", 61000)  # where the caller's packets really come from
OTHER = ("203.0.113.66", 5004)


def rtp(seq: int = 1, *, pt: int = 0, ssrc: int = 0xAAAA) -> bytes:
    return bytes(RtpPacket(pt, seq, seq * 160, ssrc, b"\xff" * 160))


def make() -> RtpLatch:
    return RtpLatch(ANNOUNCED, {0, 101})


def test_we_send_to_the_announced_address_until_the_first_valid_packet_latches() -> None:
    latch = make()
    assert latch.remote == ANNOUNCED and latch.source is None
    packet = latch.accept(rtp(), NATTED, 0.0)
    assert packet is not None and packet.sequence == 1
    assert latch.source == NATTED and latch.remote == NATTED


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x80\x00", "short"),
        (b"\x00\x01\x00\x00" + bytes(16), "version"),  # a STUN request
        (rtp(pt=8), "payload_type"),  # valid RTP, but PCMA was not negotiated
    ],
)
def test_an_invalid_packet_does_not_latch(data: bytes, reason: str) -> None:
    latch = make()
    assert latch.accept(data, OTHER, 0.0) is None
    assert latch.source is None and latch.drops == {reason: 1}
    assert latch.accept(rtp(), NATTED, 0.01) is not None and latch.source == NATTED


def test_other_sources_are_dropped_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    latch = make()
    latch.accept(rtp(), NATTED, 0.0)

    def parse(*_args: object, **_kwargs: object) -> RtpPacket:
        raise AssertionError("a packet from a foreign source was parsed")

    with monkeypatch.context() as patch:
        patch.setattr(RtpPacket, "parse", parse)  # the class the latch parses with
        for i in range(5000):  # one second of a 5,000 packets/s flood
            assert latch.accept(rtp(i, ssrc=0xAAAA), OTHER, 0.0002 * i) is None
    assert latch.drops == {"source": 5000}
    assert latch.source == NATTED


def test_the_latched_source_may_change_ssrc() -> None:
    latch = make()
    latch.accept(rtp(1, ssrc=1), NATTED, 0.0)
    packet = latch.accept(rtp(2, ssrc=2), NATTED, 0.02)
    assert packet is not None and packet.ssrc == 2 and latch.relatches == 0


def test_no_relatch_while_the_latched_source_talks() -> None:
    latch = make()
    now = 0.0
    for i in range(100):  # two seconds of the caller, and an intruder all along
        assert latch.accept(rtp(i), NATTED, now) is not None
        assert latch.accept(rtp(i, ssrc=0xBAD), OTHER, now + 0.01) is None
        now += 0.02
    assert latch.source == NATTED and latch.relatches == 0
    assert latch.drops == {"source": 100}


def test_a_silent_source_is_replaced_after_relatch_after() -> None:
    """A NAT rebinding: the old mapping goes silent, the same caller appears elsewhere."""
    latch = make()
    latch.accept(rtp(1), NATTED, 10.0)
    assert latch.accept(rtp(2, ssrc=0xBBBB), OTHER, 10.99) is None  # 0.99 s of silence
    assert latch.accept(b"\x80", OTHER, 11.0) is None  # silent long enough, but not RTP
    assert latch.source == NATTED and latch.drops == {"source": 1, "short": 1}
    packet = latch.accept(rtp(3, ssrc=0xBBBB), OTHER, 11.0)
    assert packet is not None and latch.source == OTHER and latch.relatches == 1
    assert latch.accept(rtp(4), NATTED, 11.02) is None  # now the old address is the stranger
    assert latch.drops["source"] == 2


def test_relatch_after_is_a_setting() -> None:
    latch = RtpLatch(None, {0}, relatch_after=5.0)
    latch.accept(rtp(1), NATTED, 0.0)
    assert latch.accept(rtp(2), OTHER, 4.9) is None
    assert latch.accept(rtp(3), OTHER, 5.0) is not None


def test_a_new_announced_address_unlatches_and_the_same_one_does_not() -> None:
    latch = make()
    latch.accept(rtp(1), NATTED, 0.0)
    latch.reannounce(ANNOUNCED)  # a hold re-INVITE: same address
    assert latch.source == NATTED
    latch.reannounce(OTHER)  # the media moved
    assert latch.source is None and latch.remote == OTHER
    assert latch.accept(rtp(2), OTHER, 0.04) is not None and latch.source == OTHER
