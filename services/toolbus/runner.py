"""The session side of the tool bus: send tool calls to the executor pool, await their results.

One :class:`RedisToolRunner` per session-host process, shared by all of its calls. ``run`` adds a
:class:`ToolRequest` to ``callray:tool-calls`` and waits for the reply on this host's result
stream, where one reader task (a single blocking XREAD, however many calls wait) hands each reply
to the call waiting for it. A call that passes its deadline gets the timeout text, and the
conversation goes on; its reply, should it come later, is dropped, and so is a second reply for
a call that already has one. Redis trouble becomes the generic tool failure the model is told;
it is never raised into the session.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.errors import ProtocolError
from services.observability import metrics
from services.realtime.tools import (
    GENERIC_FAILURE,
    FunctionTool,
    ToolContext,
    ToolResult,
    timeout_output,
)
from services.toolbus.envelopes import ToolReply, ToolRequest
from services.toolbus.streams import (
    TOOL_CALLS_STREAM,
    Fields,
    as_str,
    block_ms_within,
    reraise_swallowed_cancel,
    result_stream,
    stream_entries,
    xadd_fields,
)

logger = logging.getLogger(__name__)

_RETRY_PAUSE_S = 0.5  # after a failed XREAD: long enough not to spin on a Redis that is down


class RedisToolRunner:
    """Runs tool calls through the executor pool; implements :class:`ToolRunner`."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        host_id: str,
        default_timeout: float = 30.0,
        calls_maxlen: int = 100_000,
        block_ms: int = 2_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self.host_id = host_id
        self.reply_to = result_stream(host_id)
        self.default_timeout = default_timeout
        # Executors ack quickly, so this bound only matters when none runs: then the oldest
        # calls (long past their deadlines) are the ones dropped.
        self._calls_maxlen = calls_maxlen
        self._block_ms = block_ms_within(redis, block_ms)
        self._clock = clock
        self._waiting: dict[str, asyncio.Future[ToolResult]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()
        self._last_id = "0-0"
        self._stopped = False

    async def start(self) -> None:
        """Start reading this host's result stream; replies added before this are not ours."""
        async with self._starting:
            if self._reader is not None:
                return
            self._stopped = False
            # Resolve "$" to a concrete id now: a later XREAD from "$" would miss replies that
            # arrived between two reads.
            newest = await self._redis.xrevrange(self.reply_to, count=1)
            self._last_id = as_str(newest[0][0] or "0-0") if newest else "0-0"
            self._reader = asyncio.create_task(
                self._read_replies(), name=f"tool-results:{self.host_id}"
            )

    async def stop(self) -> None:
        """Stop reading; calls still waiting end with the generic failure."""
        self._stopped = True
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            # Bounded: redis-py may swallow the cancellation of a blocked XREAD; the loop then
            # ends on _stopped after that read, and the owner of the client closes it anyway.
            await asyncio.wait({reader}, timeout=1.0)
        for future in self._waiting.values():
            if not future.done():
                future.set_result(ToolResult(GENERIC_FAILURE, "error"))

    async def run(self, tool: FunctionTool, ctx: ToolContext) -> ToolResult:
        started = self._clock()
        result = await self._run(tool, ctx, started)
        metrics.tool_finished(tool.name, result.outcome, max(0.0, self._clock() - started))
        return result

    async def _run(self, tool: FunctionTool, ctx: ToolContext, started: float) -> ToolResult:
        if self._stopped:
            logger.warning("tool %s called after the runner stopped", tool.name)
            return ToolResult(GENERIC_FAILURE, "error")
        limit = tool.timeout_s if tool.timeout_s is not None else self.default_timeout
        call_id = ctx.call.call_id
        pending = self._waiting.get(call_id)
        if pending is not None:
            # The same model call sent twice: share the one result rather than run it again.
            return await self._await(pending, tool.name, limit, started + limit)
        request = ToolRequest(
            call_id=call_id,
            tool=tool.name,
            arguments=ctx.call.arguments,
            agent=ctx.agent_name,
            session_id=str(getattr(ctx.context, "call_id", "") or ""),
            host_id=self.host_id,
            reply_to=self.reply_to,
            deadline=started + limit,
            sent_at=started,
        )
        future: asyncio.Future[ToolResult] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = future
        try:
            try:
                await self.start()
                await self._redis.xadd(
                    TOOL_CALLS_STREAM,
                    xadd_fields(request.to_fields()),
                    maxlen=self._calls_maxlen,
                    approximate=True,
                )
            except RedisError:
                reraise_swallowed_cancel()  # the session hung up: do not wait for the result
                logger.warning("could not send tool call %s", tool.name, exc_info=True)
                return ToolResult(GENERIC_FAILURE, "error")
            reraise_swallowed_cancel()
            return await self._await(future, tool.name, limit, request.deadline)
        finally:
            self._waiting.pop(call_id, None)

    async def _await(
        self, future: asyncio.Future[ToolResult], tool: str, limit: float, deadline: float
    ) -> ToolResult:
        try:
            # Shielded: one waiter timing out or being cancelled leaves the future to the others.
            return await asyncio.wait_for(
                asyncio.shield(future), max(0.0, deadline - self._clock())
            )
        except TimeoutError:
            logger.info("tool %s passed its %gs deadline", tool, limit)
            return ToolResult(timeout_output(tool, limit), "timeout")

    async def _read_replies(self) -> None:
        while not self._stopped:
            try:
                reply = await self._redis.xread(
                    {self.reply_to: self._last_id}, block=self._block_ms, count=500
                )
            except RedisError:
                reraise_swallowed_cancel()
                if self._stopped:
                    return
                logger.warning("reading tool results failed; retrying", exc_info=True)
                await asyncio.sleep(_RETRY_PAUSE_S)
                continue
            reraise_swallowed_cancel()
            read: list[str] = []
            for _stream, entries in stream_entries(reply):
                for entry_id, fields in entries:
                    self._last_id = entry_id
                    read.append(entry_id)
                    if fields is not None:
                        self._deliver(entry_id, fields)
            if read:
                # Nobody else reads this host's stream: drop what we have read so it stays small.
                try:
                    await self._redis.xdel(self.reply_to, *read)
                except RedisError:
                    logger.warning("could not trim %s", self.reply_to, exc_info=True)

    def _deliver(self, entry_id: str, fields: Fields) -> None:
        try:
            reply = ToolReply.from_fields(fields)
        except ProtocolError as exc:
            logger.warning("dropping malformed tool result %s: %s", entry_id, exc)
            return
        future = self._waiting.get(reply.call_id)
        if future is None or future.done():
            # Its call timed out (the model was told so) or it already has a result.
            logger.debug("dropping late or duplicate result of tool call %s", reply.call_id)
            return
        future.set_result(ToolResult(reply.output, reply.outcome))
