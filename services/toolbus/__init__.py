"""The tool bus: tool calls out to the executor pool and results back, over Redis streams, plus
the call-events stream.

Data flows one way (STYLE.md): session → :class:`RedisToolRunner` → ``callray:tool-calls`` →
:class:`ToolExecutor` → ``callray:tool-results:{host}`` → the same runner → session.
"""

from services.runtime.events import EVENT_KINDS
from services.toolbus.call_events import (
    CallEvent,
    CallEventLog,
    format_event,
    tail_events,
)
from services.toolbus.envelopes import ENVELOPE_VERSION, ToolReply, ToolRequest
from services.toolbus.executor import ExecutorStats, RemoteCall, ToolExecutor
from services.toolbus.runner import RedisToolRunner
from services.toolbus.streams import (
    CALL_EVENTS_STREAM,
    DEAD_LETTER_STREAM,
    EXECUTOR_GROUP,
    TOOL_CALLS_STREAM,
    done_key,
    result_stream,
)

__all__ = [
    "CALL_EVENTS_STREAM",
    "DEAD_LETTER_STREAM",
    "ENVELOPE_VERSION",
    "EVENT_KINDS",
    "EXECUTOR_GROUP",
    "TOOL_CALLS_STREAM",
    "CallEvent",
    "CallEventLog",
    "ExecutorStats",
    "RedisToolRunner",
    "RemoteCall",
    "ToolExecutor",
    "ToolReply",
    "ToolRequest",
    "done_key",
    "format_event",
    "result_stream",
    "tail_events",
]
