"""How callray opens Redis: one blocking connection pool per process.

redis-py's default pool raises ``MaxConnectionsError`` once 100 commands are in flight, which a
session host with hundreds of calls (or a burst of tool calls) reaches. A blocking pool makes
callers wait for a free connection instead: back-pressure rather than failed tool calls.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError


def connect(
    url: str, *, max_connections: int = 64, timeout_s: float | None = None
) -> aioredis.Redis:
    """``timeout_s`` bounds every wait (a free pooled connection, connecting, each reply) for
    callers that must answer in time; then a command is retried once on a connection error only,
    to replace a pooled connection Redis closed (restart, idle timeout). Timeouts are not
    retried: a write may have landed. Without it, callers wait (tool streams, event logs)."""
    if timeout_s is None:
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=None
        )
    else:
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
    # from_pool: the client owns the pool and closes its connections in aclose().
    return aioredis.Redis.from_pool(pool)


def without_password(url: str) -> str:
    """``url`` with its password (if any) left out, for banners and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}@" if parts.username else ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return parts._replace(netloc=f"{user}{host}{port}").geturl()
