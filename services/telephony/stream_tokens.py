"""Single-use tokens binding a Twilio media stream to the voice webhook that created it, sans-I/O.

The voice webhook (signed by Twilio, reference §1.6) issues a token for its ``CallSid`` and puts it
in the TwiML ``<Parameter>``; Twilio hands it back in ``start.customParameters`` on the WebSocket,
where we redeem it before bridging any audio. This is the defence in depth of reference §1.6: the
WebSocket handshake signature proves the socket comes from Twilio, the token proves it belongs to
a call we answered, once, recently.

Token layout (all URL-safe ASCII, well under the 500-character ``<Parameter>`` limit)::

    v1.<base64url(call sid)>.<expiry, unix ms>.<base64url(16-byte nonce)>.<base64url(HMAC-SHA256)>

The HMAC covers everything before the last dot. The call sid is carried in clear (it is no secret:
Twilio sends it to the same socket) so a token for another call is reported as such, not as a
forgery. Expiry uses wall-clock time because the webhook and the WebSocket may reach different
ingress processes sharing the secret.

Single use has two layers. Each :class:`StreamTokens` instance remembers the tokens it redeemed
(the fast path: no I/O, and a replay to the same ingress process never leaves it); that memory
holds only unexpired tokens, since an expired token is refused anyway. A replay that reaches
another ingress process passes this check, so :meth:`StreamTokens.redeem` returns the token's
nonce and expiry for the gateway to claim in a cluster-wide ledger
(:mod:`services.gateway.token_ledger`) before it opens the call.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import hmac
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from services.errors import ConfigError, StreamTokenError, UserError

__all__ = ["RedeemedToken", "StreamTokenError", "StreamTokenRejection", "StreamTokens"]

_VERSION: Final = "v1"
_NONCE_BYTES: Final = 16
_MIN_SECRET_BYTES: Final = 16

StreamTokenRejection = Literal["malformed", "forged", "wrong_call", "expired", "replayed"]


@dataclass(frozen=True, slots=True)
class RedeemedToken:
    """What a cluster-wide ledger needs to make a token single-use everywhere, after it verified.

    ``nonce`` identifies the token (it is covered by the HMAC, so it cannot be chosen by a forger);
    ``expires_ms`` is its expiry in unix milliseconds, past which the ledger may forget it.
    """

    nonce: str
    expires_ms: int


class StreamTokens:
    """Issues and redeems single-use stream tokens; ``clock`` returns unix seconds."""

    def __init__(self, secret: bytes, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < _MIN_SECRET_BYTES:
            raise ConfigError(f"stream token secret must be at least {_MIN_SECRET_BYTES} bytes")
        if not ttl_s > 0:
            raise ConfigError(f"stream token ttl must be positive, got {ttl_s}")
        self._secret = secret
        self._ttl_ms = ttl_s * 1000
        self._clock = clock
        self._used: dict[str, int] = {}  # nonce -> expiry (ms) of redeemed, unexpired tokens
        self._used_by_expiry: list[tuple[int, str]] = []  # min-heap over the same entries

    def __repr__(self) -> str:
        # Never show the secret (STYLE.md: secrets stay out of repr and logs).
        return f"StreamTokens(ttl_s={self._ttl_ms / 1000}, remembered={len(self._used)})"

    @property
    def remembered(self) -> int:
        """How many redeemed tokens are remembered to refuse replays (bounded by the ttl)."""
        return len(self._used)

    def issue(self, call_sid: str) -> str:
        if not call_sid:
            raise UserError("a stream token needs the call sid it is for")
        expires_ms = math.ceil(self._now_ms() + self._ttl_ms)
        nonce = _b64encode(secrets.token_bytes(_NONCE_BYTES))
        signed = f"{_VERSION}.{_b64encode(call_sid.encode())}.{expires_ms}.{nonce}"
        return f"{signed}.{self._mac(signed)}"

    @staticmethod
    def call_of(token: str) -> str | None:
        """The call id a token names, unverified (a bearer token carries its own call; redeem
        it with that id, which checks the signature): None if it names none."""
        parts = token.split(".")
        if len(parts) != 5 or not token.isascii():
            return None
        try:
            return _b64decode(parts[1]).decode()
        except (StreamTokenError, UnicodeDecodeError):
            return None

    def redeem(self, token: str, call_sid: str) -> RedeemedToken:
        """Accept ``token`` for ``call_sid`` once in this process, or raise
        :class:`StreamTokenError`. Only a token that passed every check is returned, so a forged,
        expired or locally replayed token never reaches a ledger."""
        now_ms = self._now_ms()
        self._forget_expired(now_ms)
        if not token.isascii():
            # Ours are base64url, digits and dots; anything else (a lone surrogate would not even
            # encode for the HMAC) is not worth a check (found by tests/unit/test_fuzz_parsers.py).
            raise StreamTokenError("stream token is malformed", reason="malformed")
        signed, _, mac = token.rpartition(".")
        parts = signed.split(".")
        if len(parts) != 4 or parts[0] != _VERSION or not parts[2].isdecimal():
            raise StreamTokenError("stream token is malformed", reason="malformed")
        _, call_part, expires_part, nonce = parts
        if not hmac.compare_digest(mac.encode(), self._mac(signed).encode()):
            raise StreamTokenError("stream token signature does not verify", reason="forged")
        # The HMAC verified, so the call part is ours and decodes.
        if _b64decode(call_part) != call_sid.encode():
            raise StreamTokenError("stream token was issued for another call", reason="wrong_call")
        expires_ms = int(expires_part)
        if now_ms >= expires_ms:
            raise StreamTokenError("stream token has expired", reason="expired")
        if nonce in self._used:
            raise StreamTokenError("stream token was already used", reason="replayed")
        self._used[nonce] = expires_ms
        heapq.heappush(self._used_by_expiry, (expires_ms, nonce))
        return RedeemedToken(nonce, expires_ms)

    def _forget_expired(self, now_ms: float) -> None:
        heap = self._used_by_expiry
        while heap and heap[0][0] <= now_ms:
            _, nonce = heapq.heappop(heap)
            del self._used[nonce]

    def _now_ms(self) -> float:
        return self._clock() * 1000

    def _mac(self, signed: str) -> str:
        return _b64encode(hmac.digest(self._secret, signed.encode(), hashlib.sha256))


def _b64encode(data: bytes) -> str:
    # URL-safe, unpadded: the token sits in an XML attribute and in JSON; "." separates parts.
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise StreamTokenError("stream token is malformed", reason="malformed") from exc
