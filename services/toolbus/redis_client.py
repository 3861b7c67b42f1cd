"""How callray opens Redis: one blocking connection pool per process.

redis-py's default pool raises ``MaxConnectionsError`` once 100 commands are in flight, which a
session host with hundreds of calls (or a burst of tool calls) reaches. A blocking pool makes
callers wait for a free connection instead: back-pressure rather than failed tool calls.
"""

from __future__ import annotations

import redis.asyncio as aioredis


def connect(url: str, *, max_connections: int = 64) -> aioredis.Redis:
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=None
    )
    # from_pool: the client owns the pool and closes its connections in aclose().
    return aioredis.Redis.from_pool(pool)
