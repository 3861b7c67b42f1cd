"""Names of the Redis keys the tool bus uses, and the stream helpers its parts share.

Every key starts with ``callray:``. The completion script (``executor.py``) touches a call's done
key, its host's result stream and the call stream in one step; on a Redis Cluster those would have
to share a hash slot. callray targets one Redis (with replicas if wanted), where they need not.

redis-py returns bytes or str (``decode_responses``) and, for XREAD/XREADGROUP, a list of
``[stream, entries]`` pairs (RESP2) or a dict (RESP3 or its unified shapes); the helpers here
accept all of them so the runner and executor work with any client the application passes in.
Two redis-py behaviours shape every loop that blocks on a stream: its socket timeout also bounds
a blocking read (:func:`block_ms_within`), and it can lose a task's cancellation
(:func:`reraise_swallowed_cancel`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Final

from redis.typing import EncodableT, FieldT

from services.errors import UserError

TOOL_CALLS_STREAM: Final = "callray:tool-calls"
"""Tool calls from every session host; read by the executor pool in :data:`EXECUTOR_GROUP`."""

EXECUTOR_GROUP: Final = "callray-executors"

DEAD_LETTER_STREAM: Final = "callray:tool-calls:dead-letter"
"""Entries of the call stream that could not be parsed, with the reason; for people to inspect."""

CALL_EVENTS_STREAM: Final = "callray:call-events"
"""Call lifecycle events for any consumer group (archiving, analytics, CRM sync)."""

RESULT_STREAM_PREFIX: Final = "callray:tool-results:"
DONE_KEY_PREFIX: Final = "callray:tool-done:"

Fields = Mapping[bytes, bytes] | Mapping[str, str] | Mapping[bytes | str, bytes | str]
Entry = tuple[str, Fields | None]  # (entry id, fields); fields are None for a trimmed entry


def block_ms_within(redis: Any, wanted_ms: int) -> int:
    """How long a blocking read may block on this client without hitting its socket timeout.

    redis-py applies ``socket_timeout`` (5 s by default since 6.x) to the reply of a blocking
    XREAD too, and then retries the command, so a read must block for well under it.
    """
    timeout = redis.connection_pool.connection_kwargs.get("socket_timeout")
    if not timeout:
        return wanted_ms
    return max(1, min(wanted_ms, int(timeout * 1000 / 2)))


def reraise_swallowed_cancel() -> None:
    """Raise CancelledError if this task was cancelled and the cancellation got lost.

    redis-py can swallow a CancelledError that lands while a command is in progress (the
    command then completes or fails with ConnectionError; redis/redis-py#2028, #2551); loops
    that await Redis call this so that a cancelled task still ends.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def result_stream(host_id: str) -> str:
    """The stream where executors put the results of one session host's tool calls."""
    if not host_id:
        raise UserError("a session host needs a non-empty host_id")
    return f"{RESULT_STREAM_PREFIX}{host_id}"


def done_key(call_id: str) -> str:
    """Set once, atomically with writing the reply, when a tool call has completed."""
    return f"{DONE_KEY_PREFIX}{call_id}"


_LAG_SCAN_LIMIT: Final = 1_000


async def group_backlog(redis: Any, stream: str, group: str) -> int:
    """Entries of ``stream`` waiting for ``group``: pending (delivered, unacknowledged) plus
    not yet delivered.

    Redis 7 reports the undelivered count as the group's ``lag``. It is missing on 6.2 (and null
    on 7 after entries were deleted from the middle of the stream); then we count the entries
    after the group's last-delivered id, up to 1,000 (a bigger backlog reads as 1,000).
    """
    for info in await redis.xinfo_groups(stream):
        if as_str(info["name"]) != group:
            continue
        lag = info.get("lag")
        if lag is None:
            after = f"({as_str(info['last-delivered-id'])}"
            lag = len(await redis.xrange(stream, after, "+", count=_LAG_SCAN_LIMIT) or [])
        return int(info["pending"]) + int(lag)
    return 0


def as_str(value: bytes | str | int | float) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def xadd_fields(fields: Mapping[str, str]) -> dict[FieldT, EncodableT]:
    """An envelope's fields as the (invariant) dict type redis-py's ``xadd`` declares."""
    return {key: value for key, value in fields.items()}


def stream_entries(reply: Any) -> list[tuple[str, list[Entry]]]:
    """``(stream, [(id, fields), ...])`` from an XREAD/XREADGROUP reply in any redis-py shape."""
    if not reply:
        return []
    pairs = reply.items() if isinstance(reply, dict) else reply
    out: list[tuple[str, list[Entry]]] = []
    for stream, entries in pairs:
        # The RESP3 legacy shape wraps each stream's entry list in one more list.
        if entries and isinstance(entries[0], list):
            entries = entries[0]
        # redis-py yields (None, None) for a nil entry; there is nothing in it to act on.
        parsed = [entry_of(item) for item in entries if item and item[0] is not None]
        out.append((as_str(stream), parsed))
    return out


def entry_of(item: Any) -> Entry:
    """One ``(id, fields)`` as redis-py parsed it; fields ``None`` for an entry trimmed away."""
    entry_id, fields = item[0], item[1]
    return as_str(entry_id), (fields or None)
