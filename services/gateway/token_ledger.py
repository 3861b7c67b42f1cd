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
from typing import Final, Protocol
from urllib.parse import urlsplit

from redis.exceptions import RedisError

from services.errors import TransportError
from services.redis_client import connect

__all__ = ["KEY_PREFIX", "RedisTokenLedger", "TokenLedger"]

logger = logging.getLogger(__name__)

KEY_PREFIX: Final = "callray:stream-token:"


class TokenLedger(Protocol):
    async def claim(self, nonce: str, expires_ms: int) -> bool:
        """True on the token's first use anywhere, False on a replay; ``expires_ms`` (unix ms)
        is when the ledger may forget it. Raises :class:`TransportError` when it cannot say."""
        ...


class RedisTokenLedger:
    """A :class:`TokenLedger` in Redis: one key per redeemed nonce, expiring with the token."""

    def __init__(
        self, redis_url: str, *, timeout_s: float = 2.0, max_connections: int = 16
    ) -> None:
        # A call start waits on this answer, so every wait is bounded.
        self._redis = connect(redis_url, max_connections=max_connections, timeout_s=timeout_s)
        # The URL may carry a password: keep only where it points (STYLE.md, secrets).
        parts = urlsplit(redis_url)
        self._where = f"{parts.hostname or parts.path}:{parts.port or ''}".rstrip(":")

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

    async def close(self) -> None:
        await self._redis.aclose()
