"""Who may use the local model: the bearer of a request, the same check on every path.

When the server has an ``api_key``, a request must carry it, or an ephemeral ``ek_`` key minted
from it and not yet expired, as ``Authorization: Bearer <key>``; a browser's WebSocket, which
cannot set headers, may offer it as the subprotocol ``openai-insecure-api-key.<key>``
(reference/realtime-protocol.md, section 1). Without an ``api_key`` any bearer, or none, works.

An ephemeral key's expiry limits creating sessions with it; a session already started goes on.
The session config it was minted with applies to the sessions it starts, before the client's
own (section 7.1). Keys live in this process only: a test server's, not a credential store.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["MAX_EPHEMERAL_S", "MIN_EPHEMERAL_S", "Grant", "KeyRing", "bearer_candidates"]

SUBPROTOCOL_PREFIX: Final = "openai-insecure-api-key."
MIN_EPHEMERAL_S: Final = 10
MAX_EPHEMERAL_S: Final = 7200


@dataclass(frozen=True, slots=True)
class Grant:
    """What a request's key allows: a session, starting from ``session`` if the key was minted
    with one; ``root`` when it was the API key itself (or none is required)."""

    root: bool
    session: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class _Ephemeral:
    expires_at: float  # on the clock :meth:`KeyRing.mint` was given
    session: dict[str, Any] | None


def bearer_candidates(authorization: str, subprotocols: Iterable[str] = ()) -> list[str]:
    """The keys a request offers: its ``Authorization`` bearer, then any key subprotocol."""
    keys = []
    header = authorization.strip()
    if header[:7].lower() == "bearer ":
        keys.append(header[7:].strip())
    for header_value in subprotocols:
        for protocol in header_value.split(","):
            protocol = protocol.strip()
            if protocol.startswith(SUBPROTOCOL_PREFIX):
                keys.append(protocol.removeprefix(SUBPROTOCOL_PREFIX))
    return keys


class KeyRing:
    """The server's API key and the ephemeral keys minted from it."""

    def __init__(self, api_key: str) -> None:
        self._api_key = api_key
        self._ephemeral: dict[str, _Ephemeral] = {}

    def grant(self, candidates: Iterable[str], now: float) -> Grant | None:
        """What the first good key of ``candidates`` allows; ``None`` if none is good."""
        expected = self._api_key.encode()
        for key in candidates:
            minted = self._ephemeral.get(key)
            if minted is not None and now < minted.expires_at:
                return Grant(root=False, session=minted.session)
            if expected and hmac.compare_digest(key.encode(), expected):
                return Grant(root=True)
        return None if expected else Grant(root=True)

    def mint(self, seconds: int, now: float, session: dict[str, Any] | None = None) -> str:
        """A new ``ek_`` key valid for ``seconds`` from ``now``, for sessions starting from
        ``session``."""
        self._forget_expired(now)
        value = "ek_" + secrets.token_hex(16)
        self._ephemeral[value] = _Ephemeral(now + seconds, session)
        return value

    def _forget_expired(self, now: float) -> None:
        for key in [k for k, e in self._ephemeral.items() if e.expires_at <= now]:
            del self._ephemeral[key]
