"""The cluster-wide memory of redeemed stream tokens, so that a token opens one stream anywhere.

:class:`~services.telephony.stream_tokens.StreamTokens` verifies a token and refuses a replay to
the same ingress process without I/O; a replay to another ingress process sharing the secret
passes that check. The gateway then claims the token's nonce here, and only the first claim in
the cluster wins.

Failure policy: fail closed. When the ledger cannot answer, :meth:`TokenLedger.claim` raises
:class:`~services.errors.TransportError` and the gateway refuses the stream. Accepting instead
would let any replay through for as long as Redis is down, which is exactly when nobody looks;
refusing costs the calls that start during the outage, and the operator sees why in the logs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final, Protocol

from redis.exceptions import RedisError

from services.errors import TransportError
from services.redis_client import connect, without_password

__all__ = ["CALL_KEY_PREFIX", "KEY_PREFIX", "LocalTokenLedger", "RedisTokenLedger", "TokenLedger"]

logger = logging.getLogger(__name__)

KEY_PREFIX: Final = "callray:stream-token:"
CALL_KEY_PREFIX: Final = "callray:call-token:"


class TokenLedger(Protocol):
    async def claim(self, nonce: str, expires_ms: int) -> bool:
        """True on the token's first use anywhere, False on a replay; ``expires_ms`` (unix ms)
        is when the ledger may forget it. Raises :class:`TransportError` when it cannot say."""
        ...

    async def token_for_call(self, call_id: str, token: str, ttl_ms: int) -> str:
        """The one stream token of provider call ``call_id`` (a Twilio CallSid): ``token`` if
        the call has none yet, else the one it was given, for ``ttl_ms``. A webhook sent twice
        (Twilio retries) so gets one token, and only one stream can open for the call.
        Raises :class:`TransportError` when it cannot say."""
        ...


class LocalTokenLedger:
    """A :class:`TokenLedger` for one ingress process with no cluster Redis (tests, a single
    gateway): the same rules, in memory, entries forgotten when they expire."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._nonces: dict[str, float] = {}
        self._calls: dict[str, tuple[str, float]] = {}

    async def claim(self, nonce: str, expires_ms: int) -> bool:
        self._forget()
        if nonce in self._nonces:
            return False
        self._nonces[nonce] = expires_ms / 1000
        return True

    async def token_for_call(self, call_id: str, token: str, ttl_ms: int) -> str:
        self._forget()
        given = self._calls.setdefault(call_id, (token, self._clock() + ttl_ms / 1000))
        return given[0]

    def _forget(self) -> None:
        now = self._clock()
        self._nonces = {n: t for n, t in self._nonces.items() if t > now}
        self._calls = {c: g for c, g in self._calls.items() if g[1] > now}

    async def close(self) -> None:
        return None


class RedisTokenLedger:
    """A :class:`TokenLedger` in Redis: one key per redeemed nonce, expiring with the token."""

    def __init__(
        self, redis_url: str, *, timeout_s: float = 2.0, max_connections: int = 16
    ) -> None:
        # A call start waits on this answer, so every wait is bounded.
        self._redis = connect(redis_url, max_connections=max_connections, timeout_s=timeout_s)
        # The URL may carry a password: keep it out of repr and messages (STYLE.md, secrets).
        self._where = without_password(redis_url)

    def __repr__(self) -> str:
        return f"RedisTokenLedger({self._where})"

    async def claim(self, nonce: str, expires_ms: int) -> bool:
        # SET NX is the atomic "first one wins"; the key lives until the token expires, after
        # which the token is refused anyway, so memory is bounded by the tokens issued within one
        # ttl. Relative PX from our clock (the one that checked the expiry), not PXAT: PXAT reads
        # the Redis server's clock, and a Redis clock ahead of ours would drop keys early and
        # open a replay window.
        ttl_ms = max(1, expires_ms - int(time.time() * 1000))
        try:
            first = await self._redis.set(KEY_PREFIX + nonce, b"1", nx=True, px=ttl_ms)
        except (RedisError, OSError) as exc:
            raise TransportError(
                f"stream token ledger at {self._where} is unavailable: {exc}"
            ) from exc
        return bool(first)

    async def token_for_call(self, call_id: str, token: str, ttl_ms: int) -> str:
        key = CALL_KEY_PREFIX + call_id
        try:
            if await self._redis.set(key, token.encode(), nx=True, px=max(1, ttl_ms)):
                return token
            given = await self._redis.get(key)
        except (RedisError, OSError) as exc:
            raise TransportError(
                f"stream token ledger at {self._where} is unavailable: {exc}"
            ) from exc
        # Gone between the two commands (it expired): the call's first token has lapsed, so
        # this one is the call's token now; it too can open only one stream.
        if given is None:
            return token
        return given if isinstance(given, str) else given.decode()

    async def close(self) -> None:
        await self._redis.aclose()
