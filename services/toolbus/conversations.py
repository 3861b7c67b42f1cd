"""The cluster's store of call conversation records (:mod:`services.runtime.conversations`):
one key per call holding its record, one holding its newest epoch, both expiring ``ttl_s`` after
the last save; the fence is checked and the record written in one Lua script."""

from __future__ import annotations

import json
import logging
from typing import Final

import redis.asyncio as aioredis

from services.runtime.conversations import Items

__all__ = ["RedisConversations"]

logger = logging.getLogger(__name__)

RECORD_PREFIX: Final = "callray:conversation:"
EPOCH_PREFIX: Final = "callray:conversation-epoch:"
DEFAULT_TTL_S: Final = 2 * 3600
# KEYS: 1 the record, 2 the epoch counter. ARGV: 1 the saving session's epoch, 2 the record,
# 3 ttl (ms). A save from an epoch older than the newest claimed is refused (0): the call moved.
SAVE_IF_CURRENT: Final = """
local newest = tonumber(redis.call('GET', KEYS[2]) or '0')
if newest > tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""


class RedisConversations:
    def __init__(self, redis: aioredis.Redis, *, ttl_s: float = DEFAULT_TTL_S) -> None:
        self._redis = redis
        self._ttl_ms = int(ttl_s * 1000)
        self._save = redis.register_script(SAVE_IF_CURRENT)

    async def claim(self, call_id: str) -> int:
        key = EPOCH_PREFIX + call_id
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.pexpire(key, self._ttl_ms)
            epoch, _ = await pipe.execute()
        return int(epoch)

    async def load(self, call_id: str) -> Items:
        raw = await self._redis.get(RECORD_PREFIX + call_id)
        if raw is None:
            return []
        try:
            items = json.loads(raw)
        except ValueError:
            logger.warning("conversation record of a call is not JSON; resuming without it")
            return []
        return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []

    async def save(self, call_id: str, epoch: int, items: Items) -> bool:
        record = json.dumps(items, separators=(",", ":"))
        saved = await self._save(
            keys=[RECORD_PREFIX + call_id, EPOCH_PREFIX + call_id],
            args=[epoch, record, self._ttl_ms],
        )
        return bool(saved)
