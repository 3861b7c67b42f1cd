"""Checking a browser's SDP offer before aiortc sees it, sans-I/O.

aiortc answers what it should refuse (reference/webrtc-sip.md §2.3): garbage and empty SDP get
an answer with no media, an offer without ``a=fingerprint`` or on ``RTP/AVP`` is taken, and a
183 KB offer with 3,000 candidates costs 16 to 29 ms of the event loop. So every offer passes
:func:`check_offer` first: it accepts exactly one usable audio section (``UDP/TLS/RTP/SAVPF``,
Opus offered, ICE credentials and a DTLS fingerprint) and at most one data channel, and drops
candidates we will not try (beyond :data:`MAX_CANDIDATES`; multicast, unspecified, link-local,
loopback unless allowed, and private addresses when the deployment says so). A refusal is an
:class:`~services.errors.SdpError` whose message is safe to send back as the 400's body.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Final

from services.errors import SdpError

MAX_OFFER_BYTES: Final = 16 * 1024
MAX_CANDIDATES: Final = 20
SECURE_AUDIO: Final = "UDP/TLS/RTP/SAVPF"
DATA_CHANNEL_PROTOS: Final = frozenset({"UDP/DTLS/SCTP", "DTLS/SCTP"})


@dataclasses.dataclass(frozen=True, slots=True)
class CandidatePolicy:
    allow_loopback: bool = False  # tests on 127.0.0.1 (CALLRAY_WEBRTC_ICE_ADDRESSES)
    allow_private: bool = True  # False: a deployment reached only over public addresses


@dataclasses.dataclass(frozen=True, slots=True)
class CheckedOffer:
    sdp: str  # the offer as aiortc gets it: refused candidates removed
    dropped_candidates: int
    has_data_channel: bool


def check_offer(text: str, policy: CandidatePolicy = CandidatePolicy()) -> CheckedOffer:
    if not text.strip():
        raise SdpError("empty offer")
    lines = [line.rstrip("\r") for line in text.split("\n")]
    lines = [line for line in lines if line]
    if not lines[0].startswith("v="):
        raise SdpError("not an SDP offer (no v= line first)")
    for line in lines:
        if len(line) < 2 or line[1] != "=":
            raise SdpError(f"malformed SDP line {line[:40]!r}")
    session, sections = _split(lines)
    audio = [s for s in sections if s[0].startswith("m=audio ")]
    data = [s for s in sections if s[0].startswith("m=application ")]
    others = len(sections) - len(audio) - len(data)
    if len(audio) != 1:
        raise SdpError(f"an offer needs exactly one audio section, this has {len(audio)}")
    if others:
        raise SdpError("only audio and one data channel are taken (video offered)")
    if len(data) > 1:
        raise SdpError("at most one data channel section")
    _check_audio(audio[0], session)
    for section in data:
        parts = section[0].split()
        if len(parts) < 3 or parts[2] not in DATA_CHANNEL_PROTOS:
            raise SdpError("the data channel section is not DTLS/SCTP")
    kept: list[str] = []
    dropped = 0
    candidates = 0
    for line in lines:
        if line.startswith("a=candidate:"):
            if candidates >= MAX_CANDIDATES or not _candidate_ok(line, policy):
                dropped += 1
                continue
            candidates += 1
        kept.append(line)
    return CheckedOffer("\r\n".join(kept) + "\r\n", dropped, bool(data))


def _split(lines: list[str]) -> tuple[list[str], list[list[str]]]:
    session: list[str] = []
    sections: list[list[str]] = []
    for line in lines:
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        else:
            session.append(line)
    return session, sections


def _attribute(section: list[str], session: list[str], name: str) -> str | None:
    """``a=name:value`` from the media section, else the session (where SDP allows both)."""
    for source in (section, session):
        for line in source:
            if line.startswith(f"a={name}:"):
                return line.split(":", 1)[1].strip()
    return None


def _check_audio(section: list[str], session: list[str]) -> None:
    parts = section[0].split()
    if len(parts) < 4:
        raise SdpError("malformed audio m-line")
    if parts[1] == "0":
        raise SdpError("the audio section is rejected (port 0)")
    if parts[2] != SECURE_AUDIO:
        raise SdpError(f"audio must be {SECURE_AUDIO}, not {parts[2][:30]}")
    payloads = set(parts[3:])
    opus = [
        line
        for line in section
        if line.startswith("a=rtpmap:")
        and line.split()[0].removeprefix("a=rtpmap:") in payloads
        and len(line.split()) > 1
        and line.split()[1].lower().startswith("opus/48000")
    ]
    if not opus:
        raise SdpError("Opus is not offered")
    for name in ("ice-ufrag", "ice-pwd", "fingerprint"):
        if not _attribute(section, session, name):
            raise SdpError(f"no a={name} in the offer")
    if any(line in ("a=recvonly", "a=inactive") for line in section):
        raise SdpError("the audio section does not send")


def _candidate_ok(line: str, policy: CandidatePolicy) -> bool:
    # a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type>
    parts = line.split()
    if len(parts) < 8 or parts[6] != "typ":
        return False
    address = parts[4]
    if address.endswith(".local"):
        return False  # an mDNS name: we do not resolve them; a peer-reflexive pair still forms
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.is_multicast or ip.is_unspecified or ip.is_link_local:
        return False
    if ip.is_loopback:
        return policy.allow_loopback
    if ip.is_private and not policy.allow_private:
        return False
    return True
