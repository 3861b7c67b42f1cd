"""A tiny reader for the RTP captures the tests replay (sip-tester's ``/usr/share/sip-tester``
pcaps), and the rule for when they are missing.

Only what those files use: the classic libpcap format (24-byte global header, a 16-byte header per
record; either byte order, micro- or nanosecond stamps), link type 1 (Ethernet, with or without
an 802.1Q tag) or 101 (raw IP), IPv4, UDP. Anything else raises, so a capture we cannot read
fails loudly instead of yielding nothing. Nothing from sip-tester is copied into the repository.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path

import pytest

SIP_TESTER = Path("/usr/share/sip-tester")

_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101


@dataclasses.dataclass(frozen=True)
class Datagram:
    time: float
    source: tuple[str, int]
    destination: tuple[str, int]
    payload: bytes


def read_udp(path: Path) -> list[Datagram]:
    """Every UDP datagram in a capture, in file order."""
    data = path.read_bytes()
    if data[:4] not in _MAGIC:
        raise ValueError(f"{path}: not a classic pcap file")
    order, unit = _MAGIC[data[:4]]
    linktype = struct.unpack_from(order + "I", data, 20)[0]
    if linktype not in (LINKTYPE_ETHERNET, LINKTYPE_RAW):
        raise ValueError(f"{path}: link type {linktype} is not Ethernet or raw IP")
    out: list[Datagram] = []
    offset = 24
    while offset + 16 <= len(data):
        seconds, fraction, captured, _original = struct.unpack_from(order + "IIII", data, offset)
        frame = data[offset + 16 : offset + 16 + captured]
        offset += 16 + captured
        ip = _ip_packet(frame) if linktype == LINKTYPE_ETHERNET else frame
        if ip is not None:
            datagram = _udp(ip, seconds + fraction * unit)
            if datagram is not None:
                out.append(datagram)
    return out


def _ip_packet(frame: bytes) -> bytes | None:
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    start = 14
    if ethertype == 0x8100:  # 802.1Q: the real type follows the tag
        ethertype = struct.unpack_from("!H", frame, 16)[0]
        start = 18
    return frame[start:] if ethertype == 0x0800 else None


def _udp(ip: bytes, time: float) -> Datagram | None:
    if ip[0] >> 4 != 4:
        raise ValueError("only IPv4 captures are read")
    header = (ip[0] & 0x0F) * 4
    total = struct.unpack_from("!H", ip, 2)[0]
    fragment = struct.unpack_from("!H", ip, 6)[0] & 0x3FFF
    if ip[9] != 17 or fragment:  # not UDP, or a fragment (none in the captures we read)
        return None
    sport, dport, length = struct.unpack_from("!HHH", ip, header)
    payload = ip[header + 8 : min(total, header + length)]
    return Datagram(
        time,
        (".".join(map(str, ip[12:16])), sport),
        (".".join(map(str, ip[16:20])), dport),
        payload,
    )


def sip_tester_capture(name: str) -> Path:
    """A capture sip-tester ships; skipped where it is not installed, except in CI (CI=true),
    which installs it, so there a missing file fails."""
    path = SIP_TESTER / name
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing: CI installs sip-tester (apt-get install sip-tester)")
        pytest.skip(f"{path} is missing: apt-get install sip-tester")
    return path
