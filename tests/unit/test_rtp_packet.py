"""RTP packets (RFC 3550 §5.1): hand-built golden packets (tests/fixtures/rtp/packets.json)
parse to their fields and serialize back to their bytes; every malformed shape is dropped with
its metric reason; any packet we can build round-trips; no datagram raises anything but
RtpError."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.errors import RtpError, UserError
from services.telephony.rtp import HeaderExtension, RtpPacket
from services.telephony.rtp.packet import MAX_PAYLOAD

FIXTURES = json.loads((Path(__file__).parents[1] / "fixtures/rtp/packets.json").read_text())


def unhex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def packet_from(fields: dict[str, Any]) -> RtpPacket:
    ext = fields["extension"]
    return RtpPacket(
        payload_type=fields["payload_type"],
        sequence=fields["sequence"],
        timestamp=fields["timestamp"],
        ssrc=fields["ssrc"],
        payload=bytes.fromhex(fields["payload"]),
        marker=fields["marker"],
        csrc=tuple(fields["csrc"]),
        extension=None if ext is None else HeaderExtension(ext["profile"], unhex(ext["data"])),
        padding=fields["padding"],
    )


GOLDEN = [pytest.param(c["hex"], c["fields"], id=c["name"]) for c in FIXTURES["packets"]]
MALFORMED = [
    pytest.param(c["hex"], c["reason"], id=f"{c['reason']}: {c['comment']}")
    for c in FIXTURES["malformed"]
]


@pytest.mark.parametrize(("hex_", "fields"), GOLDEN)
def test_golden_bytes_parse_to_their_fields(hex_: str, fields: dict[str, Any]) -> None:
    assert RtpPacket.parse(unhex(hex_)) == packet_from(fields)


@pytest.mark.parametrize(("hex_", "fields"), GOLDEN)
def test_golden_fields_serialize_to_their_bytes(hex_: str, fields: dict[str, Any]) -> None:
    packet = packet_from(fields)
    assert bytes(packet) == unhex(hex_)
    assert packet.serialize() == unhex(hex_)


def test_the_golden_set_covers_what_the_format_allows() -> None:
    packets = [packet_from(c["fields"]) for c in FIXTURES["packets"]]
    assert any(p.marker for p in packets)
    assert any(p.csrc and p.extension for p in packets)
    assert any(p.padding for p in packets)
    assert {len(p.payload) for p in packets} >= {160, 4}
    assert {p.payload_type for p in packets} >= {0, 8, 101}


@pytest.mark.parametrize(("hex_", "reason"), MALFORMED)
def test_malformed_datagrams_are_dropped_with_their_reason(hex_: str, reason: str) -> None:
    with pytest.raises(RtpError) as caught:
        RtpPacket.parse(unhex(hex_))
    assert caught.value.reason == reason


def test_the_payload_limit_is_inclusive_and_configurable() -> None:
    header = unhex("80 00 0001 00000000 00000001")
    assert len(RtpPacket.parse(header + bytes(MAX_PAYLOAD)).payload) == MAX_PAYLOAD
    with pytest.raises(RtpError) as caught:
        RtpPacket.parse(header + bytes(MAX_PAYLOAD + 1))
    assert caught.value.reason == "oversize"
    with pytest.raises(RtpError):
        RtpPacket.parse(header + bytes(161), max_payload=160)
    # Padding does not count toward the payload.
    padded = unhex("a0 00 0001 00000000 00000001") + bytes(160) + bytes(9) + b"\x0a"
    assert len(RtpPacket.parse(padded, max_payload=160).payload) == 160


def test_padding_content_is_not_carried_only_its_length() -> None:
    data = unhex("a0 00 0001 00000000 00000001 7f7f ab cd 03")
    packet = RtpPacket.parse(data)
    assert (packet.payload, packet.padding) == (b"\x7f\x7f", 3)
    assert bytes(packet) == unhex("a0 00 0001 00000000 00000001 7f7f 00 00 03")


def test_an_empty_payload_is_a_packet() -> None:
    assert RtpPacket.parse(unhex("80 00 0001 00000000 00000001")).payload == b""


@pytest.mark.parametrize(
    "bad",
    [
        {"payload_type": 128},
        {"sequence": 65536},
        {"timestamp": -1},
        {"ssrc": 1 << 32},
        {"csrc": tuple(range(16))},
        {"padding": 256},
        {"extension": HeaderExtension(0xBEDE, b"\x01\x02\x03")},
    ],
)
def test_serializing_an_impossible_packet_is_a_usage_error(bad: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"payload_type": 0, "sequence": 0, "timestamp": 0, "ssrc": 0}
    with pytest.raises(UserError):
        bytes(RtpPacket(**(fields | bad)))


packets = st.builds(
    RtpPacket,
    payload_type=st.integers(0, 127),
    sequence=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFF_FFFF),
    ssrc=st.integers(0, 0xFFFF_FFFF),
    payload=st.binary(max_size=MAX_PAYLOAD),
    marker=st.booleans(),
    csrc=st.lists(st.integers(0, 0xFFFF_FFFF), max_size=15).map(tuple),
    extension=st.none()
    | st.builds(
        HeaderExtension,
        st.integers(0, 0xFFFF),
        st.binary(max_size=64).map(lambda b: b[: len(b) // 4 * 4]),
    ),
    padding=st.integers(0, 255),
)


@given(packets)
def test_every_packet_round_trips(packet: RtpPacket) -> None:
    assert RtpPacket.parse(bytes(packet)) == packet


@given(st.binary(max_size=200))
def test_no_datagram_raises_anything_but_rtp_error(data: bytes) -> None:
    try:
        packet = RtpPacket.parse(data)
    except RtpError as exc:
        assert exc.reason in {"short", "version", "csrc", "extension", "padding", "oversize"}
    else:
        assert bytes(packet)[:2] == data[:2]  # the flags are what came in
