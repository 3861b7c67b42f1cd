"""Typed client → server events of the Realtime GA protocol (reference/realtime-protocol.md §3).

Build an event, call ``to_wire()`` for the JSON object. ``input_audio_buffer.append`` is the one
sent per audio frame, so :func:`encode_audio_append` serialises it without building a dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pybase64

from services.errors import RealtimeProtocolError
from services.realtime.wire import JSON, EventRegistry, WireEvent

CLIENT_EVENTS = EventRegistry("client")
_event = CLIENT_EVENTS.register


@dataclass(slots=True, kw_only=True)
class ClientEvent(WireEvent):
    """Base of every client event."""


@_event("session.update")
@dataclass(slots=True, kw_only=True)
class SessionUpdate(ClientEvent):
    session: dict[str, Any]


@_event("input_audio_buffer.append")
@dataclass(slots=True, kw_only=True)
class InputAudioBufferAppend(ClientEvent):
    audio: str  # base64 of bytes in the session's input format


@_event("input_audio_buffer.commit")
@dataclass(slots=True, kw_only=True)
class InputAudioBufferCommit(ClientEvent):
    pass


@_event("input_audio_buffer.clear")
@dataclass(slots=True, kw_only=True)
class InputAudioBufferClear(ClientEvent):
    pass


@_event("output_audio_buffer.clear")
@dataclass(slots=True, kw_only=True)
class OutputAudioBufferClear(ClientEvent):
    """WebRTC and SIP only: stop the audio the server is playing to the peer."""


@_event("conversation.item.create")
@dataclass(slots=True, kw_only=True)
class ConversationItemCreate(ClientEvent):
    item: dict[str, Any]
    previous_item_id: str | None = None


@_event("conversation.item.retrieve")
@dataclass(slots=True, kw_only=True)
class ConversationItemRetrieve(ClientEvent):
    item_id: str


@_event("conversation.item.truncate")
@dataclass(slots=True, kw_only=True)
class ConversationItemTruncate(ClientEvent):
    item_id: str
    content_index: int
    audio_end_ms: int


@_event("conversation.item.delete")
@dataclass(slots=True, kw_only=True)
class ConversationItemDelete(ClientEvent):
    item_id: str


@_event("response.create")
@dataclass(slots=True, kw_only=True)
class ResponseCreate(ClientEvent):
    response: dict[str, Any] | None = None


@_event("response.cancel")
@dataclass(slots=True, kw_only=True)
class ResponseCancel(ClientEvent):
    response_id: str | None = None


def encode_audio_append(audio: bytes) -> str:
    """Serialise ``input_audio_buffer.append`` for ``audio`` straight to JSON text.

    Base64 output never needs JSON escaping, so string concatenation is exact and several times
    cheaper than building a dict and calling ``json.dumps`` on every 20 ms frame.
    """
    return (
        '{"type":"input_audio_buffer.append","audio":"'
        + pybase64.b64encode(audio).decode("ascii")
        + '"}'
    )


def parse_client_event(data: Any) -> ClientEvent:
    """Parse one client event (used by servers and by tests that inspect what we send)."""
    if not isinstance(data, dict):
        raise RealtimeProtocolError(
            f"client event must be a JSON object, got {type(data).__name__}"
        )
    kind = data.get("type")
    if not isinstance(kind, str):
        raise RealtimeProtocolError("client event has no string 'type'", field="type")
    cls = CLIENT_EVENTS.classes.get(kind)
    if cls is None:
        raise RealtimeProtocolError(f"unknown client event type {kind!r}", field="type")
    event = cls.from_wire(data)
    assert isinstance(event, ClientEvent)
    return event


def to_json_object(event: ClientEvent | JSON) -> JSON:
    """Accept either a typed event or a raw JSON object (the ``send_event`` escape hatch)."""
    if isinstance(event, ClientEvent):
        return event.to_wire()
    if not isinstance(event.get("type"), str):
        raise RealtimeProtocolError("an event to send must have a string 'type'", field="type")
    return event
