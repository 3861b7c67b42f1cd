"""SIP messages (RFC 3261 §7, §18.3, §20): parse a UDP datagram, build requests and responses.

Contract:

* :func:`parse` takes one datagram and returns a :class:`SipRequest` or :class:`SipResponse`, or
  raises :class:`~services.errors.SipError` whose ``status`` is the reply it earns: 513 over
  :data:`MAX_MESSAGE_BYTES` (checked before any parsing), 505 for a well-formed version other
  than SIP/2.0, 400 for any other fault in a request, and 0 when nothing should be sent: keep-alive
  CRLFs (RFC 5626 §4.4.1; test :func:`is_keepalive` first to skip them cheaply), bytes that are
  not SIP at all, and every malformed *response* (§18.1.2: responses are never answered). An
  unknown method parses fine; answering 501 is the UAS's job. :func:`reply_to_malformed` turns a
  400/505/513 into the bytes of a stateless answer when enough of the request is readable.
* Headers are an ordered, case-insensitive multi-map (:class:`~.headers.Headers`), kept as
  received: parsing unfolds continuation lines (§7.3.1) and expands compact names (``v`` →
  ``Via``, §7.3.3); reading a known list header (Via, Contact, Route, Allow...) splits its
  comma lists outside quotes and ``<>``. Unknown headers and the authentication headers
  (§7.3.1 exception) are never split.
* ``bytes(msg)`` writes each field on one line and a Content-Length equal to the body's
  length, so parse → bytes → parse round-trips to an equal message.
* :func:`response_to` builds a response per §8.2.6; :func:`build_request` a request per §8.1.1.

Header names and values (Via, name-addr, CSeq) are handled by :mod:`.headers`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from typing import Final, TypeAlias

from services.errors import SipError, UserError
from services.telephony.sip.headers import (
    LIST_HEADERS,
    CSeq,
    Headers,
    NameAddr,
    Via,
    canonical_name,
    is_token,
    is_uri,
    new_branch,
    new_tag,
    split_comma_list,
)

__all__ = [
    "MAX_MESSAGE_BYTES",
    "REASON_PHRASES",
    "Address",
    "SipMessage",
    "SipRequest",
    "SipResponse",
    "build_request",
    "is_keepalive",
    "parse",
    "reason_phrase",
    "reply_to_malformed",
    "response_destination",
    "response_to",
    "stamp_via",
]

#: Largest datagram we parse; larger ones earn 513 (the issue's limit; RFC 3261 §18.1.1 keeps
#: UDP requests under 1300 bytes unless they cannot be, so real ones are far below it).
MAX_MESSAGE_BYTES: Final = 16 * 1024

#: (host, port) of a peer, as a UDP socket reports it.
Address: TypeAlias = tuple[str, int]

_SINGLE: Final = ("From", "To", "Call-ID", "CSeq", "Max-Forwards", "Content-Length", "Content-Type")
_REQUIRED: Final = ("Via", "From", "To", "Call-ID", "CSeq")
_DIALOG_METHODS: Final = frozenset(("INVITE", "SUBSCRIBE", "REFER"))

_STATUS_LINE = re.compile(r"SIP/2\.0 ([1-6]\d\d)(?: (.*))?\Z", re.I | re.A)
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_LINE_END = re.compile(rb"\r?\n")
_DIGITS = re.compile(r"[0-9]+\Z", re.A)

REASON_PHRASES: Final = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 301: "Moved Permanently",
    302: "Moved Temporarily", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 407: "Proxy Authentication Required",
    408: "Request Timeout", 410: "Gone", 413: "Request Entity Too Large",
    415: "Unsupported Media Type", 416: "Unsupported URI Scheme", 420: "Bad Extension",
    421: "Extension Required", 422: "Session Interval Too Small", 423: "Interval Too Brief",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist", 482: "Loop Detected",
    483: "Too Many Hops", 484: "Address Incomplete", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 489: "Bad Event", 491: "Request Pending",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 600: "Busy Everywhere", 603: "Decline",
    604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}  # fmt: skip


def reason_phrase(status: int) -> str:
    """The RFC's reason phrase for ``status``, or a generic one for its class."""
    return REASON_PHRASES.get(status) or REASON_PHRASES.get(status // 100 * 100, "Unknown")


class _Fields:
    """Typed views of the headers every SIP message carries (parsed on each access)."""

    headers: Headers

    def _one(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise SipError(f"missing {name} header", status=400, field=name)
        return value

    @property
    def call_id(self) -> str:
        return self._one("Call-ID")

    @property
    def cseq(self) -> CSeq:
        return CSeq.parse(self._one("CSeq"))

    @property
    def via(self) -> Via:
        """The top Via: the one this hop added (§18.2.1, §18.1.2)."""
        return Via.parse(self._one("Via"))

    @property
    def from_(self) -> NameAddr:
        return NameAddr.parse(self._one("From"), "From")

    @property
    def to(self) -> NameAddr:
        return NameAddr.parse(self._one("To"), "To")

    @property
    def contacts(self) -> list[NameAddr]:
        """Contact values other than ``*``, in order."""
        return [NameAddr.parse(c, "Contact") for c in self.headers.get_all("Contact") if c != "*"]


def _serialize(start_line: str, headers: Headers, body: bytes) -> bytes:
    lines = [start_line]
    wrote_length = False
    for name, value in headers:
        if "\r" in value or "\n" in value or not is_token(name):  # no header injection
            raise UserError(f"header {name[:40]!r} cannot be written on one line")
        if name == "Content-Length":  # always the real length, once (§18.3, §20.14)
            if wrote_length:
                continue
            value, wrote_length = str(len(body)), True
        lines.append(f"{name}: {value}" if value else f"{name}:")
    if not wrote_length:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8") + body


@dataclasses.dataclass(eq=True)
class SipRequest(_Fields):
    method: str
    uri: str
    headers: Headers = dataclasses.field(default_factory=Headers)
    body: bytes = b""

    def __bytes__(self) -> bytes:
        return _serialize(f"{self.method} {self.uri} SIP/2.0", self.headers, self.body)


@dataclasses.dataclass(eq=True)
class SipResponse(_Fields):
    status: int
    reason: str = ""
    headers: Headers = dataclasses.field(default_factory=Headers)
    body: bytes = b""

    def __bytes__(self) -> bytes:
        return _serialize(f"SIP/2.0 {self.status} {self.reason}", self.headers, self.body)


SipMessage: TypeAlias = SipRequest | SipResponse


def is_keepalive(data: bytes) -> bool:
    """True for a keep-alive: CRLFs (RFC 5626 §4.4.1) or other blank filler, never a message."""
    return len(data) <= 16 and not data.strip(b" \t\r\n\x00")


def parse(data: bytes) -> SipMessage:
    """Parse one UDP datagram; see the module docstring for the errors and their ``status``."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise SipError(f"message of {len(data)} bytes is over {MAX_MESSAGE_BYTES}", status=513)
    if is_keepalive(data):
        raise SipError("keep-alive", status=0)
    data = data.lstrip(b"\r\n")  # §7.5: CRLFs before the start line are ignored
    blank = _BLANK_LINE.search(data)
    head, body = (data[: blank.start()], data[blank.end() :]) if blank else (data, b"")
    lines = _LINE_END.split(head)
    start = lines[0].decode("utf-8", "replace")
    if start[:4].upper() == "SIP/":
        try:
            return _parse_response(start, lines[1:], body)
        except SipError as exc:  # §18.1.2: a malformed response is dropped, never answered
            raise SipError(str(exc), status=0, field=exc.field) from None
    if " SIP/" not in start.upper():
        raise SipError("not a SIP message", status=0)
    method, uri = _parse_request_line(start)
    headers = _parse_headers(lines[1:])
    _check(headers, method)
    return SipRequest(method, uri, headers, _body(headers, body))


def _parse_request_line(line: str) -> tuple[str, str]:
    parts = line.split(" ")  # exactly single SPs (RFC 4475 §3.1.2.8-§3.1.2.10)
    if len(parts) != 3 or not is_token(parts[0]) or not is_uri(parts[1]):
        raise SipError("malformed request line", status=400, field="request-line")
    version = parts[2].upper()
    if version != "SIP/2.0":
        status = 505 if re.fullmatch(r"SIP/[0-9]+\.[0-9]+", version) else 400
        raise SipError(f"unsupported SIP version {parts[2][:20]!r}", status=status)
    return parts[0], parts[1]


def _parse_response(line: str, lines: list[bytes], body: bytes) -> SipResponse:
    m = _STATUS_LINE.match(line)
    if m is None:
        raise SipError("malformed status line", status=0)
    headers = _parse_headers(lines)
    _check(headers, None)
    return SipResponse(int(m.group(1)), m.group(2) or "", headers, _body(headers, body))


def _parse_headers(lines: list[bytes]) -> Headers:
    fields: list[list[str]] = []
    for raw in lines:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SipError("header section is not UTF-8", status=400) from None
        if not line:
            continue
        if "\r" in line:  # a bare CR ends a line for some parsers: refuse, never pass it on
            raise SipError("stray CR in the header section", status=400)
        if line[0] in " \t":  # folded continuation (§7.3.1): one SP replaces the line break
            if not fields:
                raise SipError("continuation line before the first header", status=400)
            fields[-1][1] = f"{fields[-1][1]} {line.strip()}".strip()
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not is_token(name):
            raise SipError("malformed header line", status=400)
        fields.append([name, value.strip()])
    return Headers((name, value) for name, value in fields)


def _check(headers: Headers, method: str | None) -> None:
    """The checks every request must pass before a transaction sees it (§8.2, RFC 4475 §3.1.2)."""
    for name in _REQUIRED:
        if name not in headers:
            raise SipError(f"missing {name} header", status=400, field=name)
    for name in _SINGLE:
        if headers.count(name) > 1:  # RFC 4475 §3.3.8, §3.3.9
            raise SipError(f"more than one {name} header", status=400, field=name)
    for name in {name for name, _ in headers if name.lower() in LIST_HEADERS}:
        headers.get_all(name)  # raises on an unterminated quote in any list
    for value in headers.get_all("Via"):
        Via.parse(value)
    NameAddr.parse(headers["From"], "From")
    NameAddr.parse(headers["To"], "To")
    call_id = headers["Call-ID"]
    if not call_id or any(c.isspace() for c in call_id):
        raise SipError("malformed Call-ID", status=400, field="Call-ID")
    cseq = CSeq.parse(headers["CSeq"])
    if method is None:
        return
    if cseq.method != method:  # §8.2 / RFC 4475 §3.1.2.17
        raise SipError(f"CSeq method {cseq.method!r} is not {method!r}", status=400, field="CSeq")
    for contact in headers.get_all("Contact"):
        if contact != "*":
            NameAddr.parse(contact, "Contact")
    max_forwards = headers.get("Max-Forwards")
    if max_forwards is not None and not (_DIGITS.match(max_forwards) and int(max_forwards) < 256):
        raise SipError("malformed Max-Forwards", status=400, field="Max-Forwards")


def _body(headers: Headers, body: bytes) -> bytes:
    length = headers.get("Content-Length")
    if length is None:  # §18.3: over UDP the body runs to the end of the datagram
        return body
    if not _DIGITS.match(length):
        raise SipError("malformed Content-Length", status=400, field="Content-Length")
    if int(length) > len(body):
        raise SipError("Content-Length is larger than the body", status=400, field="Content-Length")
    return body[: int(length)]  # §18.3: extra octets in a datagram are discarded


def stamp_via(via: Via, source: Address) -> Via:
    """Add ``received`` (§18.2.1) and fill ``rport`` (RFC 3581 §4) from the packet's source.

    A ``received`` the client wrote itself is dropped: only we may set it, or a forged one
    would send our responses to a third party.
    """
    host, port = source
    params = {k: v for k, v in via.params.items() if k != "received"}
    if via.wants_rport:
        params.update(rport=str(port), received=host)
    elif via.host.strip("[]").lower() != host.lower():
        params["received"] = host
    return dataclasses.replace(via, params=params)


def response_destination(via: Via) -> Address:
    """Where a response to a request with this (stamped) top Via goes (§18.2.2, RFC 3581 §4)."""
    host = via.received or via.host.strip("[]")
    return host, via.rport or via.port or 5060


def response_to(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
    source: Address | None = None,
) -> SipResponse:
    """A response to ``request`` per §8.2.6: Via (all, in order), From, To, Call-ID, CSeq copied.

    A To without a tag gets ``to_tag`` (a fresh one if None) on anything but 100 (§8.2.6.2):
    pass the same ``to_tag`` to every response of one dialog. Record-Route is copied into
    dialog-creating 1xx/2xx (§12.1.1). With ``source`` the top Via is stamped (:func:`stamp_via`).
    """
    vias = request.headers.get_all("Via")
    if source is not None and vias:
        vias[0] = str(stamp_via(Via.parse(vias[0]), source))
    out = Headers(("Via", via) for via in vias)
    if 100 < status < 300 and request.method in _DIALOG_METHODS:
        for route in request.headers.get_all("Record-Route"):
            out.add("Record-Route", route)
    out.add("From", request.headers["From"])
    to = request.headers["To"]
    if status > 100 and NameAddr.parse(to, "To").tag is None:
        to = f"{to};tag={to_tag or new_tag()}"
    out.add("To", to)
    out.add("Call-ID", request.headers["Call-ID"])
    out.add("CSeq", request.headers["CSeq"])
    timestamp = request.headers.get("Timestamp")
    if status == 100 and timestamp is not None:  # §8.2.6.1
        out.add("Timestamp", timestamp)
    for name, value in headers:
        out.add(name, value)
    if content_type is not None:
        out.set("Content-Type", content_type)
    return SipResponse(status, reason or reason_phrase(status), out, body)


def build_request(
    method: str,
    uri: str,
    *,
    from_: NameAddr | str,
    to: NameAddr | str,
    call_id: str,
    cseq: int,
    sent_by: Address,
    branch: str | None = None,
    contact: str | None = None,
    route: Sequence[str] = (),
    max_forwards: int = 70,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> SipRequest:
    """A request per §8.1.1: a UDP Via from ``sent_by`` with a fresh branch and ``rport``
    (RFC 3581 §3), Max-Forwards, Route set, From, To, Call-ID, CSeq, Contact, then ``headers``."""
    host, port = sent_by
    via = Via("UDP", host, port, {"branch": branch or new_branch(), "rport": None})
    out = Headers([("Via", str(via)), ("Max-Forwards", str(max_forwards))])
    for value in route:
        out.add("Route", value)
    out.add("From", str(from_))
    out.add("To", str(to))
    out.add("Call-ID", call_id)
    out.add("CSeq", f"{cseq} {method}")
    if contact is not None:
        out.add("Contact", contact)
    for name, value in headers:
        out.add(name, value)
    if content_type is not None:
        out.set("Content-Type", content_type)
    return SipRequest(method, uri, out, body)


def reply_to_malformed(
    data: bytes, error: SipError, source: Address
) -> tuple[bytes, Address] | None:
    """A stateless answer to a request :func:`parse` refused, with the error in a ``Warning``
    (§20.43, code 399); None when there is none to send (status 0, ACK, or no usable Via)."""
    if error.status < 300:
        return None
    head = _BLANK_LINE.split(data[:MAX_MESSAGE_BYTES].lstrip(b"\r\n"), maxsplit=1)[0]
    lines = [line.decode("utf-8", "replace") for line in _LINE_END.split(head)]
    if lines[0].split(" ", 1)[0].upper() in ("ACK", "") or lines[0][:4].upper() == "SIP/":
        return None
    unfolded: list[str] = []
    for line in lines[1:]:
        if unfolded and line[:1] in (" ", "\t"):
            unfolded[-1] += " " + line.strip()
        else:
            unfolded.append(line)
    wanted: dict[str, list[str]] = {name.lower(): [] for name in _REQUIRED}
    try:
        for line in unfolded:
            if "\r" in line:
                continue  # never echo a stray CR back (header injection)
            name, _, value = line.partition(":")
            key = canonical_name(name.strip()).lower()
            if key in wanted:
                wanted[key].extend(split_comma_list(value) if key == "via" else [value.strip()])
        top = stamp_via(Via.parse(wanted["via"][0]), source)
    except (SipError, IndexError):
        return None
    out = Headers([("Via", str(top)), *(("Via", v) for v in wanted["via"][1:])])
    for name in _REQUIRED[1:]:
        for value in wanted[name.lower()][:1]:
            tagless = name == "To" and ";tag=" not in value.replace(" ", "")
            out.add(name, f"{value};tag={new_tag()}" if tagless else value)
    warning = str(error).replace("\\", "").replace('"', "'")
    out.add("Warning", f'399 callray "{warning}"')
    response = SipResponse(error.status, reason_phrase(error.status), out)
    return bytes(response), response_destination(top)
