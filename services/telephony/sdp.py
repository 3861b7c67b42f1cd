"""SDP (RFC 8866, formerly RFC 4566): parse text into a session description and write it back.

Shared by the SIP ingress (offer/answer with trunks, :mod:`services.telephony.sip.offer_answer`)
and anything else that reads SDP. Pure functions over text; no I/O.

The contract:

* :func:`parse` turns text into a :class:`SessionDescription`: the session-level lines in order
  (``v=``, ``o=``, ``s=``, ``c=``, ``t=``, ``a=``...) and one :class:`MediaSection` per ``m=``
  line (its fields parsed, every following line kept in order). Helpers read what offer/answer
  needs: ``rtpmap``, ``fmtp``, the direction, ``ptime``, ``c=`` and ``o=``.
* :meth:`SessionDescription.serialize` writes it back. For input that follows the grammar of
  RFC 8866 §9 (one space between ``m=`` fields, every line terminated) the output is byte for
  byte the input, with the same line ending (CRLF per the grammar, or LF, which §5 asks parsers
  to accept). Blank lines, a missing final line ending and runs of spaces in ``m=`` are
  tolerated on input and normalised on output.
* Anything else raises :class:`~services.errors.SdpError`, whose message is safe to send back to
  the peer: it never quotes more than a few characters of the input.
* The work is bounded: at most :data:`MAX_SDP_BYTES` of text, :data:`MAX_LINES` lines and
  :data:`MAX_MEDIA` media sections, checked before anything else, so a hostile offer is cheap.

Liberal where real peers differ, strict where it matters: the session-level lines may come in
any order (some gateways put ``c=`` after ``t=``) and ``s=``/``t=`` may be missing, but ``v=0``
must come first, ``o=`` must be present and well formed, and only ``i``, ``c``, ``b``, ``k`` and
``a`` lines (and unknown letters, kept verbatim as §5 allows ignoring them) may follow an ``m=``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Final, Literal, NamedTuple

from services.errors import SdpError

__all__ = [
    "DIRECTIONS",
    "MAX_LINES",
    "MAX_MEDIA",
    "MAX_SDP_BYTES",
    "Connection",
    "Direction",
    "Line",
    "MediaSection",
    "Origin",
    "RtpMap",
    "SessionDescription",
    "parse",
]

MAX_SDP_BYTES: Final = 16 * 1024
MAX_LINES: Final = 1024
MAX_MEDIA: Final = 32

Direction = Literal["sendrecv", "sendonly", "recvonly", "inactive"]
DIRECTIONS: Final[tuple[Direction, ...]] = ("sendrecv", "sendonly", "recvonly", "inactive")

# RFC 8866 §9: a media description holds i, c, b, k and a lines; these are session-level only.
_SESSION_ONLY: Final = frozenset("vosuepztr")
_TYPE = re.compile(r"[a-z]\Z")
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+\Z")  # RFC 8866 §9 token
_DIGITS = re.compile(r"[0-9]+\Z")


def _snippet(text: str) -> str:
    """A few characters of peer input, printable and free of quotes, for an error message
    that may end up inside a ``Warning`` header's quoted string."""
    kept = "".join(ch if ch.isprintable() and ch not in '"\\' else "?" for ch in text[:24])
    return kept + ("..." if len(text) > 24 else "")


class Line(NamedTuple):
    """One ``<type>=<value>`` line; ``value`` is everything after the ``=``, verbatim."""

    type: str
    value: str

    def __str__(self) -> str:
        return f"{self.type}={self.value}"


class RtpMap(NamedTuple):
    """``a=rtpmap:<payload type> <encoding name>/<clock rate>[/<channels>]`` (RFC 8866 §6.6)."""

    payload_type: int
    encoding: str
    clock_rate: int
    channels: int | None


class Connection(NamedTuple):
    """``c=<nettype> <addrtype> <address>[/<ttl>][/<number>]`` (RFC 8866 §5.7)."""

    nettype: str
    addrtype: str
    address: str
    ttl: int | None = None
    number: int | None = None  # of multicast addresses


class Origin(NamedTuple):
    """``o=<username> <sess-id> <sess-version> <nettype> <addrtype> <address>`` (§5.2).

    The id and version are kept as the digit strings sent: they may exceed 64 bits and a
    leading zero must survive a round trip. RFC 3264 §8: a re-offer keeps the id and bumps the
    version; an unchanged version means an unchanged session.
    """

    username: str
    session_id: str
    session_version: str
    nettype: str
    addrtype: str
    address: str


def _attributes(lines: Iterable[Line]) -> Iterable[tuple[str, str | None]]:
    for line in lines:
        if line.type == "a":
            name, sep, value = line.value.partition(":")
            yield name, (value if sep else None)


def _attribute(lines: Iterable[Line], name: str) -> str | None:
    """The value of the first ``a=name:value`` ("" for a flag ``a=name``), else None."""
    for key, value in _attributes(lines):
        if key == name:
            return "" if value is None else value
    return None


def _direction(lines: Iterable[Line]) -> Direction | None:
    for line in lines:
        if line.type == "a" and line.value in DIRECTIONS:
            return line.value
    return None


def _ptime(lines: Iterable[Line]) -> float | None:
    value = _attribute(lines, "ptime")
    if value is None:
        return None
    try:
        ms = float(value.strip())
    except ValueError:
        return None
    return ms if 0 < ms < 10_000 else None


def _connection(lines: Iterable[Line]) -> Connection | None:
    for line in lines:
        if line.type == "c":
            return _parse_connection(line.value)
    return None


def _parse_connection(value: str) -> Connection:
    parts = value.split(" ")
    if len(parts) != 3 or not all(parts):
        raise SdpError(f"malformed c= line {_snippet(value)}")
    address, *suffix = parts[2].split("/")
    if len(suffix) > 2 or not all(_DIGITS.match(s) for s in suffix) or not address:
        raise SdpError(f"malformed c= address {_snippet(parts[2])}")
    numbers = [int(s) for s in suffix] + [None, None]
    return Connection(parts[0], parts[1], address, numbers[0], numbers[1])


@dataclasses.dataclass(frozen=True, slots=True)
class MediaSection:
    """One media description: the ``m=`` fields and every line after it, in order."""

    media: str  # "audio", "video", "application", ...
    port: int  # 0: the stream is rejected or disabled (RFC 3264 §5.1, §6)
    proto: str  # "RTP/AVP", "RTP/SAVP", "UDP/TLS/RTP/SAVPF", ...
    formats: tuple[str, ...]  # RTP payload types as digit strings for RTP protos
    lines: tuple[Line, ...] = ()
    port_count: int | None = None  # the "/<number of ports>" suffix, rare

    def m_line(self) -> str:
        port = str(self.port) if self.port_count is None else f"{self.port}/{self.port_count}"
        return " ".join((self.media, port, self.proto, *self.formats))

    def attributes(self) -> list[tuple[str, str | None]]:
        """Every ``a=`` line as (name, value), value None for a flag, in order."""
        return list(_attributes(self.lines))

    def attribute(self, name: str) -> str | None:
        """The first ``a=name:value`` value ("" for a flag ``a=name``), or None."""
        return _attribute(self.lines, name)

    def rtpmaps(self) -> dict[int, RtpMap]:
        """``a=rtpmap`` by payload type. Malformed rtpmap lines are skipped, not fatal: the
        static assignments of RFC 3551 still describe payload types 0-95 without one."""
        found: dict[int, RtpMap] = {}
        for name, value in _attributes(self.lines):
            if name == "rtpmap" and value is not None:
                parsed = _parse_rtpmap(value)
                if parsed is not None and parsed.payload_type not in found:
                    found[parsed.payload_type] = parsed
        return found

    def fmtp(self, fmt: str) -> str | None:
        """The parameters of ``a=fmtp:<fmt> <params>``, or None if there is none."""
        for name, value in _attributes(self.lines):
            if name == "fmtp" and value is not None:
                key, _, params = value.partition(" ")
                if key == fmt:
                    return params.strip()
        return None

    def direction(self) -> Direction | None:
        """The media-level direction attribute, or None (then the session's applies)."""
        return _direction(self.lines)

    def ptime(self) -> float | None:
        """``a=ptime`` in milliseconds, or None when absent or not a positive number."""
        return _ptime(self.lines)

    def connection(self) -> Connection | None:
        """The first media-level ``c=``, or None (then the session's applies, §5.7)."""
        return _connection(self.lines)


def _parse_rtpmap(value: str) -> RtpMap | None:
    pt, _, rest = value.partition(" ")
    fields = rest.strip().split("/")
    if not _DIGITS.match(pt) or len(fields) not in (2, 3) or not fields[0]:
        return None
    if not all(_DIGITS.match(f) for f in fields[1:]) or len(pt) > 3:
        return None
    channels = int(fields[2]) if len(fields) == 3 else None
    return RtpMap(int(pt), fields[0], int(fields[1]), channels)


@dataclasses.dataclass(frozen=True, slots=True)
class SessionDescription:
    """A parsed SDP: session-level lines (``v=`` first) and the media sections."""

    lines: tuple[Line, ...]
    media: tuple[MediaSection, ...] = ()
    eol: str = "\r\n"  # the line ending to write: the grammar's CRLF, or LF if the input used it

    def origin(self) -> Origin:
        for line in self.lines:
            if line.type == "o":
                return _parse_origin(line.value)
        raise SdpError("no o= line")  # unreachable for parsed input; guards built ones

    def connection(self) -> Connection | None:
        """The session-level ``c=``, or None."""
        return _connection(self.lines)

    def attribute(self, name: str) -> str | None:
        """The first session-level ``a=name:value`` value ("" for a flag), or None."""
        return _attribute(self.lines, name)

    def direction(self) -> Direction | None:
        """The session-level direction attribute, or None."""
        return _direction(self.lines)

    def ptime(self) -> float | None:
        """A session-level ``a=ptime`` (the attribute is media-level, but some peers write it
        once for the session), or None."""
        return _ptime(self.lines)

    def media_direction(self, section: MediaSection) -> Direction:
        """The direction in force for ``section``: its own attribute, else the session's,
        else sendrecv (RFC 3264 §5.1)."""
        return section.direction() or self.direction() or "sendrecv"

    def media_connection(self, section: MediaSection) -> Connection | None:
        """The connection in force for ``section``: its own ``c=``, else the session's."""
        return section.connection() or self.connection()

    def serialize(self) -> str:
        out = [str(line) for line in self.lines]
        for section in self.media:
            out.append("m=" + section.m_line())
            out.extend(str(line) for line in section.lines)
        return self.eol.join(out) + self.eol

    def __bytes__(self) -> bytes:
        return self.serialize().encode("utf-8")


def _parse_origin(value: str) -> Origin:
    parts = value.split(" ")
    if len(parts) != 6 or not all(parts):
        raise SdpError(f"malformed o= line {_snippet(value)}")
    if not _DIGITS.match(parts[1]) or not _DIGITS.match(parts[2]):
        raise SdpError("malformed o= line: session id and version must be digits")
    return Origin(*parts)


def _parse_m_line(value: str, lines: tuple[Line, ...]) -> MediaSection:
    parts = value.split()
    if len(parts) < 4:
        raise SdpError(f"malformed m= line {_snippet(value)}")
    media, port_field, proto, *formats = parts
    port_text, slash, count_text = port_field.partition("/")
    if not _DIGITS.match(port_text) or (slash and not _DIGITS.match(count_text)):
        raise SdpError(f"malformed m= port {_snippet(port_field)}")
    port = int(port_text)
    count = int(count_text) if slash else None
    if port > 65535 or count == 0:
        raise SdpError(f"m= port out of range {_snippet(port_field)}")
    if not _TOKEN.match(media) or not all(_TOKEN.match(p) for p in proto.split("/")):
        raise SdpError(f"malformed m= line {_snippet(value)}")
    return MediaSection(media, port, proto, tuple(formats), lines, count)


def _split_lines(text: str | bytes) -> tuple[list[str], str]:
    if isinstance(text, bytes):
        if len(text) > MAX_SDP_BYTES:
            raise SdpError(f"SDP larger than {MAX_SDP_BYTES} bytes")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SdpError("SDP is not UTF-8") from exc
    elif len(text) > MAX_SDP_BYTES or len(text.encode("utf-8")) > MAX_SDP_BYTES:
        raise SdpError(f"SDP larger than {MAX_SDP_BYTES} bytes")
    if text.count("\n") > MAX_LINES:
        raise SdpError(f"SDP has more than {MAX_LINES} lines")
    first_nl = text.find("\n")
    eol = "\r\n" if first_nl <= 0 or text[first_nl - 1] == "\r" else "\n"
    lines = [raw.removesuffix("\r") for raw in text.split("\n")]
    return [line for line in lines if line], eol


def parse(text: str | bytes) -> SessionDescription:
    """Parse SDP text (str, or UTF-8 bytes); raise :class:`SdpError` if it is not SDP."""
    raw_lines, eol = _split_lines(text)
    if not raw_lines:
        raise SdpError("empty SDP")
    parsed: list[Line] = []
    for raw in raw_lines:
        kind, eq, value = raw[:1], raw[1:2], raw[2:]
        if eq != "=" or not _TYPE.match(kind):
            raise SdpError(f"malformed SDP line {_snippet(raw)}")
        if "\r" in value or "\x00" in value:
            raise SdpError(f"control character in SDP line {_snippet(raw)}")
        parsed.append(Line(kind, value))
    if parsed[0] != Line("v", "0"):
        raise SdpError("not SDP: the first line must be v=0")
    session: list[Line] = []
    sections: list[tuple[str, list[Line]]] = []
    for line in parsed:
        if line.type == "m":
            if len(sections) >= MAX_MEDIA:
                raise SdpError(f"more than {MAX_MEDIA} media sections")
            sections.append((line.value, []))
        elif sections:
            if line.type in _SESSION_ONLY:
                raise SdpError(f"{line.type}= line inside a media section")
            sections[-1][1].append(line)
        else:
            session.append(line)
    if sum(1 for line in session if line.type == "v") != 1:
        raise SdpError("more than one v= line")
    origins = [line for line in session if line.type == "o"]
    if len(origins) != 1:
        raise SdpError("an SDP needs exactly one o= line")
    _parse_origin(origins[0].value)
    for line in session:
        if line.type == "c":
            _parse_connection(line.value)
    media = tuple(_parse_m_line(value, tuple(lines)) for value, lines in sections)
    for section in media:
        for line in section.lines:
            if line.type == "c":
                _parse_connection(line.value)
    return SessionDescription(tuple(session), media, eol)
