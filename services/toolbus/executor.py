"""The executor side of the tool bus: run the tool calls of ``callray:tool-calls`` and reply.

Many :class:`ToolExecutor` s, each a consumer of one group, share the stream. Each reads new
entries with XREADGROUP and runs up to ``concurrency`` of them at once, so a slow tool never holds
up the others. An entry is acknowledged only in the same atomic step that writes its reply
(``scripts.COMPLETE_CALL``), so an executor that dies mid-call leaves its entries pending, and the
others take them over with XAUTOCLAIM once they have been idle for ``claim_idle_ms``. A call can
thus be *run* more than once, but it *completes* once: the first completion sets the call's done
key and writes the reply, later ones only acknowledge. Tools with side effects make those
exactly-once with ``ToolContext.idempotency_key`` (the call id, the same on every delivery).

While a tool runs, its executor re-claims the entry for itself every ``claim_idle_ms / 3`` (XCLAIM
JUSTID, which resets the idle time without counting a delivery), so a tool that runs longer than
``claim_idle_ms`` is not taken over while its executor is alive.

Entries past their deadline are acknowledged without running: the session has already told the
model the tool timed out. Entries that cannot be parsed go to the dead-letter stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError
from redis.typing import EncodableT, StreamIdT

from services.errors import ProtocolError
from services.observability import metrics
from services.realtime.tools import FunctionTool, ToolCall, ToolContext, ToolResult, run_tool
from services.toolbus import scripts
from services.toolbus.envelopes import ToolReply, ToolRequest
from services.toolbus.streams import (
    DEAD_LETTER_STREAM,
    EXECUTOR_GROUP,
    TOOL_CALLS_STREAM,
    Fields,
    as_str,
    block_ms_within,
    done_key,
    entry_of,
    group_backlog,
    reraise_swallowed_cancel,
    stream_entries,
    xadd_fields,
)

logger = logging.getLogger(__name__)

_COMPLETE_ATTEMPTS = 3
_RETRY_PAUSE_S = 0.5
_STOP_GRACE_S = 5.0


@dataclasses.dataclass(frozen=True, slots=True)
class RemoteCall:
    """``ToolContext.context`` for a tool run by an executor: which call asked for it."""

    call_id: str  # the callray call (session) id, "" if the host did not know it
    host_id: str


@dataclasses.dataclass(slots=True)
class ExecutorStats:
    """What one executor did, for logs and tests (metrics carry the same per tool)."""

    runs: int = 0  # tool runs started, re-runs of reclaimed entries included
    completed: int = 0  # calls whose reply this executor wrote
    duplicates: int = 0  # entries whose call had already been completed
    expired: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0
    consumers_removed: int = 0


class ToolExecutor:
    """Runs tool calls from the call stream as consumer ``consumer`` of ``group``."""

    def __init__(
        self,
        redis: aioredis.Redis,
        tools: Mapping[str, FunctionTool],
        *,
        consumer: str,
        group: str = EXECUTOR_GROUP,
        stream: str = TOOL_CALLS_STREAM,
        claim_idle_ms: int = 2_000,
        concurrency: int = 32,
        block_ms: int = 1_000,
        done_ttl_s: int = 3_600,
        results_maxlen: int = 10_000,
        results_ttl_ms: int = 86_400_000,
        forget_consumer_ms: int = 300_000,
        drain_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._tools = dict(tools)
        self.consumer = consumer
        self.group = group
        self.stream = stream
        self._claim_idle_ms = claim_idle_ms
        self._concurrency = concurrency
        self._block_ms = block_ms_within(redis, block_ms)
        # Must outlast every deadline: a redelivery after the key expired would run again.
        self._done_ttl_s = done_ttl_s
        self._results_maxlen = results_maxlen
        self._results_ttl_ms = results_ttl_ms
        self._forget_consumer_ms = forget_consumer_ms
        self._drain_timeout = drain_timeout
        self._clock = clock
        self._complete = redis.register_script(scripts.COMPLETE_CALL)
        self._forget = redis.register_script(scripts.FORGET_CONSUMER)
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._claim_cursor = "0-0"
        self.stats = ExecutorStats()

    async def ensure_group(self) -> None:
        """Create the consumer group (and the stream) unless it exists.

        The group starts at the beginning of the stream, so calls sent before any executor ever
        ran are served too (or acknowledged as expired when they are past their deadline).
        """
        try:
            await self._redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set, then finish the calls in hand (up to ``drain_timeout``).

        Calls still running after that are cancelled; their entries stay pending and other
        executors reclaim them.
        """
        stop = stop if stop is not None else asyncio.Event()
        await self.ensure_group()
        # Our loops end on this event, never by cancellation alone: redis-py can swallow a
        # cancellation that lands mid-command (streams.reraise_swallowed_cancel).
        closing = asyncio.Event()
        upkeep = asyncio.create_task(self._upkeep(closing), name=f"upkeep:{self.consumer}")
        try:
            await self._read_until(stop)
            if self._inflight:
                await asyncio.wait(list(self._inflight.values()), timeout=self._drain_timeout)
        finally:
            closing.set()
            left = list(self._inflight.values())
            for task in left:
                task.cancel()
            # Bounded: a tool that ignores cancellation must not hold up the stop for ever.
            _, still = await asyncio.wait([upkeep, *left], timeout=_STOP_GRACE_S)
            if still:
                logger.warning("%d tool calls did not stop; left running", len(still))

    # --- reading --------------------------------------------------------------------------------

    async def _read_until(self, stop: asyncio.Event) -> None:
        stopped = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                free = self._concurrency - len(self._inflight)
                if free <= 0:
                    busy = {stopped, *self._inflight.values()}
                    await asyncio.wait(busy, return_when=asyncio.FIRST_COMPLETED)
                    continue
                # Not raced against ``stop`` and cancelled: Redis keeps serving a blocked
                # XREADGROUP until it notices the connection closed, and entries it hands to
                # a read nobody awaits wait out claim_idle_ms. Stopping takes up to block_ms.
                try:
                    reply = await self._redis.xreadgroup(
                        self.group,
                        self.consumer,
                        {self.stream: ">"},
                        count=free,
                        block=self._block_ms,
                    )
                except RedisError as exc:
                    reraise_swallowed_cancel()
                    await self._read_failed(exc, stop)
                    continue
                reraise_swallowed_cancel()
                for _stream, entries in stream_entries(reply):
                    for entry_id, fields in entries:
                        self._start(entry_id, fields)
        finally:
            stopped.cancel()

    async def _read_failed(self, exc: RedisError, stop: asyncio.Event) -> None:
        if "NOGROUP" in str(exc):
            # The stream or group vanished (a Redis restarted without its data): make it again.
            logger.warning("consumer group %s is gone; creating it again", self.group)
            with contextlib.suppress(RedisError):
                await self.ensure_group()
        else:
            logger.warning("reading %s failed; retrying", self.stream, exc_info=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), _RETRY_PAUSE_S)

    def _start(self, entry_id: str, fields: Fields | None) -> None:
        if entry_id in self._inflight:
            return
        task = asyncio.create_task(self._handle(entry_id, fields), name=f"tool-call:{entry_id}")
        self._inflight[entry_id] = task
        task.add_done_callback(lambda done: self._finished(entry_id, done))

    def _finished(self, entry_id: str, task: asyncio.Task[None]) -> None:
        if self._inflight.get(entry_id) is task:
            del self._inflight[entry_id]

    # --- one entry ------------------------------------------------------------------------------

    async def _handle(self, entry_id: str, fields: Fields | None) -> None:
        try:
            await self._process(entry_id, fields)
        except Exception:
            # Left unacknowledged: once idle it is reclaimed and tried again, until its deadline.
            logger.exception("tool call entry %s failed; it stays pending", entry_id)

    async def _process(self, entry_id: str, fields: Fields | None) -> None:
        if fields is None:
            logger.warning("tool call entry %s was trimmed before it ran", entry_id)
            await self._redis.xack(self.stream, self.group, entry_id)
            metrics.tool_executed("-", "trimmed")
            return
        try:
            request = ToolRequest.from_fields(fields)
        except ProtocolError as exc:
            await self._dead_letter(entry_id, fields, exc)
            return
        tool = self._tools.get(request.tool)
        label = tool.name if tool is not None else "-"  # never a model-chosen label value
        if await self._redis.exists(done_key(request.call_id)):
            await self._redis.xack(self.stream, self.group, entry_id)
            self.stats.duplicates += 1
            metrics.tool_executed(label, "duplicate")
            return
        started = self._clock()
        remaining = request.deadline - started
        if remaining <= 0:
            logger.info("tool call to %s expired before it ran", label)
            await self._redis.xack(self.stream, self.group, entry_id)
            self.stats.expired += 1
            metrics.tool_executed(label, "expired")
            return
        self.stats.runs += 1
        if tool is None:
            result = ToolResult(f"Tool {request.tool} not found", "error")
        else:
            limit = min(remaining, tool.timeout_s) if tool.timeout_s is not None else remaining
            result = await run_tool(tool, self._context(request), limit_s=limit)
        finished = self._clock()
        reply = ToolReply(
            call_id=request.call_id,
            output=result.output,
            outcome=result.outcome,
            executor=self.consumer,
            duration_s=max(0.0, finished - started),
            sent_at=finished,
        )
        first = await self._completed(entry_id, request, reply)
        if first:
            self.stats.completed += 1
        else:
            self.stats.duplicates += 1
        metrics.tool_executed(label, result.outcome if first else "duplicate")

    def _context(self, request: ToolRequest) -> ToolContext:
        return ToolContext(
            call=ToolCall(request.call_id, request.tool, request.arguments),
            agent_name=request.agent,
            context=RemoteCall(call_id=request.session_id, host_id=request.host_id),
            idempotency_key=request.call_id,
        )

    async def _completed(self, entry_id: str, request: ToolRequest, reply: ToolReply) -> bool:
        """Run COMPLETE_CALL; True if this delivery completed the call (and wrote the reply)."""
        pairs = [part for item in reply.to_fields().items() for part in item]
        args: list[EncodableT] = [
            entry_id,
            self.group,
            self._done_ttl_s,
            self._results_maxlen,
            self._results_ttl_ms,
            self.consumer,
            *pairs,
        ]
        keys = [done_key(request.call_id), request.reply_to, self.stream]
        for attempt in range(1, _COMPLETE_ATTEMPTS + 1):
            try:
                return bool(await self._complete(keys=keys, args=args))
            except RedisError:
                # The tool has run: a short retry is cheaper than a rerun after a reclaim.
                if attempt == _COMPLETE_ATTEMPTS:
                    raise
                logger.warning("completing tool call failed (attempt %d)", attempt, exc_info=True)
                await asyncio.sleep(0.1 * attempt)
        raise AssertionError("unreachable")

    async def _dead_letter(self, entry_id: str, fields: Fields, exc: ProtocolError) -> None:
        logger.warning(
            "malformed tool call entry %s (%s); moved to %s", entry_id, exc, DEAD_LETTER_STREAM
        )
        original = {_text(k): _text(v) for k, v in fields.items()}
        record = {
            "entry_id": entry_id,
            "stream": self.stream,
            "error": str(exc),
            "field": exc.field or "",
            "fields": json.dumps(original),
            "consumer": self.consumer,
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(
                DEAD_LETTER_STREAM,
                xadd_fields(record),
                maxlen=self._results_maxlen,
                approximate=True,
            )
            pipe.xack(self.stream, self.group, entry_id)
            await pipe.execute()
        self.stats.dead_lettered += 1
        metrics.tool_executed("-", "malformed")

    # --- upkeep: heartbeat, reclaim, lag, dead consumers ----------------------------------------

    async def _upkeep(self, closing: asyncio.Event) -> None:
        while not closing.is_set():
            try:
                await self._heartbeat()
                await self._reclaim()
                await self.stream_lag()
                await self._forget_idle_consumers()
            except RedisError:
                logger.warning("executor upkeep failed; retrying", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closing.wait(), self._claim_idle_ms / 3000)

    async def _heartbeat(self) -> None:
        ids: list[StreamIdT] = list(self._inflight)
        if ids:
            await self._redis.xclaim(self.stream, self.group, self.consumer, 0, ids, justid=True)

    async def _reclaim(self) -> None:
        free = self._concurrency - len(self._inflight)
        if free <= 0:
            return
        reply = await self._redis.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            self._claim_idle_ms,
            start_id=self._claim_cursor,
            count=free,
        )
        # Redis 7 adds a third element, the ids it dropped because their entries were deleted.
        self._claim_cursor = as_str(reply[0])
        claimed = [entry_of(item) for item in reply[1] if item and item[0] is not None]
        fresh = [
            (entry_id, fields) for entry_id, fields in claimed if entry_id not in self._inflight
        ]
        if fresh:
            logger.info("reclaimed %d idle tool call entries", len(fresh))
            self.stats.reclaimed += len(fresh)
            metrics.tool_reclaimed(len(fresh))
        for entry_id, fields in fresh:
            self._start(entry_id, fields)

    async def stream_lag(self) -> int:
        """Calls waiting for an executor (:func:`streams.group_backlog`), also reported as the
        ``callray_tool_stream_lag`` gauge: the executors' scaling signal."""
        waiting = await group_backlog(self._redis, self.stream, self.group)
        metrics.tool_stream_lag(waiting)
        return waiting

    async def _forget_idle_consumers(self) -> None:
        """Delete consumers that hold nothing and were idle long: dead executors stay listed.

        A live executor that has had no entry for that long goes too, harmlessly: Redis lists a
        consumer again when it next receives an entry (6.2 and 7 alike, even mid-XREADGROUP).
        """
        for info in await self._redis.xinfo_consumers(self.stream, self.group):
            name = as_str(info["name"])
            if name == self.consumer or int(info["pending"]) > 0:
                continue
            if int(info["idle"]) < self._forget_consumer_ms:
                continue
            args: list[EncodableT] = [self.group, name, self._forget_consumer_ms]
            if await self._forget(keys=[self.stream], args=args):
                logger.info("removed idle consumer %s from %s", name, self.group)
                self.stats.consumers_removed += 1


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
