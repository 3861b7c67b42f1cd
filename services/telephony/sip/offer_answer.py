"""RFC 3264 offer/answer for our G.711 UAS, sans-I/O: SDP text in, SDP text and the media plan out.

What trunks and PBXs send us (reference/telephony.md §4.2) is one audio stream on plain RTP/AVP
with PCMU and/or PCMA and usually ``telephone-event`` (RFC 4733). We take exactly one codec (the
media is passed through to the model as ``audio/pcmu`` or ``audio/pcma``, so the codec must not
change mid-call) and answer only that codec plus telephone-event.

* :func:`answer` answers an offer (INVITE, re-INVITE, UPDATE): the first usable audio m-line is
  taken, every other m-line is answered with port 0 in the same position (§6: the answer has
  as many m-lines as the offer, in order), and the direction mirrors the offer's (§6.1: an
  offered ``sendonly`` is answered ``recvonly``...), which is how hold works. A refusal raises
  :class:`~services.errors.SdpError` whose text fits ``Warning: 399 callray "<text>"`` on a 488.
* :func:`offer` and :func:`accept_answer` are the other side, for a late-offer INVITE (no SDP):
  our 200 OK carries the offer and the ACK the answer (RFC 3261 §13.2.1).
* :func:`is_hold` says whether a (re-)offer puts us on hold: ``sendonly``/``inactive``, or the
  RFC 2543 ``c=IN IP4 0.0.0.0`` that §8.4 still asks us to honour (send nothing to it).

Each SDP we write carries ``o=callray <session_id> <session_version>``: §8 requires a re-offer
or re-answer in the same dialog to keep the id and raise the version by one, so the dialog owns
both numbers and passes them in. SRTP (RTP/SAVP), RTP/AVPF feedback and RTCP attributes are not
negotiated; only IP literals are taken as connection addresses (no DNS in a sans-I/O core).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence
from typing import Final, Literal

from services.errors import SdpError, UserError
from services.telephony.sdp import (
    Direction,
    Line,
    MediaSection,
    SessionDescription,
    parse,
)

__all__ = [
    "CODEC_PAYLOAD_TYPES",
    "DEFAULT_PTIME_MS",
    "Answer",
    "Codec",
    "NegotiatedAudio",
    "accept_answer",
    "answer",
    "is_hold",
    "offer",
]

Codec = Literal["PCMU", "PCMA"]
#: RFC 3551 §6 static payload types; an offer may also map a dynamic one with ``a=rtpmap``.
CODEC_PAYLOAD_TYPES: Final[dict[Codec, int]] = {"PCMU": 0, "PCMA": 8}
DEFAULT_PTIME_MS: Final = 20  # RFC 3551 §4.5: the default packetization for audio
_PTIME_RANGE: Final = (10, 200)
_CLOCK_RATE: Final = 8000
_AVP: Final = "RTP/AVP"
_SECURE_PROTOS: Final = frozenset(
    {"RTP/SAVP", "RTP/SAVPF", "UDP/TLS/RTP/SAVP", "UDP/TLS/RTP/SAVPF"}
)
_DTMF_EVENTS: Final = "0-15"  # RFC 4733 §3.2: 0-9 * # A-D, the events we turn into digits
_SEND_RECV: Final[dict[Direction, tuple[bool, bool]]] = {
    "sendrecv": (True, True),
    "sendonly": (True, False),
    "recvonly": (False, True),
    "inactive": (False, False),
}


def _direction_of(send: bool, recv: bool) -> Direction:
    return next(d for d, flags in _SEND_RECV.items() if flags == (send, recv))


@dataclasses.dataclass(frozen=True, slots=True)
class NegotiatedAudio:
    """The audio stream both sides agreed on, seen from our side."""

    codec: Codec
    payload_type: int  # the PT the peer uses for the codec (0/8, or its rtpmap's)
    telephone_event: int | None  # RFC 4733 payload type, None if the peer did not offer it
    ptime_ms: int  # the packetization the peer asked to receive (its a=ptime, else 20)
    remote_address: str  # where to send RTP until symmetric latching knows better
    remote_port: int
    direction: Direction  # ours: "sendonly" means we send and do not expect to receive

    @property
    def sends(self) -> bool:
        """Whether we send RTP (false on hold and to an RFC 2543 0.0.0.0 address)."""
        unspecified = ipaddress.ip_address(self.remote_address).is_unspecified
        return _SEND_RECV[self.direction][0] and not unspecified and self.remote_port != 0

    @property
    def receives(self) -> bool:
        """Whether the peer may send us media that we pass on to the model."""
        return _SEND_RECV[self.direction][1]


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    sdp: str  # the answer to put in the 200 OK (Content-Type: application/sdp)
    audio: NegotiatedAudio
    audio_index: int  # which offered m-line we took
    rejected: tuple[str, ...]  # the media of every other m-line, each answered with port 0


def answer(
    offer_sdp: str | bytes | SessionDescription,
    *,
    local_ip: str,
    rtp_port: int,
    session_id: int,
    session_version: int,
    codecs_preference: Sequence[Codec] = ("PCMU", "PCMA"),
    direction: Direction = "sendrecv",
) -> Answer:
    """Answer ``offer_sdp`` with one G.711 codec (our ``codecs_preference`` decides between
    the offered ones) on ``local_ip``:``rtp_port``. ``direction`` is what we are willing to
    do (sendrecv, or sendonly while we hold the peer); the answer is the intersection of it
    with the offer's direction mirrored. Raises :class:`SdpError` for a 488."""
    _check_local(local_ip, rtp_port, session_id, session_version)
    if not codecs_preference or any(c not in CODEC_PAYLOAD_TYPES for c in codecs_preference):
        raise UserError("codecs_preference must be a non-empty choice of PCMU/PCMA")
    sd = offer_sdp if isinstance(offer_sdp, SessionDescription) else parse(offer_sdp)
    index, audio = _choose_audio(sd, codecs_preference)
    send, recv = _SEND_RECV[_peer_direction(sd, sd.media[index], audio.remote_address)]
    ours_send, ours_recv = _SEND_RECV[direction]
    # §6.1: a stream the offerer only sends is one we only receive, and so on.
    audio = dataclasses.replace(
        audio, direction=_direction_of(recv and ours_send, send and ours_recv)
    )
    sections = [
        _audio_section(rtp_port, audio) if i == index else _rejected(m)
        for i, m in enumerate(sd.media)
    ]
    text = SessionDescription(
        _session_lines(local_ip, session_id, session_version), tuple(sections)
    ).serialize()
    rejected = tuple(m.media for i, m in enumerate(sd.media) if i != index)
    return Answer(text, audio, index, rejected)


def offer(
    local_ip: str,
    rtp_port: int,
    *,
    session_id: int,
    session_version: int,
    codecs: Sequence[Codec] = ("PCMU", "PCMA"),
    telephone_event: int | None = 101,
    ptime_ms: int = DEFAULT_PTIME_MS,
    direction: Direction = "sendrecv",
) -> str:
    """Our offer, for a 200 OK to an INVITE that came without SDP (late offer): one audio
    m-line with ``codecs`` in preference order and telephone-event on a dynamic PT."""
    _check_local(local_ip, rtp_port, session_id, session_version)
    if not codecs or any(c not in CODEC_PAYLOAD_TYPES for c in codecs):
        raise UserError(f"codecs must be a non-empty choice of PCMU/PCMA, got {codecs!r}")
    if telephone_event is not None and not 96 <= telephone_event <= 127:
        raise UserError("telephone_event must be a dynamic payload type (96-127)")
    if not _PTIME_RANGE[0] <= ptime_ms <= _PTIME_RANGE[1]:
        raise UserError(f"ptime_ms must be within {_PTIME_RANGE}")
    unique = list(dict.fromkeys(codecs))
    formats = [str(CODEC_PAYLOAD_TYPES[c]) for c in unique]
    lines = [Line("a", f"rtpmap:{CODEC_PAYLOAD_TYPES[c]} {c}/{_CLOCK_RATE}") for c in unique]
    if telephone_event is not None:
        formats.append(str(telephone_event))
        lines.append(Line("a", f"rtpmap:{telephone_event} telephone-event/{_CLOCK_RATE}"))
        lines.append(Line("a", f"fmtp:{telephone_event} {_DTMF_EVENTS}"))
    lines += [Line("a", f"ptime:{ptime_ms}"), Line("a", direction)]
    section = MediaSection("audio", rtp_port, _AVP, tuple(formats), tuple(lines))
    session = _session_lines(local_ip, session_id, session_version)
    return SessionDescription(session, (section,)).serialize()


def accept_answer(
    answer_sdp: str | bytes | SessionDescription, our_offer: str | SessionDescription
) -> NegotiatedAudio:
    """The media plan from the peer's answer (in the ACK) to our late offer. Raises
    :class:`SdpError` if the answer breaks RFC 3264 §6 or rejects the audio; the dialog then
    ends the call (BYE), as there is no 488 to send for an ACK."""
    ours = our_offer if isinstance(our_offer, SessionDescription) else parse(our_offer)
    sd = answer_sdp if isinstance(answer_sdp, SessionDescription) else parse(answer_sdp)
    if len(sd.media) != len(ours.media):
        raise SdpError(f"the answer has {len(sd.media)} m-lines, our offer had {len(ours.media)}")
    index = next((i for i, m in enumerate(ours.media) if m.media == "audio" and m.port), None)
    if index is None:
        raise UserError("our offer has no audio m-line")
    mine, theirs = ours.media[index], sd.media[index]
    if theirs.media != "audio" or theirs.port == 0:
        raise SdpError("the answer rejected the audio stream")
    if theirs.proto.upper() != mine.proto.upper():
        raise SdpError("the answer changed the audio transport")
    offered = _codec_formats(mine)
    # §6.1: the answerer uses our payload type numbers; its order is its preference.
    chosen = next((f for f in theirs.formats if f in offered), None)
    if chosen is None:
        raise SdpError("no common codec in the answer")
    address = _remote_address(sd, theirs)
    their_send, their_recv = _SEND_RECV[_peer_direction(sd, theirs, address)]
    our_send, our_recv = _SEND_RECV[ours.media_direction(mine)]
    event = _telephone_event(mine)
    return NegotiatedAudio(
        codec=offered[chosen],
        payload_type=int(chosen),
        telephone_event=event if event is not None and str(event) in theirs.formats else None,
        ptime_ms=_ptime(sd, theirs),
        remote_address=address,
        remote_port=theirs.port,
        direction=_direction_of(our_send and their_recv, our_recv and their_send),
    )


def is_hold(offer_sdp: str | bytes | SessionDescription) -> bool:
    """Whether a (re-)offer puts us on hold: its audio is ``sendonly`` or ``inactive``, or
    its address is ``0.0.0.0`` (RFC 2543 hold, RFC 3264 §8.4). False when it has no usable
    audio; raises :class:`SdpError` only when it is not SDP."""
    sd = offer_sdp if isinstance(offer_sdp, SessionDescription) else parse(offer_sdp)
    for section in sd.media:
        if section.media == "audio" and section.port != 0:
            connection = sd.media_connection(section)
            if connection is not None and connection.address in ("0.0.0.0", "::"):
                return True
            return sd.media_direction(section) in ("sendonly", "inactive")
    return False


def _check_local(local_ip: str, rtp_port: int, session_id: int, version: int) -> None:
    try:
        ipaddress.ip_address(local_ip)
    except ValueError as exc:
        raise UserError(f"local_ip must be an IP address, got {local_ip!r}") from exc
    if not 0 < rtp_port < 65536 or session_id < 0 or version < 0:
        raise UserError("rtp_port must be 1-65535; session id and version non-negative")


def _session_lines(local_ip: str, session_id: int, version: int) -> tuple[Line, ...]:
    family = "IP6" if ":" in local_ip else "IP4"
    return (
        Line("v", "0"),
        Line("o", f"callray {session_id} {version} IN {family} {local_ip}"),
        Line("s", "callray"),
        Line("c", f"IN {family} {local_ip}"),
        Line("t", "0 0"),
    )


def _codec_formats(section: MediaSection) -> dict[str, Codec]:
    """The G.711 formats of an m-line, in its order: rtpmap when given, RFC 3551 otherwise."""
    rtpmaps = section.rtpmaps()
    found: dict[str, Codec] = {}
    for fmt in section.formats:
        if not fmt.isdigit() or len(fmt) > 3:
            continue
        pt = int(fmt)
        mapped = rtpmaps.get(pt)
        if mapped is not None:
            name = mapped.encoding.upper()
            if name in CODEC_PAYLOAD_TYPES and mapped.clock_rate == _CLOCK_RATE:
                if mapped.channels in (None, 1):
                    found[fmt] = "PCMU" if name == "PCMU" else "PCMA"
        elif pt in (0, 8):
            found[fmt] = "PCMU" if pt == 0 else "PCMA"
    return found


def _telephone_event(section: MediaSection) -> int | None:
    rtpmaps = section.rtpmaps()
    for fmt in section.formats:
        mapped = rtpmaps.get(int(fmt)) if fmt.isdigit() and len(fmt) <= 3 else None
        if mapped and mapped.encoding.lower() == "telephone-event":
            if mapped.clock_rate == _CLOCK_RATE:  # RFC 4733 §2: the audio clock
                return mapped.payload_type
    return None


def _ptime(sd: SessionDescription, section: MediaSection) -> int:
    value = section.ptime()
    if value is None:
        value = sd.ptime()
    if value is None or not _PTIME_RANGE[0] <= value <= _PTIME_RANGE[1]:
        return DEFAULT_PTIME_MS
    return round(value)


def _remote_address(sd: SessionDescription, section: MediaSection) -> str:
    connection = sd.media_connection(section)
    if connection is None:
        raise SdpError("no connection address (c=) for the audio stream")
    if connection.nettype != "IN" or connection.addrtype not in ("IP4", "IP6"):
        raise SdpError("the audio connection address is not IN IP4 or IN IP6")
    try:
        ip = ipaddress.ip_address(connection.address)
    except ValueError as exc:
        raise SdpError("the audio connection address is not an IP address") from exc
    if ip.is_multicast:
        raise SdpError("multicast audio is not supported")
    return str(ip)


def _peer_direction(sd: SessionDescription, section: MediaSection, address: str) -> Direction:
    """The direction the peer asked for in its offer or answer; an RFC 2543 ``0.0.0.0``
    address means it does not want to receive, whatever the attribute says (RFC 3264 §8.4)."""
    direction = sd.media_direction(section)
    if ipaddress.ip_address(address).is_unspecified:
        send, _ = _SEND_RECV[direction]
        return _direction_of(send, False)
    return direction


def _choose_audio(
    sd: SessionDescription, preference: Sequence[Codec]
) -> tuple[int, NegotiatedAudio]:
    """The first audio m-line we can take, or the reason none can be taken."""
    reasons: list[str] = []
    for index, section in enumerate(sd.media):
        if section.media != "audio" or section.port == 0:
            continue
        proto = section.proto.upper()
        if proto != _AVP:
            secure = proto in _SECURE_PROTOS
            reasons.append(
                "SRTP (RTP/SAVP) is not supported; offer RTP/AVP"
                if secure
                else "audio transport not supported; offer RTP/AVP"
            )
            continue
        formats = _codec_formats(section)
        ranked = [f for c in preference for f in formats if formats[f] == c]
        if not ranked:
            reasons.append("no common codec; we take PCMU or PCMA")
            continue
        chosen = ranked[0]
        address = _remote_address(sd, section)
        return index, NegotiatedAudio(
            codec=formats[chosen],
            payload_type=int(chosen),
            telephone_event=_telephone_event(section),
            ptime_ms=_ptime(sd, section),
            remote_address=address,
            remote_port=section.port,
            direction="sendrecv",  # set by the caller from the offer's direction
        )
    if reasons:
        # The most useful reason: a codec mismatch beats a transport one on another m-line.
        raise SdpError(sorted(set(reasons), key=_reason_rank)[0])
    if any(m.media == "audio" for m in sd.media):
        raise SdpError("the audio stream is disabled (port 0)")
    if sd.media:
        raise SdpError("no audio stream offered (video-only?); we take audio")
    raise SdpError("no media offered")


def _reason_rank(reason: str) -> int:
    return 0 if reason.startswith("no common codec") else 1


def _audio_section(rtp_port: int, audio: NegotiatedAudio) -> MediaSection:
    pt = audio.payload_type
    formats = [str(pt)]
    lines = [Line("a", f"rtpmap:{pt} {audio.codec}/{_CLOCK_RATE}")]
    if audio.telephone_event is not None:
        te = audio.telephone_event
        formats.append(str(te))
        lines.append(Line("a", f"rtpmap:{te} telephone-event/{_CLOCK_RATE}"))
        lines.append(Line("a", f"fmtp:{te} {_DTMF_EVENTS}"))
    lines += [Line("a", f"ptime:{audio.ptime_ms}"), Line("a", audio.direction)]
    return MediaSection("audio", rtp_port, _AVP, tuple(formats), tuple(lines))


def _rejected(section: MediaSection) -> MediaSection:
    # §6: a rejected stream keeps its media, proto and formats, with port 0 and nothing else.
    return MediaSection(section.media, 0, section.proto, section.formats)
