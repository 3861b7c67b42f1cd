"""The protocol core shared by the OpenAI transports, without any socket (sans-I/O).

It turns received JSON text into typed events and transport events, and public calls into JSON
text handed to :meth:`_send_text`, which a concrete transport implements (the WebSocket transport
writes it to its socket; tests collect it in a list). It owns the behaviour both Agents SDKs have:

* ``response.create`` is serialised: only one response may be active, so a create asked for while
  one is active (or being cancelled) waits for its ``response.done`` (reference §5.1, step 5).
* function calls are dispatched once, on ``response.output_item.done`` with a completed
  ``function_call`` item (§5.1, step 3).
* barge-in: on ``speech_started`` the transport interrupts playback and truncates the playing
  item at the played position, and cancels the response itself only if the server does not
  (``interrupt_response`` off in the effective config) (§5.2).
"""

from __future__ import annotations

import binascii
import json
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import orjson
import pybase64

from services.errors import (
    CallrayError,
    ProviderError,
    RealtimeProtocolError,
)
from services.realtime import server_events as se
from services.realtime.audio_formats import bytes_per_ms, normalize_format
from services.realtime.client_events import encode_audio_append, to_json_object
from services.realtime.emitter import EventEmitter
from services.realtime.items import RealtimeItem, item_from_wire
from services.realtime.playback import PlaybackSource, WallClockPlayback
from services.realtime.transports.base import (
    ConnectionStatus,
    TranscriptDelta,
    TransportAudio,
    TransportErrorEvent,
    TransportToolCall,
)
from services.realtime.wire import JSON

logger = logging.getLogger(__name__)

# Error codes after which the same request may succeed later.
_RETRYABLE_TYPES = {"server_error", "rate_limit_error"}


def provider_error(event: se.ErrorEvent) -> ProviderError:
    err = event.error
    err_type = err.get("type") if isinstance(err.get("type"), str) else None
    return ProviderError(
        event.message or "model reported an error",
        retryable=err_type in _RETRYABLE_TYPES,
        code=event.code,
        error_type=err_type,
        param=err.get("param") if isinstance(err.get("param"), str) else None,
        event_id=err.get("event_id") if isinstance(err.get("event_id"), str) else None,
    )


class OpenAIRealtimeBase(EventEmitter):
    """Event handling and outgoing events of the OpenAI Realtime protocol, socket-free."""

    def __init__(self, *, playback: PlaybackSource | None = None) -> None:
        super().__init__()
        self._status: ConnectionStatus = "disconnected"
        self._muted = False
        self.session_config: JSON = {}  # effective config from session.created/updated
        self._output_bytes_per_ms = 48.0
        self._playback: PlaybackSource = playback if playback is not None else WallClockPlayback()
        self._received_ms: dict[tuple[str, int], float] = {}
        self._current_audio: tuple[str, int] | None = None
        self._response_active = False
        self._cancel_pending = False
        self._create_in_flight: str | None = None
        self._create_queue: deque[JSON] = deque()
        self._create_seq = 0
        self._dispatched_calls: set[str] = set()
        # When playback is observed by another process (a telephony ingress), the freshest
        # "heard" figure is there, not in our tracker: set this and the truncations of a
        # barge-in wait for :meth:`complete_interruption`.
        self.defer_truncation = False
        self._deferred: tuple[list[tuple[str, int, int]], dict[tuple[str, int], float]] | None = (
            None
        )

    # ----- state -------------------------------------------------------------------------------

    @property
    def status(self) -> ConnectionStatus:
        return self._status

    @property
    def muted(self) -> bool | None:
        return self._muted

    @property
    def response_active(self) -> bool:
        return self._response_active

    def _start_connection(self) -> None:
        """Forget the previous connection's server-side state (a reconnect): its response, its
        queued creates, the audio received and a barge-in waiting for its heard point all died
        with it. Calls already dispatched stay dispatched: their items are replayed, and running
        them again would repeat their side effects."""
        self._reset_playback()
        self._response_active = False
        self._cancel_pending = False
        self._create_in_flight = None
        self._create_queue.clear()
        self._deferred = None

    def _set_status(self, status: ConnectionStatus) -> None:
        if status != self._status:
            self._status = status
            self.emit("connection_change", status)

    def _send_text(self, text: str) -> None:
        raise NotImplementedError

    # ----- outgoing ----------------------------------------------------------------------------

    def send_event(self, event: Any) -> None:
        """Send any client event (typed or a raw object); ``response.create`` is sequenced."""
        obj = to_json_object(event)
        if obj["type"] == "response.create":
            self.request_response(obj.get("response"), _raw=obj)
            return
        if obj["type"] == "response.cancel":
            self._cancel_pending = True
        self._send_text(json.dumps(obj, separators=(",", ":")))

    def send_audio(self, audio: bytes, *, commit: bool = False) -> None:
        if self._muted:
            return
        if audio:
            self._send_text(encode_audio_append(audio))
        if commit:
            self._send_text('{"type":"input_audio_buffer.commit"}')

    def send_message(
        self,
        message: str | JSON,
        other_event_data: JSON | None = None,
        *,
        trigger_response: bool = True,
    ) -> None:
        item: JSON
        if isinstance(message, str):
            item = {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": message}],
            }
        else:
            item = message
        self.send_event(
            {"type": "conversation.item.create", "item": item, **(other_event_data or {})}
        )
        if trigger_response:
            self.request_response()

    def request_response(self, response: JSON | None = None, *, _raw: JSON | None = None) -> None:
        event: JSON = dict(_raw) if _raw is not None else {"type": "response.create"}
        if response is not None:
            event["response"] = response
        if self._create_blocked():
            # Asking twice for a plain response while one is waiting gives one response.
            if not (
                event.keys() <= {"type"} and any(q.keys() <= {"type"} for q in self._create_queue)
            ):
                self._create_queue.append(event)
            return
        self._send_create(event)

    def _create_blocked(self) -> bool:
        return self._response_active or self._cancel_pending or self._create_in_flight is not None

    def _send_create(self, event: JSON) -> None:
        self._create_seq += 1
        event_id = event.get("event_id") or f"callray_response_create_{self._create_seq}"
        event["event_id"] = event_id
        self._create_in_flight = event_id
        self._send_text(json.dumps(event, separators=(",", ":")))

    def _drain_creates(self) -> None:
        if self._create_queue and not self._create_blocked():
            self._send_create(self._create_queue.popleft())

    def cancel_response(self) -> None:
        """Cancel the active response, if there is one (no error round trip otherwise)."""
        if self._response_active and not self._cancel_pending:
            self.send_event({"type": "response.cancel"})

    def update_session_config(self, config: JSON) -> None:
        session = {"type": "realtime", **config}
        if "audio" in session:
            self._note_output_format(session)
        self.send_event({"type": "session.update", "session": session})

    def send_function_call_output(
        self, tool_call: TransportToolCall, output: str, *, start_response: bool = True
    ) -> None:
        self.send_event(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "function_call_output",
                    "call_id": tool_call.call_id,
                    "output": output,
                },
            }
        )
        if start_response:
            self.request_response()

    def mute(self, muted: bool) -> None:
        """While muted, ``send_audio`` drops caller audio (hold, agent whisper, ...)."""
        self._muted = muted

    def reset_history(
        self, old_history: Sequence[RealtimeItem], new_history: Sequence[RealtimeItem]
    ) -> None:
        """Make the server's conversation match ``new_history``: delete what went or changed,
        then create what is new, each after its predecessor."""
        old = {item.item_id: item for item in old_history}
        new_ids = {item.item_id for item in new_history}
        for item_id, item in old.items():
            changed = next((n for n in new_history if n.item_id == item_id and n != item), None)
            if item_id not in new_ids or changed is not None:
                self.send_event({"type": "conversation.item.delete", "item_id": item_id})
        previous: str | None = None
        for item in new_history:
            if item.item_id not in old or old[item.item_id] != item:
                event: JSON = {"type": "conversation.item.create", "item": item.to_wire()}
                if previous is not None:
                    event["previous_item_id"] = previous
                self.send_event(event)
            previous = item.item_id

    def interrupt(self, *, cancel_response: bool = True) -> None:
        """Stop playback now: cancel the response and truncate what was not heard."""
        if cancel_response:
            self.cancel_response()
        truncations = self._playback_truncations()
        received = dict(self._received_ms)
        self._reset_playback()
        if self.defer_truncation:
            self.complete_interruption(None)  # an earlier barge-in still unconfirmed: settle it
            self._deferred = (truncations, received)
            self.emit("audio_interrupted")
            return
        self.emit("audio_interrupted")
        self._send_truncations(truncations)

    @property
    def interruption_pending(self) -> bool:
        """A deferred barge-in is waiting for :meth:`complete_interruption`."""
        return self._deferred is not None

    def complete_interruption(self, heard: Sequence[tuple[str, int, int]] | None) -> None:
        """Send the truncations of a deferred barge-in.

        ``heard`` is (item id, content index, ms heard) as the process that plays the audio saw
        it when it stopped playback; ``None`` (it never answered) falls back to our tracker.
        A reported figure only ever moves a truncation later (it is the fresher of the two),
        and never past the audio received, which the server would reject.
        """
        if self._deferred is None:
            return
        truncations, received = self._deferred
        self._deferred = None
        reported = {(item, index): ms for item, index, ms in heard or ()}
        out: list[tuple[str, int, int]] = []
        for item, index, ms in truncations:
            if (item, index) in reported:
                cap = math.floor(received.get((item, index), 0.0))
                ms = min(max(ms, reported[(item, index)]), cap)
            out.append((item, index, ms))
        self._send_truncations(out)

    def _send_truncations(self, truncations: list[tuple[str, int, int]]) -> None:
        for item_id, content_index, audio_end_ms in truncations:
            self.send_event(
                {
                    "type": "conversation.item.truncate",
                    "item_id": item_id,
                    "content_index": content_index,
                    "audio_end_ms": audio_end_ms,
                }
            )

    def _playback_truncations(self) -> list[tuple[str, int, int]]:
        """The item being heard, cut at the played point, and every item received after it,
        still queued for the listener, cut at 0 (as the Agents JS Twilio transport does)."""
        items = list(self._received_ms.items())
        state = self._playback.state()
        position = next(
            (
                n
                for n, (key, _) in enumerate(items)
                if state and key == (state.item_id, state.content_index)
            ),
            None,
        )
        out: list[tuple[str, int, int]] = []
        if state is not None and position is not None:
            received = items[position][1]
            later = items[position + 1 :]
            # All of it was heard if nothing more can come for it: the response ended, or the
            # model already moved on to later items.
            heard_all = state.played_ms >= received and (not self._response_active or bool(later))
            if received > 0 and not heard_all:
                # Never more than was received: the server rejects a truncate past the end.
                played = max(0, math.floor(min(state.played_ms, received)))
                out.append((state.item_id, state.content_index, played))
        elif isinstance(self._playback, WallClockPlayback):
            later = []  # the wall clock always tracks the newest item: nothing queued behind it
        else:
            later = items  # nothing reported heard yet: everything received is still queued
        out.extend((item, index, 0) for (item, index), ms in later if ms > 0)
        return out

    def _reset_playback(self) -> None:
        self._playback.reset()
        self._received_ms.clear()
        self._current_audio = None

    # ----- incoming ----------------------------------------------------------------------------

    def receive_text(self, text: str | bytes) -> se.ServerEvent | None:
        """Handle one frame from the server. Bad frames become ``error`` events, never raise."""
        if isinstance(text, bytes):
            self._protocol_error(RealtimeProtocolError("binary frame from the model server"), None)
            return None
        try:
            data = orjson.loads(text)  # 3x json.loads on a delta (bench/codecs.py)
        except ValueError as exc:
            self._protocol_error(
                RealtimeProtocolError(f"malformed JSON from the model: {exc}"), None
            )
            return None
        if isinstance(data, dict):
            self.emit("*", data)
        try:
            event = se.parse_server_event(data)
        except RealtimeProtocolError as exc:
            self._protocol_error(exc, data if isinstance(data, dict) else None)
            return None
        try:
            self._handle(event)
        except RealtimeProtocolError as exc:
            self._protocol_error(exc, event.raw)
        self.emit(event.type, event)
        return event

    def _protocol_error(self, exc: CallrayError, raw: JSON | None) -> None:
        logger.warning("bad event from model: %s", exc)
        self.emit("error", TransportErrorEvent(exc, raw))

    def _handle(self, event: se.ServerEvent) -> None:
        handler = self._HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def _on_audio_delta(self, event: se.OutputAudioDelta) -> None:
        try:
            data = pybase64.b64decode(event.delta, validate=True)
        except (binascii.Error, TypeError, ValueError) as exc:
            raise RealtimeProtocolError("audio delta is not valid base64", field="delta") from exc
        key = (event.item_id, event.content_index)
        if self._current_audio != key:
            self._current_audio = key
            if len(self._received_ms) >= 16:  # only recent items can still be playing
                del self._received_ms[next(iter(self._received_ms))]
        ms = len(data) / self._output_bytes_per_ms
        self._received_ms[key] = self._received_ms.get(key, 0.0) + ms
        self._playback.on_audio_received(event.item_id, event.content_index, ms)
        self.emit(
            "audio", TransportAudio(data, event.response_id, event.item_id, event.content_index)
        )

    def _on_session(self, event: se.SessionCreated | se.SessionUpdated) -> None:
        self.session_config = event.session
        self._note_output_format(event.session)

    def _note_output_format(self, session: JSON) -> None:
        fmt = ((session.get("audio") or {}).get("output") or {}).get("format")
        if fmt is not None:
            try:
                self._output_bytes_per_ms = bytes_per_ms(normalize_format(fmt))
            except CallrayError:
                logger.warning("unknown output audio format in session config")

    def _server_cancels_on_speech(self) -> bool:
        audio_in = (self.session_config.get("audio") or {}).get("input") or {}
        detection = audio_in.get("turn_detection") or {}
        return bool(detection.get("interrupt_response", False))

    def _on_speech_started(self, event: se.SpeechStarted) -> None:
        playing = bool(self._playback_truncations())
        if playing or (self._response_active and self._current_audio is not None):
            self.interrupt(cancel_response=not self._server_cancels_on_speech())

    def _on_response_created(self, event: se.ResponseCreated) -> None:
        self._response_active = True
        self._create_in_flight = None
        self.emit("turn_started", event.response)

    def _on_response_done(self, event: se.ResponseDone) -> None:
        self._response_active = False
        self._cancel_pending = False
        self._create_in_flight = None
        usage = event.response.get("usage")
        if isinstance(usage, dict):
            self.emit("usage_update", usage)
        self.emit("turn_done", event.response)
        self._drain_creates()

    def _on_error(self, event: se.ErrorEvent) -> None:
        code = event.code or ""
        failed_id = event.error.get("event_id")
        if self._create_in_flight is not None and (
            failed_id == self._create_in_flight or "response_create" in code
        ):
            self._create_in_flight = None
        elif code == "conversation_already_has_active_response":
            # A response we did not track is active; the queued create goes after its done.
            self._create_in_flight = None
            self._response_active = True
        if code == "response_cancel_not_active":
            self._cancel_pending = False
        self.emit("error", TransportErrorEvent(provider_error(event), event.raw))
        self._drain_creates()

    def _on_item(self, event: se.ConversationItemAdded) -> None:
        item = item_from_wire(event.item)
        if item is not None:
            self.emit("item_update", item, event.previous_item_id)

    def _on_item_retrieved(self, event: se.ConversationItemRetrieved) -> None:
        item = item_from_wire(event.item)
        if item is not None:
            self.emit("item_update", item, None)

    def _on_item_deleted(self, event: se.ConversationItemDeleted) -> None:
        self.emit("item_deleted", event.item_id)

    def _on_item_truncated(self, event: se.ConversationItemTruncated) -> None:
        # The server removed the unheard part of the transcript; fetch the item to mirror it.
        self.send_event({"type": "conversation.item.retrieve", "item_id": event.item_id})

    def _on_output_item_done(self, event: se.OutputItemDone) -> None:
        item = event.item
        if item.get("type") != "function_call" or item.get("status") != "completed":
            return
        call_id = item.get("call_id")
        if not isinstance(call_id, str) or call_id in self._dispatched_calls:
            return
        self._dispatched_calls.add(call_id)
        self.emit(
            "function_call",
            TransportToolCall(
                item_id=str(item.get("id", "")),
                call_id=call_id,
                name=str(item.get("name", "")),
                arguments=str(item.get("arguments", "")),
                response_id=event.response_id,
            ),
        )

    def _on_audio_done(self, event: se.OutputAudioDone) -> None:
        self.emit("audio_done", event.item_id)

    def _on_transcript_delta(self, event: se.OutputAudioTranscriptDelta) -> None:
        self.emit(
            "audio_transcript_delta", TranscriptDelta(event.item_id, event.response_id, event.delta)
        )

    _HANDLERS: ClassVar[dict[type[se.ServerEvent], Callable[[Any, Any], None]]] = {
        se.OutputAudioDelta: _on_audio_delta,
        se.SessionCreated: _on_session,
        se.SessionUpdated: _on_session,
        se.SpeechStarted: _on_speech_started,
        se.ResponseCreated: _on_response_created,
        se.ResponseDone: _on_response_done,
        se.ErrorEvent: _on_error,
        se.ConversationItemAdded: _on_item,
        se.ConversationItemCreated: _on_item,
        se.ConversationItemDone: _on_item,
        se.ConversationItemRetrieved: _on_item_retrieved,
        se.ConversationItemDeleted: _on_item_deleted,
        se.ConversationItemTruncated: _on_item_truncated,
        se.OutputItemDone: _on_output_item_done,
        se.OutputAudioDone: _on_audio_done,
        se.OutputAudioTranscriptDelta: _on_transcript_delta,
    }
