"""SIP header fields (RFC 3261 §7.3, §20, §25): the ordered :class:`Headers` collection and the
values every layer reads: :class:`Via`, :class:`NameAddr` (From/To/Contact/Route...), :class:`CSeq`.

Names: compact forms are expanded (``v`` → ``Via``, §7.3.3 and later RFCs) and known names are
spelled as the RFC spells them; lookups are case-insensitive. Values: each ``parse`` raises
:class:`~services.errors.SipError` with ``status=400`` and a message that names the header,
never echoing the value (it may hold a phone number).

Parsing is lenient where RFC 4475 §3.1.1 asks for it (LWS around ``/``, ``;``, ``=`` and ``:``,
quoted display names with escapes, unknown URI schemes in name-addr) and strict where §3.1.2
asks for a 400 (empty parameters, whitespace inside a URI, an unquoted display name with
non-token characters, a bare addr-spec holding ``?`` or ``,``, a CSeq of 2**31 or more).
Rendering (``str()``) is canonical: single spaces, lowercase parameter names, ``<>`` always.
SIP URIs (for routing) are parsed in :mod:`.dialog`.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from collections.abc import Iterable, Iterator
from typing import Final

from services.errors import SipError

__all__ = [
    "LIST_HEADERS",
    "MAGIC_COOKIE",
    "MAX_CSEQ",
    "CSeq",
    "Headers",
    "NameAddr",
    "Via",
    "canonical_name",
    "is_token",
    "is_uri",
    "new_branch",
    "new_call_id",
    "new_tag",
    "parse_params",
    "render_params",
    "split_comma_list",
    "split_hostport",
]

#: RFC 3261 §8.1.1.7: branches starting with it are unique per transaction (RFC 3261 peers).
MAGIC_COOKIE: Final = "z9hG4bK"
#: RFC 3261 §8.1.1.5: CSeq sequence numbers are 32-bit unsigned but MUST be below 2**31.
MAX_CSEQ: Final = 2**31 - 1

_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z", re.A)
_DISPLAY_WORDS = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+(?:[ \t]+[A-Za-z0-9\-.!%*_+`'~]+)*\Z", re.A)
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*:[^\s<>\"]+\Z", re.A)
_VIA = re.compile(
    r"\s*([^\s/]+)\s*/\s*([^\s/]+)\s*/\s*([^\s;/]+)\s+([^;]+?)\s*(;.*)?\Z", re.S | re.A
)
_CSEQ = re.compile(r"\s*(\d{1,10})\s+(\S+)\s*\Z", re.A)
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)\Z", re.A)
_PORT = re.compile(r"\d{1,5}\Z", re.A)

Params = dict[str, str | None]

# RFC 3261 §7.3.3 plus the compact forms later RFCs registered (3515 r, 3892 b, 4028 x, 6665 o/u,
# 3841 a/j/d, 4474 y/n).
_COMPACT: Final = {
    "a": "Accept-Contact", "b": "Referred-By", "c": "Content-Type", "d": "Request-Disposition",
    "e": "Content-Encoding", "f": "From", "i": "Call-ID", "j": "Reject-Contact", "k": "Supported",
    "l": "Content-Length", "m": "Contact", "n": "Identity-Info", "o": "Event", "r": "Refer-To",
    "s": "Subject", "t": "To", "u": "Allow-Events", "v": "Via", "x": "Session-Expires",
    "y": "Identity",
}  # fmt: skip
_SPELLING: Final = {
    name.lower(): name
    for name in (
        *_COMPACT.values(), "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow",
        "Authentication-Info", "Authorization", "Call-Info", "Content-Disposition",
        "Content-Language", "CSeq", "Date", "Error-Info", "Expires", "History-Info",
        "In-Reply-To", "Max-Forwards", "Min-Expires", "Min-SE", "MIME-Version", "Organization",
        "P-Asserted-Identity", "Path", "Priority", "Proxy-Authenticate", "Proxy-Authorization",
        "Proxy-Require", "RAck", "Reason", "Record-Route", "Replaces", "Reply-To", "Require",
        "Retry-After", "Route", "RSeq", "Server", "Service-Route", "Subscription-State",
        "Timestamp", "Unsupported", "User-Agent", "Warning", "WWW-Authenticate",
    )
}  # fmt: skip
#: Headers whose grammar is a comma list (§7.3.1); the auth headers are lists of *params*, not
#: of values, and are excluded by the same section.
LIST_HEADERS: Final = frozenset(
    ("via", "contact", "route", "record-route", "allow", "supported", "require", "proxy-require",
     "unsupported", "accept", "accept-encoding", "accept-language", "allow-events",
     "content-encoding", "content-language", "alert-info", "call-info", "error-info",
     "in-reply-to", "warning", "path", "service-route", "reason", "p-asserted-identity",
     "history-info")
)  # fmt: skip


def is_token(text: str) -> bool:
    """``text`` is a SIP token (§25.1): a method, a header or parameter name."""
    return _TOKEN.match(text) is not None


def is_uri(text: str) -> bool:
    """``text`` has a URI's outline (§19.1.1, any scheme): ``scheme:`` then no whitespace, quotes
    or ``<>``. Enough to refuse RFC 4475 §3.1.2.7/§3.1.2.8/§3.1.2.14; not a full URI check."""
    return _URI.match(text) is not None


def new_branch() -> str:
    """A fresh Via branch: the RFC 3261 magic cookie and 64 random bits (§8.1.1.7)."""
    return MAGIC_COOKIE + secrets.token_hex(8)


def new_tag() -> str:
    """A fresh From/To tag: 64 random bits in hex (§19.3 asks for at least 32)."""
    return secrets.token_hex(8)


def new_call_id(host: str) -> str:
    """A globally unique Call-ID (§8.1.1.4): 128 random bits ``@`` our host."""
    return f"{secrets.token_hex(16)}@{host}"


def _bad(header: str) -> SipError:
    # Names the header, never its value: From/To/URIs carry phone numbers, and this text ends up
    # in logs and in the Warning header of our 400.
    return SipError(f"malformed {header}", status=400, field=header)


def _scan(text: str, separator: str) -> list[str]:
    """Split ``text`` at ``separator`` outside quoted strings (with ``\\`` escapes) and ``<>``."""
    parts: list[str] = []
    start = 0
    in_quotes = in_angle = False
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if in_quotes:
            if c == "\\":
                i += 1
            elif c == '"':
                in_quotes = False
        elif c == '"':
            in_quotes = True
        elif c == "<":
            in_angle = True
        elif c == ">":
            in_angle = False
        elif c == separator and not in_angle:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if in_quotes:
        raise SipError("unterminated quoted string", status=400)
    parts.append(text[start:])
    return parts


def split_comma_list(value: str) -> list[str]:
    """Split a list header's value at commas that are not inside quotes or ``<>`` (§7.3.1).

    Empty elements are dropped, so ``Supported: a,,b`` gives ``["a", "b"]``.
    """
    return [part.strip() for part in _scan(value, ",") if part.strip()]


def parse_params(text: str, header: str = "parameter") -> Params:
    """Parse ``;name[=value]`` pairs (§25.1 generic-param) with LWS allowed around ``;`` and ``=``.

    Names are lowercased (they compare case-insensitively); values keep their case and quotes.
    An empty parameter (``;;``) or a non-token name is a 400 (RFC 4475 §3.1.2.1).
    """
    params: Params = {}
    text = text.strip()
    if not text:
        return params
    if not text.startswith(";"):
        raise _bad(header)
    for piece in _scan(text[1:], ";"):
        name, eq, value = piece.partition("=")
        name = name.strip()
        if not _TOKEN.match(name):
            raise _bad(header)
        value = value.strip()
        if eq and (not value or (value[0] != '"' and not _param_value_ok(value))):
            raise _bad(header)
        params[name.lower()] = value if eq else None
    return params


def _param_value_ok(value: str) -> bool:
    # token / host / IPv6 reference (§25.1 gen-value): no controls, spaces, quotes, separators.
    return not any(c <= " " or c == "\x7f" or c in '"<>,;' for c in value)


def render_params(params: Params) -> str:
    """The ``;name=value`` form of ``params`` (names as stored, values verbatim)."""
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def split_hostport(text: str, header: str) -> tuple[str, int | None]:
    """``host[:port]`` (IPv6 in brackets, LWS around ``:`` allowed); 400 naming ``header``."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[: end + 1], text[end + 1 :].strip()
    else:
        host, sep, rest = text.partition(":")
        host, rest = host.strip(), (":" + rest if sep else "")
    port: int | None = None
    if rest:
        digits = rest[1:].strip() if rest.startswith(":") else ""
        if not _PORT.match(digits) or not 0 < int(digits) < 65536:
            raise _bad(header)
        port = int(digits)
    if not host or not _HOST.match(host):
        raise _bad(header)
    return host, port


@dataclasses.dataclass(frozen=True, slots=True)
class Via:
    """One Via value (§20.42): ``SIP/2.0/<transport> <host>[:<port>];params``."""

    transport: str
    host: str
    port: int | None = None
    params: Params = dataclasses.field(default_factory=dict)

    @classmethod
    def parse(cls, value: str) -> Via:
        m = _VIA.match(value)
        if m is None:
            raise _bad("Via")
        protocol, version, transport, sent_by, rest = m.groups()
        # Any version token: a SIP/7.0 request still gets its 505 routed back (RFC 4475 §3.1.2.16).
        if protocol.upper() != "SIP" or not _TOKEN.match(version + transport):
            raise _bad("Via")
        host, port = split_hostport(sent_by, "Via")
        return cls(transport.upper(), host, port, parse_params(rest or "", "Via"))

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def sent_by(self) -> tuple[str, int | None]:
        """Host (lowercased: hosts compare case-insensitively) and port, for transaction keys."""
        return self.host.lower(), self.port

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        """The ``rport`` value a server filled in (RFC 3581 §4); None if absent or empty."""
        value = self.params.get("rport")
        return int(value) if value is not None and value.isdigit() else None

    @property
    def wants_rport(self) -> bool:
        """The client asked for symmetric response routing (RFC 3581 §3: ``rport`` present)."""
        return "rport" in self.params

    def with_params(self, **updates: str | None) -> Via:
        return dataclasses.replace(self, params={**self.params, **updates})

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"SIP/2.0/{self.transport} {self.host}{port}{render_params(self.params)}"


def _unquote(text: str) -> tuple[str, str]:
    """Read a quoted-string at the start of ``text``; returns (unescaped content, the rest)."""
    out: list[str] = []
    i = 1
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), text[i + 1 :]
        out.append(c)
        i += 1
    raise SipError("unterminated quoted string", status=400)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclasses.dataclass(frozen=True, slots=True)
class NameAddr:
    """A From / To / Contact / Route / Record-Route / Refer-To value (§20.10, §25.1).

    ``display`` is unquoted and unescaped (None when absent); ``uri`` is kept as text, any
    scheme; ``params`` are the header parameters (``tag``, ``expires``, ``q``...). For a bare
    addr-spec (no ``<>``), parameters after the URI are header parameters, per §20.10.
    """

    uri: str
    display: str | None = None
    params: Params = dataclasses.field(default_factory=dict)

    @classmethod
    def parse(cls, value: str, header: str = "name-addr") -> NameAddr:
        text = value.strip()
        display: str | None = None
        if text.startswith('"'):
            display, text = _unquote(text)
            text = text.lstrip()
            if not text.startswith("<"):
                raise _bad(header)
        angle, semicolon = text.find("<"), text.find(";")
        if angle >= 0 and (semicolon < 0 or angle < semicolon):
            before = text[:angle].strip()
            if before:
                if not _DISPLAY_WORDS.match(before):  # RFC 4475 §3.1.2.15
                    raise _bad(header)
                display = " ".join(before.split())
            uri, closed, rest = text[angle + 1 :].partition(">")
            if not closed:
                raise _bad(header)
        else:
            uri, sep, params = text.partition(";")
            uri, rest = uri.strip(), sep + params
            if "?" in uri or "," in uri:  # §20.10: such URIs need <> (RFC 4475 §3.1.2.13)
                raise _bad(header)
        if not _URI.match(uri):  # no LWS inside an addr-spec (RFC 4475 §3.1.2.14)
            raise _bad(header)
        return cls(uri, display, parse_params(rest, header))

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def with_tag(self, tag: str) -> NameAddr:
        return dataclasses.replace(self, params={**self.params, "tag": tag})

    def __str__(self) -> str:
        display = "" if self.display is None else _quote(self.display) + " "
        return f"{display}<{self.uri}>{render_params(self.params)}"


@dataclasses.dataclass(frozen=True, slots=True)
class CSeq:
    """``CSeq: <number> <method>`` (§20.16); number below 2**31 (RFC 4475 §3.1.2.4)."""

    number: int
    method: str

    @classmethod
    def parse(cls, value: str) -> CSeq:
        m = _CSEQ.match(value)
        if m is None or not _TOKEN.match(m.group(2)) or int(m.group(1)) > MAX_CSEQ:
            raise _bad("CSeq")
        return cls(int(m.group(1)), m.group(2))

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def canonical_name(name: str) -> str:
    """``name`` with a compact form expanded and a known header spelled as its RFC spells it."""
    key = name.lower()
    full = _COMPACT.get(key)
    if full is not None:
        return full
    return _SPELLING.get(key, name)


class Headers:
    """Ordered, case-insensitive header fields; repeats kept in order (§7.3.1).

    Fields are kept as received (one per header line, unfolded and stripped) and written back
    the same way. Names are stored canonically (:func:`canonical_name`); lookups take any
    spelling or the compact form. Reading a list header (:data:`LIST_HEADERS`: Via, Contact,
    Route, Allow...) splits its comma lists, so ``get_all("Via")`` is every Via value, top first,
    however they were spread over lines, and ``get("Via")`` is the top one.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str, str]] = []  # (lowercased canonical name, name, value)
        for name, value in items:
            self.add(name, value)

    @staticmethod
    def _key(name: str) -> str:
        return canonical_name(name).lower()

    def add(self, name: str, value: str) -> None:
        """Append one field, after any with the same name."""
        canon = canonical_name(name)
        self._items.append((canon.lower(), canon, value))

    def get(self, name: str) -> str | None:
        """The first value of ``name`` (of a list header: its first element), or None."""
        key = self._key(name)
        if key in LIST_HEADERS:
            values = self.get_all(name)
            return values[0] if values else None
        return next((v for k, _, v in self._items if k == key), None)

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name`` in order; list headers split at commas (SipError if a quote
        is unterminated: :func:`~.message.parse` has checked that for parsed messages)."""
        key = self._key(name)
        values = [v for k, _, v in self._items if k == key]
        if key in LIST_HEADERS:
            return [part for value in values for part in split_comma_list(value)]
        return values

    def count(self, name: str) -> int:
        """How many fields (header lines) named ``name`` there are."""
        key = self._key(name)
        return sum(1 for k, _, _ in self._items if k == key)

    def set(self, name: str, value: str) -> None:
        """Replace every ``name`` field with one, at the first one's position (else appended)."""
        key, canon = self._key(name), canonical_name(name)
        index = next((i for i, (k, _, _) in enumerate(self._items) if k == key), None)
        self.remove(name)
        self._items.insert(len(self._items) if index is None else index, (key, canon, value))

    def remove(self, name: str) -> int:
        """Drop every ``name`` field; returns how many there were."""
        key = self._key(name)
        before = len(self._items)
        self._items = [item for item in self._items if item[0] != key]
        return before - len(self._items)

    def copy(self) -> Headers:
        new = Headers()
        new._items = list(self._items)
        return new

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.count(name) > 0

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """(name, value) of every field, as stored."""
        return ((name, value) for _, name, value in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(k, v) for k, _, v in self._items] == [(k, v) for k, _, v in other._items]

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"
