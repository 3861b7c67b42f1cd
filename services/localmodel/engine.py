"""The per-connection state machine of the local Realtime model, sans-I/O.

Feed it client frames with :meth:`RealtimeEngine.receive_frame` (or parsed objects with
:meth:`receive`) and the current time; collect server events with :meth:`take_events`. Between
events, call :meth:`tick` at :meth:`next_deadline` to let paced output audio out. Speech it cannot
produce synchronously is listed by :meth:`speech_requests`; the adapter renders it and ticks again.
No sockets, no clocks, no tasks: tests drive it with plain numbers (STYLE.md practices 1 and 8).

Behaviour follows reference/realtime-protocol.md (GA); where the reference is silent:
- manual ``input_audio_buffer.commit`` needs at least 100 ms of audio, as the API says in its
  ``input_audio_buffer_commit_empty`` error;
- a VAD turn commits the audio from ``audio_start_ms`` to ``audio_end_ms``; later audio stays;
- a response is created on speech stop only if ``create_response`` and none is active;
- echo mode: appended audio is streamed back at once in an open "echo" response, which ends on
  commit, clear, cancel or speech stopped; VAD never interrupts an echo response and never
  creates another one (the echo is the answer), but its events are sent as usual;
- ``output_audio_buffer.clear`` is WebRTC/SIP only and answered with an error here (the WebRTC
  adapter, which owns the output track, handles it before the engine sees it);
- ``idle_timeout_ms`` is accepted and shown but never fires; ``max_output_tokens`` is shown in
  responses but never cuts one short; ``response.input`` is validated, then used only by echo
  mode (its last user item is echoed); response ``instructions`` are accepted and ignored.

Public API: ``receive_frame``/``receive``, ``tick``, ``next_deadline``, ``take_events`` (or
``take_frames``, the same events as the JSON text to send), ``speech_requests``; for a media
track (WebRTC) ``append_audio`` and ``truncate_heard``; ``session`` (the effective session,
``None`` without one) and ``conversation`` are readable for tests.
"""

from __future__ import annotations

import copy
import itertools
import logging
import secrets
from collections.abc import Sequence
from typing import Any, Final, Literal

from .audio import PCM, AudioConverter, AudioFormat
from .client_events import (
    AudioAppend,
    AudioClear,
    AudioCommit,
    ClientEvent,
    ItemCreate,
    ItemDelete,
    ItemRetrieve,
    ItemTruncate,
    OutputAudioClear,
    ResponseCancel,
    ResponseCreate,
    ResponseParams,
    SessionUpdate,
    decode_frame,
    event_id_of,
    parse_append_frame,
    parse_client_event,
)
from .conversation import Conversation, StoredItem
from .input_buffer import InputAudioBuffer
from .outbox import Outbox
from .replies import ScriptPlayer
from .responder import Responder
from .scenario import Scenario, load_scenario
from .session_config import apply_session_update, default_session
from .speech import SpeechSynthesizer
from .usage import transcription_usage
from .vad import SpeechStarted, vad_from_turn_detection
from .validation import InvalidRequest, show

__all__ = ["Mode", "RealtimeEngine"]

log = logging.getLogger(__name__)

Mode = Literal["echo", "scripted"]
MIN_COMMIT_MS: Final = 100
SESSION_LIFETIME_S: Final = 3600
DEFAULT_MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
_UNSET: Final = object()
_TRACK_APPEND: Final[dict[str, Any]] = {"type": "input_audio_buffer.append"}


class RealtimeEngine:
    def __init__(
        self,
        *,
        mode: Mode = "scripted",
        scenario: Scenario | None = None,
        speech: SpeechSynthesizer | None = None,
        model: str = "gpt-realtime",
        speed: float = 4.0,
        chunk_ms: int = 50,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        unix_time: int = 0,
        unknown_call_id: str | None = None,
        session_configs: Sequence[dict[str, Any]] = (),
    ) -> None:
        self.mode: Mode = mode
        self.speed = speed
        self.chunk_ms = chunk_ms
        self.max_message_bytes = max_message_bytes
        self._prefix = secrets.token_hex(4)
        self._counter = itertools.count(1)
        self._outbox = Outbox(self.new_id)
        self._turn_item_id: str | None = None  # announced by speech_started, made on stop
        self._turn_start_ms = 0.0
        self._turn_detection: object = _UNSET  # the VAD is rebuilt only when this changes
        self.session: dict[str, Any] | None = None
        self.conversation = Conversation(self.new_id("conv"))
        self.input = InputAudioBuffer(PCM, None)
        self._track_audio = AudioConverter(PCM, PCM)  # track audio → the input format
        self.responder = Responder(
            mode=mode,
            player=ScriptPlayer(scenario or load_scenario()),
            speech=speech or SpeechSynthesizer(None),
            conversation=self.conversation,
            out=self._outbox,
            new_id=self.new_id,
            speed=speed,
            chunk_ms=chunk_ms,
        )
        if unknown_call_id is not None:
            # A call_id this server never saw: no session exists on this connection (section 6.5).
            self._error(
                InvalidRequest(
                    f"No session found for the provided call_id {show(unknown_call_id)}.",
                    code="call_id_not_found",
                    param="call_id",
                ),
                None,
            )
            return
        self.session = default_session(model, self.new_id("sess"), unix_time + SESSION_LIFETIME_S)
        for config in session_configs:
            # In order (an ephemeral key's, then the call's own); InvalidRequest propagates: the
            # adapter refuses the session before it exists.
            self.session = apply_session_update(self.session, config)
        self._apply_session()
        self._emit({"type": "session.created", "session": copy.deepcopy(self.session)})

    # ----- the sans-I/O interface ---------------------------------------------------------

    def new_id(self, kind: str) -> str:
        """Ids unique across connections: ``<kind>_<connection prefix><counter>``."""
        return f"{kind}_{self._prefix}{next(self._counter):06d}"

    def take_events(self) -> list[dict[str, Any]]:
        return self._outbox.take_events()

    def take_frames(self) -> list[str]:
        """What :meth:`take_events` would return, as the JSON text frames to send (the same
        bytes as ``json.dumps`` of each event, made faster for audio deltas)."""
        return self._outbox.take_frames()

    def speech_requests(self) -> list[tuple[str, str]]:
        """(text, voice) pairs to render with the synthesizer before the next :meth:`tick`."""
        return self.responder.speech_requests()

    def next_deadline(self) -> float | None:
        """When :meth:`tick` must next run (paced output), or ``None`` if nothing is due."""
        return self.responder.next_deadline()

    def tick(self, now: float) -> None:
        self.responder.tick(now)

    def receive_frame(self, data: str | bytes, now: float) -> dict[str, Any] | None:
        """Handle one WebSocket frame; returns it parsed if it was a JSON object."""
        if isinstance(data, str) and len(data) <= self.max_message_bytes:
            # The frame of every 20 ms of a call, when it has the usual shape: no json.loads.
            parsed = parse_append_frame(data)
            if parsed is not None:
                self._receive(parsed[0], parsed[1], now)
                return parsed[0]
        try:
            obj = decode_frame(data, self.max_message_bytes)
        except InvalidRequest as exc:
            self._error(exc, None)
            return None
        self.receive(obj, now)
        return obj

    def append_audio(self, pcm: bytes, now: float) -> None:
        """Audio from a media track (PCM16 24 kHz mono, as :mod:`services.webrtc.track` reads
        it), handled as an ``input_audio_buffer.append`` in the session's input format."""
        if self._track_audio.dst != self.input.fmt:
            self._track_audio = AudioConverter(PCM, self.input.fmt)
        audio = self._track_audio.feed(pcm)
        if audio:
            self._receive(_TRACK_APPEND, AudioAppend(None, audio), now)

    def truncate_heard(self, item_id: str, content_index: int, audio_end_ms: int) -> bool:
        """Over WebRTC the server owns playback: cut an assistant item at what its track played
        (reference/realtime-protocol.md, section 5.2). No event; ``False`` if the item cannot
        be cut (gone, still being generated, or shorter)."""
        try:
            self.conversation.truncate(item_id, content_index, audio_end_ms)
        except InvalidRequest:
            return False
        return True

    def receive(self, obj: dict[str, Any], now: float) -> None:
        """Handle one parsed client event. Never raises: problems become ``error`` events."""
        self._receive(obj, None, now)

    def _receive(self, obj: dict[str, Any], event: ClientEvent | None, now: float) -> None:
        """:meth:`receive`, for ``obj`` already parsed into ``event`` if that is given."""
        self.tick(now)  # deltas due before this event go out before its answer
        event_id = event_id_of(obj)
        try:
            if self.session is None:
                raise InvalidRequest(
                    "No session exists on this connection (the call_id was not found).",
                    code="session_not_found",
                )
            if event is None:
                event = parse_client_event(obj, input_format=self.input.fmt, new_id=self.new_id)
            self._dispatch(event, now)
        except InvalidRequest as exc:
            self._error(exc, event_id, str(obj.get("type"))[:60])
        except Exception:
            # A bug must cost one event, not the connection (nor any other connection).
            log.exception("local model: internal error on a %.60s event", obj.get("type"))
            self._error(
                InvalidRequest(
                    "The server had an error while processing your request.",
                    code=None,
                    error_type="server_error",
                ),
                event_id,
            )
        self.tick(now)

    # ----- dispatch -----------------------------------------------------------------------

    def _dispatch(self, event: ClientEvent, now: float) -> None:
        if isinstance(event, SessionUpdate):
            assert self.session is not None
            self.session = apply_session_update(
                self.session, event.session, voice_locked=self._outbox.audio_sent
            )
            self._apply_session()
            self._emit({"type": "session.updated", "session": copy.deepcopy(self.session)})
        elif isinstance(event, AudioAppend):
            self._append(event.audio, now)
        elif isinstance(event, AudioCommit):
            self._manual_commit()
        elif isinstance(event, AudioClear):
            self.input.clear()
            self._turn_item_id = None
            self._emit({"type": "input_audio_buffer.cleared"})
            self.responder.end_echo()
        elif isinstance(event, ItemCreate):
            previous = self.conversation.add(event.item, event.previous_item_id)
            self._emit_item_added(event.item, previous)
            if event.item.item["type"] == "function_call_output":
                output = event.item.item
                self.responder.player.note_output(output["call_id"], output["output"])
        elif isinstance(event, ItemRetrieve):
            item = self.conversation.get(event.item_id)
            self._emit({"type": "conversation.item.retrieved", "item": item.wire_with_audio()})
        elif isinstance(event, ItemDelete):
            self.conversation.delete(event.item_id)
            self._emit({"type": "conversation.item.deleted", "item_id": event.item_id})
        elif isinstance(event, ItemTruncate):
            self.conversation.truncate(event.item_id, event.content_index, event.audio_end_ms)
            self._emit(
                {
                    "type": "conversation.item.truncated",
                    "item_id": event.item_id,
                    "content_index": event.content_index,
                    "audio_end_ms": event.audio_end_ms,
                }
            )
        elif isinstance(event, ResponseCreate):
            assert self.session is not None
            self.responder.create(event.params, self.session, now)
        elif isinstance(event, ResponseCancel):
            self.responder.cancel(event.response_id)
        elif isinstance(event, OutputAudioClear):
            raise InvalidRequest(
                "output_audio_buffer.clear is only supported over WebRTC and SIP; over a "
                "WebSocket send response.cancel and conversation.item.truncate.",
                code="unsupported_event",
                param="type",
            )

    def _apply_session(self) -> None:
        assert self.session is not None
        audio_in = self.session["audio"]["input"]
        fmt = AudioFormat.from_wire(audio_in["format"])
        if fmt != self.input.fmt:
            self.responder.end_echo()  # its converter decodes the old format
        self.input.set_format(fmt)
        turn_detection = audio_in["turn_detection"]
        if turn_detection != self._turn_detection:
            self.input.set_vad(vad_from_turn_detection(turn_detection))
            self._turn_detection = copy.deepcopy(turn_detection)

    # ----- input audio and turns ----------------------------------------------------------

    def _append(self, audio: bytes, now: float) -> None:
        assert self.session is not None
        if self.mode == "echo":
            self.responder.echo(audio, self.session, self.input.fmt, now)
        for vad_event, _ in self.input.append(audio):
            if isinstance(vad_event, SpeechStarted):
                self._speech_started(vad_event.audio_start_ms)
            else:
                self._speech_stopped(vad_event.audio_end_ms, now)

    def _speech_started(self, audio_start_ms: int) -> None:
        self._turn_item_id = self.new_id("item")
        self._turn_start_ms = audio_start_ms
        self._emit(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": audio_start_ms,
                "item_id": self._turn_item_id,
            }
        )
        if self._turn_detection_flag("interrupt_response"):
            self.responder.interrupt()

    def _speech_stopped(self, audio_end_ms: int, now: float) -> None:
        item_id = self._turn_item_id or self.new_id("item")
        self._turn_item_id = None
        self._emit(
            {
                "type": "input_audio_buffer.speech_stopped",
                "audio_end_ms": audio_end_ms,
                "item_id": item_id,
            }
        )
        self._commit(item_id, self.input.take(self._turn_start_ms, audio_end_ms))
        if self.responder.end_echo():
            return  # in echo mode the echo is the answer
        if self._turn_detection_flag("create_response") and self.responder.default() is None:
            assert self.session is not None
            self.responder.create(ResponseParams(), self.session, now)

    def _manual_commit(self) -> None:
        buffered = self.input.duration_ms
        if buffered < MIN_COMMIT_MS:
            raise InvalidRequest(
                f"Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {buffered:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
            )
        item_id = self._turn_item_id or self.new_id("item")
        self._turn_item_id = None
        self._commit(item_id, self.input.take())
        if self.input.vad is not None:
            self.input.vad.reset()
        self.responder.end_echo()

    def _commit(self, item_id: str, audio: bytes) -> None:
        """The user audio item of a turn: committed, added, done, then its transcript."""
        stored = StoredItem.user_audio(item_id, audio, self.input.fmt)
        previous = self.conversation.add(stored)
        self._emit(
            {
                "type": "input_audio_buffer.committed",
                "previous_item_id": previous,
                "item_id": item_id,
            }
        )
        self._emit_item_added(stored, previous)
        assert self.session is not None
        if self.session["audio"]["input"]["transcription"] is None:
            return
        # The transcript is what the script says the caller said (else a placeholder).
        scripted = self.responder.player.user_transcript() if self.mode == "scripted" else None
        transcript = scripted or "(audio)"
        stored.item["content"][0]["transcript"] = transcript
        ids = {"item_id": item_id, "content_index": 0}
        usage = transcription_usage(self.input.fmt.duration_ms(len(audio)), transcript)
        self._emit(
            {
                "type": "conversation.item.input_audio_transcription.delta",
                **ids,
                "delta": transcript,
            }
        )
        self._emit(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                **ids,
                "transcript": transcript,
                "usage": usage,
            }
        )

    def _turn_detection_flag(self, name: str) -> bool:
        assert self.session is not None
        turn_detection = self.session["audio"]["input"]["turn_detection"]
        return bool(turn_detection and turn_detection.get(name))

    def _emit_item_added(self, stored: StoredItem, previous: str | None) -> None:
        for kind in ("conversation.item.added", "conversation.item.done"):
            self._emit({"type": kind, "previous_item_id": previous, "item": stored.wire()})

    # ----- output -------------------------------------------------------------------------

    def _emit(self, event: dict[str, Any]) -> None:
        self._outbox.emit(event)

    def _error(self, exc: InvalidRequest, event_id: str | None, about: str = "frame") -> None:
        log.warning("local model: rejected client %s (%s): %s", about, exc.code, exc)
        self._emit(
            {
                "type": "error",
                "error": {
                    "type": exc.error_type,
                    "code": exc.code,
                    "message": str(exc),
                    "param": exc.param,
                    "event_id": event_id,
                },
            }
        )
