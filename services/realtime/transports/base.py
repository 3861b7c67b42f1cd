"""The interface every Realtime transport implements, and the payloads of the events it emits.

A transport connects a session (or an application using it as a thin client) to a speech-to-speech
model. Implement :class:`RealtimeTransportLayer` and emit the events in :data:`TRANSPORT_EVENTS`
to plug in another API or mechanism, as the seed's last section describes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from services.errors import CallrayError
from services.realtime.client_events import ClientEvent
from services.realtime.items import RealtimeItem
from services.realtime.wire import JSON

ConnectionStatus = Literal["disconnected", "connecting", "connected", "disconnecting"]

#: Events a transport emits, with their arguments.
TRANSPORT_EVENTS: Mapping[str, str] = {
    "*": "(raw: dict) every JSON object received, unknown types included",
    "audio": "(TransportAudio) a chunk of model audio in the session's output format",
    "audio_interrupted": "() playback was cut by an interruption",
    "audio_done": "(item_id: str) the model finished the audio of an item",
    "audio_transcript_delta": "(TranscriptDelta) transcript text of model audio",
    "item_update": "(RealtimeItem, previous_item_id) an item was added or changed",
    "item_deleted": "(item_id: str)",
    "function_call": "(TransportToolCall) the model wants a function run",
    "turn_started": "(response: dict) a response began",
    "turn_done": "(response: dict) a response ended (completed, cancelled, ...)",
    "usage_update": "(usage: dict) token usage of a finished response",
    "connection_change": "(status: ConnectionStatus)",
    "error": "(TransportErrorEvent) an error event from the model or a transport failure",
}


@dataclasses.dataclass(frozen=True, slots=True)
class TransportAudio:
    data: bytes
    response_id: str
    item_id: str
    content_index: int


@dataclasses.dataclass(frozen=True, slots=True)
class TranscriptDelta:
    item_id: str
    response_id: str
    delta: str


@dataclasses.dataclass(frozen=True, slots=True)
class TransportToolCall:
    item_id: str
    call_id: str
    name: str
    arguments: str
    response_id: str | None = None
    previous_item_id: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TransportErrorEvent:
    """``error`` payload: a typed exception, plus the raw server event when there was one."""

    error: CallrayError
    raw: JSON | None = None


@runtime_checkable
class RealtimeTransportLayer(Protocol):
    """What a RealtimeSession needs from a transport (the seed's ``RealtimeTransportLayer``)."""

    @property
    def status(self) -> ConnectionStatus: ...

    @property
    def muted(self) -> bool | None: ...

    async def connect(
        self,
        *,
        api_key: str | None = None,
        model: str | None = None,
        url: str | None = None,
        call_id: str | None = None,
        initial_session_config: JSON | None = None,
    ) -> None: ...

    async def close(self) -> None: ...

    def on(self, event: str, handler: Callable[..., Any]) -> Callable[..., Any]: ...

    def off(self, event: str, handler: Callable[..., Any]) -> None: ...

    def send_event(self, event: ClientEvent | JSON) -> None: ...

    def send_audio(self, audio: bytes, *, commit: bool = False) -> None: ...

    def send_message(
        self,
        message: str | JSON,
        other_event_data: JSON | None = None,
        *,
        trigger_response: bool = True,
    ) -> None: ...

    def request_response(self, response: JSON | None = None) -> None: ...

    def interrupt(self) -> None: ...

    def mute(self, muted: bool) -> None: ...

    def update_session_config(self, config: JSON) -> None: ...

    def send_function_call_output(
        self, tool_call: TransportToolCall, output: str, *, start_response: bool = True
    ) -> None: ...

    def reset_history(
        self, old_history: Sequence[RealtimeItem], new_history: Sequence[RealtimeItem]
    ) -> None: ...
