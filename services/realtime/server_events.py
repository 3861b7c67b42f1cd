"""Typed server → client events of the Realtime GA protocol (reference/realtime-protocol.md §4).

:func:`parse_server_event` is the one entry point: it never raises for an unknown ``type`` (that
becomes an :class:`UnknownEvent`), and raises :class:`RealtimeProtocolError` for a known type with
missing or ill-typed fields. ``response.output_audio.delta`` is parsed by hand because it arrives
every few milliseconds per call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.errors import RealtimeProtocolError
from services.realtime.wire import JSON, EventRegistry, WireEvent

SERVER_EVENTS = EventRegistry("server")
_event = SERVER_EVENTS.register


@dataclass(slots=True, kw_only=True)
class ServerEvent(WireEvent):
    """Base of every server event."""


@dataclass(slots=True, kw_only=True)
class UnknownEvent(ServerEvent):
    """A server event whose ``type`` this library does not know; passed on raw, never a crash."""

    unknown_type: str = ""

    @property
    def type(self) -> str:
        return self.unknown_type

    def to_wire(self) -> JSON:
        return dict(self.raw)


# --- session and errors -------------------------------------------------------------------------


@_event("error")
@dataclass(slots=True, kw_only=True)
class ErrorEvent(ServerEvent):
    error: dict[str, Any]

    @property
    def code(self) -> str | None:
        code = self.error.get("code")
        return code if isinstance(code, str) else None

    @property
    def message(self) -> str:
        return str(self.error.get("message", ""))


@_event("session.created")
@dataclass(slots=True, kw_only=True)
class SessionCreated(ServerEvent):
    session: dict[str, Any]


@_event("session.updated")
@dataclass(slots=True, kw_only=True)
class SessionUpdated(ServerEvent):
    session: dict[str, Any]


@_event("rate_limits.updated")
@dataclass(slots=True, kw_only=True)
class RateLimitsUpdated(ServerEvent):
    rate_limits: list[Any]


# --- conversation -------------------------------------------------------------------------------


@_event("conversation.created")
@dataclass(slots=True, kw_only=True)
class ConversationCreated(ServerEvent):
    conversation: dict[str, Any]


@dataclass(slots=True, kw_only=True)
class _ItemEvent(ServerEvent):
    item: dict[str, Any]
    previous_item_id: str | None = None


@_event("conversation.item.added")
@dataclass(slots=True, kw_only=True)
class ConversationItemAdded(_ItemEvent):
    pass


@_event("conversation.item.done")
@dataclass(slots=True, kw_only=True)
class ConversationItemDone(_ItemEvent):
    pass


@_event("conversation.item.created")
@dataclass(slots=True, kw_only=True)
class ConversationItemCreated(_ItemEvent):
    """Still in the GA union; treated like ``conversation.item.added``."""


@_event("conversation.item.retrieved")
@dataclass(slots=True, kw_only=True)
class ConversationItemRetrieved(ServerEvent):
    item: dict[str, Any]


@_event("conversation.item.truncated")
@dataclass(slots=True, kw_only=True)
class ConversationItemTruncated(ServerEvent):
    item_id: str
    content_index: int
    audio_end_ms: int


@_event("conversation.item.deleted")
@dataclass(slots=True, kw_only=True)
class ConversationItemDeleted(ServerEvent):
    item_id: str


@_event("conversation.item.input_audio_transcription.delta")
@dataclass(slots=True, kw_only=True)
class InputAudioTranscriptionDelta(ServerEvent):
    item_id: str
    content_index: int | None = None
    delta: str | None = None
    logprobs: list[Any] | None = None


@_event("conversation.item.input_audio_transcription.completed")
@dataclass(slots=True, kw_only=True)
class InputAudioTranscriptionCompleted(ServerEvent):
    item_id: str
    content_index: int
    transcript: str
    usage: dict[str, Any]
    logprobs: list[Any] | None = None


@_event("conversation.item.input_audio_transcription.failed")
@dataclass(slots=True, kw_only=True)
class InputAudioTranscriptionFailed(ServerEvent):
    item_id: str
    content_index: int
    error: dict[str, Any]


@_event("conversation.item.input_audio_transcription.segment")
@dataclass(slots=True, kw_only=True)
class InputAudioTranscriptionSegment(ServerEvent):
    id: str
    item_id: str
    content_index: int
    text: str
    speaker: str
    start: float
    end: float


# --- input audio buffer -------------------------------------------------------------------------


@_event("input_audio_buffer.speech_started")
@dataclass(slots=True, kw_only=True)
class SpeechStarted(ServerEvent):
    audio_start_ms: int
    item_id: str


@_event("input_audio_buffer.speech_stopped")
@dataclass(slots=True, kw_only=True)
class SpeechStopped(ServerEvent):
    audio_end_ms: int
    item_id: str


@_event("input_audio_buffer.committed")
@dataclass(slots=True, kw_only=True)
class InputAudioCommitted(ServerEvent):
    item_id: str
    previous_item_id: str | None = None


@_event("input_audio_buffer.cleared")
@dataclass(slots=True, kw_only=True)
class InputAudioCleared(ServerEvent):
    pass


@_event("input_audio_buffer.timeout_triggered")
@dataclass(slots=True, kw_only=True)
class InputAudioTimeoutTriggered(ServerEvent):
    audio_start_ms: int
    audio_end_ms: int
    item_id: str


@_event("input_audio_buffer.dtmf_event_received")
@dataclass(slots=True, kw_only=True)
class DtmfReceived(ServerEvent):
    """SIP only; the one server event without an ``event_id``."""

    event: str
    received_at: int


# --- output audio buffer (WebRTC / SIP) ---------------------------------------------------------


@_event("output_audio_buffer.started")
@dataclass(slots=True, kw_only=True)
class OutputAudioBufferStarted(ServerEvent):
    response_id: str


@_event("output_audio_buffer.stopped")
@dataclass(slots=True, kw_only=True)
class OutputAudioBufferStopped(ServerEvent):
    response_id: str


@_event("output_audio_buffer.cleared")
@dataclass(slots=True, kw_only=True)
class OutputAudioBufferCleared(ServerEvent):
    response_id: str


# --- responses ----------------------------------------------------------------------------------


@_event("response.created")
@dataclass(slots=True, kw_only=True)
class ResponseCreated(ServerEvent):
    response: dict[str, Any]


@_event("response.done")
@dataclass(slots=True, kw_only=True)
class ResponseDone(ServerEvent):
    response: dict[str, Any]

    @property
    def status(self) -> str:
        return str(self.response.get("status", ""))


@dataclass(slots=True, kw_only=True)
class _OutputItemEvent(ServerEvent):
    response_id: str
    output_index: int
    item: dict[str, Any]


@_event("response.output_item.added")
@dataclass(slots=True, kw_only=True)
class OutputItemAdded(_OutputItemEvent):
    pass


@_event("response.output_item.done")
@dataclass(slots=True, kw_only=True)
class OutputItemDone(_OutputItemEvent):
    pass


@dataclass(slots=True, kw_only=True)
class _ContentEvent(ServerEvent):
    response_id: str
    item_id: str
    output_index: int
    content_index: int


@_event("response.content_part.added")
@dataclass(slots=True, kw_only=True)
class ContentPartAdded(_ContentEvent):
    part: dict[str, Any]


@_event("response.content_part.done")
@dataclass(slots=True, kw_only=True)
class ContentPartDone(_ContentEvent):
    part: dict[str, Any]


@_event("response.output_audio.delta")
@dataclass(slots=True, kw_only=True)
class OutputAudioDelta(_ContentEvent):
    delta: str

    @classmethod
    def from_wire(cls, data: JSON) -> OutputAudioDelta:
        # Hot path: one per audio chunk per call. Plain indexing; the type checks that matter
        # (delta is base64 text, ids are strings) are done by the consumer decoding it.
        try:
            return cls(
                event_id=data.get("event_id"),
                response_id=data["response_id"],
                item_id=data["item_id"],
                output_index=data["output_index"],
                content_index=data["content_index"],
                delta=data["delta"],
                raw=data,
            )
        except KeyError as exc:
            raise RealtimeProtocolError(
                f"response.output_audio.delta event is missing required field {exc.args[0]!r}",
                field=str(exc.args[0]),
            ) from None


@_event("response.output_audio.done")
@dataclass(slots=True, kw_only=True)
class OutputAudioDone(_ContentEvent):
    pass


@_event("response.output_audio_transcript.delta")
@dataclass(slots=True, kw_only=True)
class OutputAudioTranscriptDelta(_ContentEvent):
    delta: str


@_event("response.output_audio_transcript.done")
@dataclass(slots=True, kw_only=True)
class OutputAudioTranscriptDone(_ContentEvent):
    transcript: str


@_event("response.output_text.delta")
@dataclass(slots=True, kw_only=True)
class OutputTextDelta(_ContentEvent):
    delta: str


@_event("response.output_text.done")
@dataclass(slots=True, kw_only=True)
class OutputTextDone(_ContentEvent):
    text: str


@_event("response.function_call_arguments.delta")
@dataclass(slots=True, kw_only=True)
class FunctionCallArgumentsDelta(ServerEvent):
    response_id: str
    item_id: str
    output_index: int
    call_id: str
    delta: str


@_event("response.function_call_arguments.done")
@dataclass(slots=True, kw_only=True)
class FunctionCallArgumentsDone(ServerEvent):
    response_id: str
    item_id: str
    output_index: int
    call_id: str
    name: str
    arguments: str


# --- MCP (hosted tools; passed through, not executed by us) ---------------------------------------


@dataclass(slots=True, kw_only=True)
class _McpItemEvent(ServerEvent):
    item_id: str


@_event("mcp_list_tools.in_progress")
@dataclass(slots=True, kw_only=True)
class McpListToolsInProgress(_McpItemEvent):
    pass


@_event("mcp_list_tools.completed")
@dataclass(slots=True, kw_only=True)
class McpListToolsCompleted(_McpItemEvent):
    pass


@_event("mcp_list_tools.failed")
@dataclass(slots=True, kw_only=True)
class McpListToolsFailed(_McpItemEvent):
    pass


@_event("response.mcp_call_arguments.delta")
@dataclass(slots=True, kw_only=True)
class McpCallArgumentsDelta(_McpItemEvent):
    response_id: str
    output_index: int
    delta: str
    obfuscation: str | None = None


@_event("response.mcp_call_arguments.done")
@dataclass(slots=True, kw_only=True)
class McpCallArgumentsDone(_McpItemEvent):
    response_id: str
    output_index: int
    arguments: str


@_event("response.mcp_call.in_progress")
@dataclass(slots=True, kw_only=True)
class McpCallInProgress(_McpItemEvent):
    output_index: int


@_event("response.mcp_call.completed")
@dataclass(slots=True, kw_only=True)
class McpCallCompleted(_McpItemEvent):
    output_index: int


@_event("response.mcp_call.failed")
@dataclass(slots=True, kw_only=True)
class McpCallFailed(_McpItemEvent):
    output_index: int


def parse_server_event(data: Any) -> ServerEvent:
    """Turn one decoded JSON value from the server into a typed event.

    Raises :class:`RealtimeProtocolError` if ``data`` is not an object with a string ``type`` or
    if a known event lacks a required field; an unknown ``type`` gives :class:`UnknownEvent`.
    """
    if not isinstance(data, dict):
        raise RealtimeProtocolError(
            f"server event must be a JSON object, got {type(data).__name__}"
        )
    kind = data.get("type")
    if not isinstance(kind, str):
        raise RealtimeProtocolError("server event has no string 'type'", field="type")
    cls = SERVER_EVENTS.classes.get(kind)
    if cls is None:
        event_id = data.get("event_id")
        return UnknownEvent(
            unknown_type=kind, event_id=event_id if isinstance(event_id, str) else None, raw=data
        )
    event = cls.from_wire(data)
    assert isinstance(event, ServerEvent)
    return event
