"""Services the embedded (one machine, one command) defaults start themselves."""

from services.embedded.redis_server import (
    MIN_REDIS_VERSION,
    EmbeddedRedis,
    bundled_redis_server,
    find_redis_server,
)

__all__ = ["MIN_REDIS_VERSION", "EmbeddedRedis", "bundled_redis_server", "find_redis_server"]
