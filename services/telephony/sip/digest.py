"""SIP digest authentication (RFC 3261 §22, RFC 2617, RFC 7616, RFC 8760), sans-I/O.

Both sides, no clock and no sockets (``now`` is passed in, randomness is injectable):

* Server: :class:`DigestAuthority` challenges a trunk (407 + ``Proxy-Authenticate``, or 401 +
  ``WWW-Authenticate``; the caller picks the pair) and checks the ``Authorization`` /
  ``Proxy-Authorization`` it sends back, returning a :class:`Verdict`: ``ok``; ``stale`` (the
  response was right but the nonce expired: re-challenge with ``stale=true`` so the peer retries
  without asking anyone for a password, RFC 7616 §3.3); or ``bad`` with a short reason for logs.
* Client: :func:`answer` computes the ``Authorization`` value for a challenge from a registrar
  (REGISTER to a PBX), and :func:`choose_challenge` picks which of several challenges to answer.

Algorithms: MD5 and SHA-256 (RFC 8760), each with its ``-sess`` variant (RFC 7616 §3.4.2, cheap:
only HA1 differs). qop ``auth`` only; ``auth-int`` is refused (it hashes the body, which no
trunk we know asks for). As a client we also answer an RFC 2069 challenge without ``qop``.
SHA-512-256 and ``userhash`` are not supported; a challenge that needs them is refused with
:class:`~services.errors.SipError` (``status=0``: there is no response to send).

Nonces are stateless: ``base64url(issued-ms || 8 random bytes || HMAC-SHA256(secret, realm,
issued-ms, random)[:16])``. Any ingress replica holding the same secret verifies any other's
nonce and its age without shared state. Replay of a nonce count (``nc``, RFC 7616 §3.4) is
refused per replica: each keeps the highest ``nc`` seen per nonce in a bounded LRU table;
when a live entry is evicted, every untracked nonce issued up to then is answered ``stale``, so
eviction can cost a re-challenge but never lets a replay through. A replay sent to a different
replica within the nonce's lifetime is not caught; keep ``nonce_ttl_s`` short or route a trunk
to one replica. UDP retransmissions of one request carry the same ``nc``; the transaction layer
absorbs them before they reach :meth:`DigestAuthority.verify`.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import hashlib
import hmac
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Final, Literal

from services.errors import ConfigError, SipError

__all__ = [
    "ALGORITHMS",
    "DigestAuthority",
    "Verdict",
    "answer",
    "choose_challenge",
    "compute_response",
    "parse_auth_params",
]

#: Canonical names; a peer's spelling is matched case-insensitively (RFC 7616 §3.3).
ALGORITHMS: Final = ("SHA-256", "SHA-256-sess", "MD5", "MD5-sess")
_HASHLIB_NAMES: Final = {"MD5": "md5", "SHA-256": "sha256"}
_CANONICAL: Final = {name.upper(): name for name in ALGORITHMS}
_MAX_HEADER: Final = 4096
_NC = re.compile(r"[0-9a-fA-F]{8}\Z")
_TOKEN_CHARS: Final = r"!#$%&'*+\-.^_`|~0-9A-Za-z"
_PARAM = re.compile(
    rf'[\s,]*([{_TOKEN_CHARS}]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*(?:,|\Z)', re.S
)
_SCHEME = re.compile(rf"\s*([{_TOKEN_CHARS}]+)(?:\s+|\Z)")


def parse_auth_params(value: str) -> tuple[str, dict[str, str]]:
    """Split a challenge or credentials value into its scheme and parameters.

    Parameter names are lower-cased (RFC 3261 §25.1: case-insensitive); values are unquoted
    with ``\\x`` escapes resolved; any order, commas inside quotes, and LWS around ``=`` and
    commas are accepted. Raises ``ValueError`` on anything else or a repeated parameter.
    """
    if len(value) > _MAX_HEADER:
        raise ValueError("header too long")
    scheme = _SCHEME.match(value)
    if scheme is None:
        raise ValueError("no auth scheme")
    params: dict[str, str] = {}
    pos = scheme.end()
    while value[pos:].strip(" \t\r\n,"):
        match = _PARAM.match(value, pos)
        if match is None:
            raise ValueError("malformed auth parameter")
        name, quoted, token = match.group(1).lower(), match.group(2), match.group(3)
        if name in params:
            raise ValueError("repeated auth parameter")
        params[name] = re.sub(r"\\(.)", r"\1", quoted, flags=re.S) if quoted is not None else token
        pos = match.end()
    return scheme.group(1), params


def _algorithm(name: str | None) -> str | None:
    """The canonical algorithm name; an absent one means MD5 (RFC 2617 §3.2.1)."""
    return _CANONICAL.get((name or "MD5").upper())


def _hash(algorithm: str, text: str) -> str:
    name = _HASHLIB_NAMES[algorithm.removesuffix("-sess")]
    return hashlib.new(name, text.encode("utf-8")).hexdigest()


def compute_response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """The ``response`` value (RFC 7616 §3.4.1; RFC 2069 form when ``qop`` is None).

    ``algorithm`` is one of :data:`ALGORITHMS`; ``nc`` is the 8-hex-digit string as sent.
    """
    canonical = _algorithm(algorithm)
    if canonical is None:
        raise ValueError(f"unsupported digest algorithm {algorithm[:20]!r}")
    ha1 = _hash(canonical, f"{username}:{realm}:{password}")
    if canonical.endswith("-sess"):
        if cnonce is None:
            raise ValueError("a -sess algorithm needs a cnonce")
        ha1 = _hash(canonical, f"{ha1}:{nonce}:{cnonce}")  # RFC 7616 §3.4.2
    ha2 = _hash(canonical, f"{method}:{uri}")  # qop=auth (RFC 7616 §3.4.3)
    if qop is None:
        return _hash(canonical, f"{ha1}:{nonce}:{ha2}")  # RFC 2069 §2.1.2
    return _hash(canonical, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---------------------------------------------------------------------------------- server


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of :meth:`DigestAuthority.verify`. ``reason`` is a fixed phrase for logs
    (never the credentials); ``username`` is set when the response was right."""

    kind: Literal["ok", "stale", "bad"]
    reason: str = ""
    username: str | None = None

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


_REQUIRED: Final = ("username", "realm", "nonce", "uri", "response")
_NONCE_BYTES: Final = 32  # 8 issued-ms + 8 random + 16 MAC


class DigestAuthority:
    """Challenges and checks digest credentials for one realm (see the module docstring).

    ``credentials`` maps a username to its password, or is a function returning the password
    or None. ``algorithms`` are offered in order, one challenge header each (RFC 8760 §2: the
    most preferred on top, so SHA-256 first and a capable peer never falls back to MD5).
    ``max_clock_skew_s`` tolerates replicas whose clocks run a little apart.
    """

    __slots__ = (
        "_algorithms",
        "_evicted_mark",
        "_lookup",
        "_max_nonces",
        "_random",
        "_realm",
        "_secret",
        "_seen",
        "_skew",
        "_ttl",
    )

    def __init__(
        self,
        realm: str,
        secret: bytes | str,
        credentials: Mapping[str, str] | Callable[[str], str | None],
        *,
        nonce_ttl_s: float = 300.0,
        algorithms: Sequence[str] = ("SHA-256", "MD5"),
        max_nonces: int = 10_000,
        max_clock_skew_s: float = 30.0,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        key = secret.encode("utf-8") if isinstance(secret, str) else secret
        if len(key) < 16:
            raise ConfigError("the digest nonce secret must be at least 16 bytes")
        canonical = [_algorithm(a) for a in algorithms]
        if not canonical or any(a is None for a in canonical):
            raise ConfigError(f"digest algorithms must be some of {ALGORITHMS}")
        if '"' in realm or "\\" in realm or not realm:
            raise ConfigError("the digest realm must be non-empty, without quotes")
        if nonce_ttl_s <= 0 or max_nonces < 1:
            raise ConfigError("nonce_ttl_s and max_nonces must be positive")
        self._realm = realm
        self._secret = key
        self._lookup: Callable[[str], str | None] = (
            credentials.get if isinstance(credentials, Mapping) else credentials
        )
        self._ttl = nonce_ttl_s
        self._algorithms = tuple(a for a in canonical if a is not None)
        self._max_nonces = max_nonces
        self._skew = max_clock_skew_s
        self._random = random_bytes
        self._seen: collections.OrderedDict[str, tuple[int, int]] = collections.OrderedDict()
        self._evicted_mark = -1  # issued-ms of the newest live nonce evicted from _seen

    @property
    def realm(self) -> str:
        return self._realm

    def challenge(self, now: float, *, stale: bool = False) -> list[str]:
        """Header values for a 401 ``WWW-Authenticate`` or 407 ``Proxy-Authenticate``,
        one per algorithm in preference order, all with one fresh nonce."""
        nonce = self._nonce(now)
        suffix = ", stale=true" if stale else ""
        return [
            f'Digest realm={_quote(self._realm)}, nonce="{nonce}", algorithm={a}, qop="auth"'
            + suffix
            for a in self._algorithms
        ]

    def verify(
        self, method: str, authorization: str, now: float, *, request_uri: str | None = None
    ) -> Verdict:
        """Check one ``Authorization``/``Proxy-Authorization`` value for a request with
        ``method``. With ``request_uri`` the ``uri`` parameter must equal it (RFC 7616
        §3.4.6 asks servers to check; a proxy rewriting the Request-URI breaks that)."""
        try:
            scheme, params = parse_auth_params(authorization)
        except ValueError:
            return Verdict("bad", "malformed credentials")
        if scheme.lower() != "digest":
            return Verdict("bad", "not Digest credentials")
        if any(name not in params for name in _REQUIRED):
            return Verdict("bad", "missing digest parameter")
        if params["realm"] != self._realm:
            return Verdict("bad", "wrong realm")
        algorithm = _algorithm(params.get("algorithm"))
        if algorithm not in self._algorithms:
            return Verdict("bad", "algorithm not offered")
        qop, nc, cnonce = params.get("qop"), params.get("nc", ""), params.get("cnonce")
        if qop is None or qop.lower() != "auth":
            return Verdict("bad", "qop=auth required")  # we always offer it (RFC 7616 §3.4)
        if not _NC.match(nc) or not cnonce:
            return Verdict("bad", "bad nc or cnonce")
        if request_uri is not None and params["uri"] != request_uri:
            return Verdict("bad", "uri does not match the request")
        issued_ms = self._issued_ms(params["nonce"])
        if issued_ms is None:
            return Verdict("bad", "nonce not ours")
        if issued_ms > (now + self._skew) * 1000:
            return Verdict("bad", "nonce from the future")
        password = self._lookup(params["username"])
        expected = compute_response(
            algorithm=algorithm,
            username=params["username"],
            realm=self._realm,
            password="" if password is None else password,
            nonce=params["nonce"],
            method=method,
            uri=params["uri"],
            qop="auth",
            nc=nc,
            cnonce=cnonce,
        )
        right = hmac.compare_digest(expected.encode(), params["response"].lower().encode())
        if password is None or not right:
            return Verdict("bad", "unknown user" if password is None else "wrong response")
        # Only now, with the response right: a forged request must not touch the nc table.
        return self._freshness(params["nonce"], issued_ms, int(nc, 16), now, params["username"])

    def _freshness(self, nonce: str, issued_ms: int, count: int, now: float, user: str) -> Verdict:
        if now * 1000 - issued_ms > self._ttl * 1000:
            return Verdict("stale", "nonce expired", user)
        entry = self._seen.get(nonce)
        if entry is None and issued_ms <= self._evicted_mark:
            return Verdict("stale", "nonce no longer tracked", user)
        if entry is not None and count <= entry[0]:
            return Verdict("bad", "nonce count replayed")
        self._seen[nonce] = (count, issued_ms)
        self._seen.move_to_end(nonce)
        self._forget(now)
        return Verdict("ok", "", user)

    def _forget(self, now: float) -> None:
        """Keep the nc table within ``max_nonces``, dropping the least recently used entry;
        dropping a live one raises the mark below which untracked nonces are stale."""
        while len(self._seen) > self._max_nonces:
            _, (_, issued_ms) = self._seen.popitem(last=False)
            if now * 1000 - issued_ms <= self._ttl * 1000:
                self._evicted_mark = max(self._evicted_mark, issued_ms)

    def _mac(self, body: bytes) -> bytes:
        message = b"callray-sip-digest\x00" + self._realm.encode("utf-8") + b"\x00" + body
        return hmac.new(self._secret, message, hashlib.sha256).digest()[:16]

    def _nonce(self, now: float) -> str:
        body = int(now * 1000).to_bytes(8, "big") + self._random(8)
        return base64.urlsafe_b64encode(body + self._mac(body)).decode("ascii").rstrip("=")

    def _issued_ms(self, nonce: str) -> int | None:
        """When we issued ``nonce`` (ms), or None if we did not issue it."""
        if len(nonce) != 43:  # 32 bytes in unpadded base64url
            return None
        try:
            raw = base64.urlsafe_b64decode(nonce + "=")
        except ValueError:
            return None
        if len(raw) != _NONCE_BYTES or not hmac.compare_digest(raw[16:], self._mac(raw[:16])):
            return None
        if base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=") != nonce:
            return None  # one nonce, one spelling: the nc table is keyed by the text
        return int.from_bytes(raw[:8], "big")


# ---------------------------------------------------------------------------------- client


def choose_challenge(values: Sequence[str]) -> str:
    """The challenge to answer among several (one header each): the first Digest one with an
    algorithm we support (RFC 8760 §2: a UAC uses the topmost one it supports). Raises
    :class:`SipError`."""
    for value in values:
        try:
            scheme, params = parse_auth_params(value)
        except ValueError:
            continue
        if scheme.lower() == "digest" and _algorithm(params.get("algorithm")) is not None:
            return value
    raise SipError("no digest challenge with a supported algorithm", status=0)


def answer(
    challenge: str,
    method: str,
    uri: str,
    username: str,
    password: str,
    cnonce: str,
    nc: int,
) -> str:
    """The ``Authorization`` (for a 401) or ``Proxy-Authorization`` (for a 407) value that
    answers ``challenge``. ``cnonce`` is fresh randomness from the caller; ``nc`` counts the
    requests sent with this nonce, from 1. Raises :class:`SipError` (``status=0``) for a
    challenge we cannot answer."""
    try:
        scheme, params = parse_auth_params(challenge)
    except ValueError as exc:
        raise SipError(f"malformed digest challenge: {exc}", status=0) from exc
    if scheme.lower() != "digest":
        raise SipError("not a Digest challenge", status=0)
    if "realm" not in params or "nonce" not in params:
        raise SipError("digest challenge without realm or nonce", status=0)
    algorithm = _algorithm(params.get("algorithm"))
    if algorithm is None:
        raise SipError("unsupported digest algorithm", status=0)
    offered = params.get("qop")
    qops = [q.strip().lower() for q in offered.split(",")] if offered is not None else []
    if offered is not None and "auth" not in qops:
        raise SipError("the challenge offers only qop=auth-int", status=0)
    if offered is None and algorithm.endswith("-sess"):
        raise SipError("a -sess challenge without qop", status=0)
    if not 0 < nc < 2**32 or '"' in cnonce or "\\" in cnonce:
        raise SipError("nc must be 1..2^32-1 and cnonce unquoted", status=0)
    realm, nonce, nc_text = params["realm"], params["nonce"], f"{nc:08x}"
    qop = "auth" if offered is not None else None
    response = compute_response(
        algorithm=algorithm,
        username=username,
        realm=realm,
        password=password,
        nonce=nonce,
        method=method,
        uri=uri,
        qop=qop,
        nc=nc_text if qop else None,
        cnonce=cnonce if qop else None,
    )
    parts = [
        f"username={_quote(username)}",
        f"realm={_quote(realm)}",
        f"nonce={_quote(nonce)}",
        f"uri={_quote(uri)}",
        f'response="{response}"',
        f"algorithm={algorithm}",
    ]
    if qop is not None:
        parts += [f"cnonce={_quote(cnonce)}", f"qop={qop}", f"nc={nc_text}"]
    if "opaque" in params:
        parts.append(f"opaque={_quote(params['opaque'])}")  # returned unchanged (RFC 7616 §3.4)
    return "Digest " + ", ".join(parts)
