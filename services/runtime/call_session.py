"""``CallSession``: the per-call session actor — an asyncio actor hosted with hundreds of others
in one session-host process.

Each call has its own state: the :class:`RealtimeSession` with its model WebSocket, the playback
tracker fed by the ingress, the caller audio not yet appended, and the pending hang-up or
transfer. Inputs are handled as the host delivers them, in order and without a task switch
(:meth:`CallSession.push`): a per-call mailbox task cost a wake-up per 20 ms frame per call.
Caller audio is appended to the model once ``append_ms`` of it has gathered: every append is a
WebSocket message out and, for an echoing peer, one back, and messages, not bytes, are the cost
of the media path (bench/README.md). Model output leaves as :mod:`commands` through the host's
``out`` callback; call events go to the host's event sink. Nothing here touches another call, so
one call's failure ends that call only. A dropped model connection does not end the call: the
session reconnects and replays the conversation (:meth:`CallSession._reconnect`); only a model
away for ``ModelSettings.reconnect_s`` ends it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from services.agents.control import CallControl
from services.aio import Cancellable, Timers, sleep
from services.config import ModelSettings
from services.errors import CallSetupError, RealtimeProtocolError
from services.media.vocabulary import (
    MOVED,
    TRANSFER_REPORTED,
    AudioDone,
    CallEnded,
    CallerHungUp,
    CallInput,
    CallSpec,
    ClearPlayback,
    Command,
    Dtmf,
    Hangup,
    PlayAudio,
    PlaybackCut,
    Played,
    Transfer,
    TransferFailed,
)
from services.observability import logs, metrics
from services.realtime import server_events as se
from services.realtime.agent import RealtimeAgent
from services.realtime.audio_formats import bytes_per_ms, normalize_format
from services.realtime.history import replay_items
from services.realtime.items import RealtimeItem, item_from_wire
from services.realtime.playback import PlaybackTracker
from services.realtime.session import REPLAY_ITEMS, RealtimeSession
from services.realtime.tools import FunctionTool, ToolCall, ToolResult, ToolRunner
from services.realtime.transports.base import TransportAudio
from services.realtime.transports.sip import (
    OPENAI_SIP,
    CallGone,
    OpenAIRealtimeSIP,
    SipCallControl,
    check_transfer_target,
    rest_base,
    sip_accept_payload,
)
from services.realtime.transports.webrtc import OpenAIRealtimeWebRTC
from services.realtime.transports.websocket import OpenAIRealtimeWebSocket, WebSocketFactory
from services.runtime.conversations import ConversationStore, Items, MemoryConversations
from services.runtime.events import EventSink
from services.runtime.held_transcripts import HeldTranscripts, Line

logger = logging.getLogger(__name__)

# The outcome of a call that reached CALLRAY_MAX_CALL_SECONDS (it ends with the agent's goodbye).
MAX_DURATION = "max_duration"
# After the agent decides to hang up or transfer, its last words still play; the call ends at
# the end of that response, or after this long at the latest.
CONTROL_GRACE_S = 10.0
# A barge-in's truncation waits for the ingress to say what the caller had heard when playback
# stopped (PlaybackCut); if it never answers (it went away), our own tracker's figure is used.
PLAYBACK_CUT_WAIT_S = 0.5
# A dropped model connection is retried at once (within 250 ms, jittered so that the calls of
# a model server that restarted do not all come back in the same millisecond), then with a
# doubling back-off of at most 2 s, until ModelSettings.reconnect_s has passed.
# A call still up when its node must stop (the drain deadline passed) is not cut off in
# silence: the agent says goodbye, and the call ends when that is said (or after this long).
GOODBYE_INSTRUCTIONS = (
    "We have to end this call now for maintenance. Apologize in one short sentence, say the "
    "caller can call back, and say goodbye."
)
GOODBYE_GRACE_S = 8.0
# A call moved off a lost host starts on a new model session; the agent first says so.
RESUME_INSTRUCTIONS = (
    "The line dropped for a moment and the caller is still there. Say in one short sentence "
    "that you are back, and ask them to repeat what they said last."
)
RECONNECT_FIRST_S = 0.25
RECONNECT_MAX_S = 2.0


def reconnect_delay(attempt: int, rng: random.Random) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (0 is the first)."""
    if attempt == 0:
        return rng.uniform(0.05, RECONNECT_FIRST_S)
    return min(RECONNECT_MAX_S, RECONNECT_FIRST_S * 2.0**attempt) * rng.uniform(0.5, 1.0)


_KNOWN_EVENTS = frozenset(se.SERVER_EVENTS.classes)


def phone_config(audio_format: str) -> dict[str, Any]:
    """Session options for a phone leg: the caller's codec both ways (no transcoding), server VAD
    that interrupts the model on barge-in, transcripts of the caller."""
    fmt = normalize_format(audio_format)
    return {
        "audio": {
            "input": {
                "format": fmt,
                "transcription": {"model": "gpt-4o-mini-transcribe"},
                "turn_detection": {
                    "type": "server_vad",
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {"format": fmt},
        }
    }


class CallSession(CallControl):
    def __init__(
        self,
        spec: CallSpec,
        agent: RealtimeAgent,
        *,
        model: ModelSettings,
        model_url: str,
        tool_runner: ToolRunner,
        out: Callable[[Command], None],
        events: EventSink,
        on_end: Callable[[CallSession, str], None],
        clock: Callable[[], float] = time.monotonic,
        timers: Timers | None = None,
        append_ms: int = 20,
        create_websocket: WebSocketFactory | None = None,
        rng: random.Random | None = None,
        conversations: ConversationStore | None = None,
        save_record: Callable[[str, int, Items], None] | None = None,
        sip_calls: SipCallControl | None = None,
        max_call_s: float = 0.0,
    ) -> None:
        self.call_id = spec.call_id
        self._log = logs.for_call(logger, spec.call_id)
        self.spec = spec
        self._model = model
        self._model_url = model_url
        self._out = out
        self._events = events
        self._on_end = on_end
        self._clock = clock
        per_ms = bytes_per_ms(normalize_format(spec.audio_format))
        self.tracker = PlaybackTracker(per_ms)
        self._transcripts = HeldTranscripts(per_ms)
        self._transcript_timer: Any = None
        self._append_bytes = max(1, int(append_ms * per_ms))
        self._pending_audio = bytearray()
        # Playback is observed at the ingress, one hop away: truncations wait for its figure.
        self.transport: OpenAIRealtimeWebSocket | OpenAIRealtimeWebRTC
        # A call OpenAI's SIP connector holds: we accept it over REST, then attach (sip.py).
        self._sip = spec.transport == OPENAI_SIP
        self._sip_calls = sip_calls
        self._max_call_s = max_call_s
        self._max_timer: Any = None
        if self._sip:
            self.transport = OpenAIRealtimeSIP(
                model=model.model, playback=self.tracker, create_websocket=create_websocket
            )
        elif model.transport == "webrtc" and not spec.attach:
            # Over WebRTC the model truncates at what its track sent when we clear its buffer,
            # not at what this call's caller heard (which the ingress knows only later).
            self.transport = OpenAIRealtimeWebRTC(model=model.model, playback=self.tracker)
        else:
            self.transport = OpenAIRealtimeWebSocket(
                model=model.model, playback=self.tracker, create_websocket=create_websocket
            )
        self.transport.defer_truncation = True
        self._cut_timer: Cancellable | None = None
        self.session = RealtimeSession(
            agent,
            transport=self.transport,
            model=model.model,
            config=phone_config(spec.audio_format),
            context=self,
            tool_runner=tool_runner,
            playback=self.tracker,
        )
        self._pending_control: Command | None = None
        self._goodbye: Hangup | None = None
        self._control_timer: Cancellable | None = None
        self._started_at = clock()
        self.ended: str | None = None
        self._ending: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()  # built inside the host's event loop
        # The grace and cut deadlines; ``clock`` and ``timers`` are one virtual clock in tests.
        self._timers: Timers = timers or self._loop
        self._rng = rng or random.Random()
        self._reconnecting: asyncio.Future[None] | None = None
        # The call's conversation record (services/runtime/conversations.py): this session's
        # epoch fences its saves against a newer session of the same call elsewhere.
        self._conversations = conversations or MemoryConversations()
        self._save_record = save_record
        self._epoch = 0
        self._wire()

    # ----- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the model and greet (or, for a call moved here, replay its conversation and
        say the line dropped). Raises if the model cannot be reached."""
        self._epoch = await self._conversations.claim(self.call_id)
        record = await self._conversations.load(self.call_id) if self.spec.resumed else []
        begin = self._clock()
        if self._sip and not self.spec.resumed:
            await self._accept_sip()
        await self.session.connect(
            api_key=self._model.api_key.value or None,
            url=self._model_url,
            call_id=self.call_id if self.spec.attach else None,
        )
        metrics.model_connected(self._clock() - begin)
        if record:
            self.transport.reset_history([], self._replayable(record))
        if self.spec.resumed:
            self.session.transport.request_response({"instructions": RESUME_INSTRUCTIONS})
        elif self.spec.greet:
            self.session.transport.request_response()
        self._events.emit("call.started", self.call_id, transport=self.spec.transport)
        if self._max_call_s > 0:
            # From this session's start: a call moved to another host gets its full length
            # again there (its start is not carried across the move).
            self._max_timer = self._timers.call_later(
                self._max_call_s, self.say_goodbye, MAX_DURATION
            )

    async def _accept_sip(self) -> None:
        """Answer the SIP call at the model with the agent's config (the seed's
        ``calls.accept(call_id, buildInitialConfig(agent))``), before attaching to it. A 404
        means the caller hung up while the call was pending: it ends ``caller_gone``."""
        # A host shares one client; a session built on its own (tests) makes one for this.
        calls = self._sip_calls or SipCallControl(rest_base(self._model_url), self._model.api_key)
        try:
            await calls.accept(self.call_id, sip_accept_payload(self.session.initial_config()))
            metrics.openai_sip_control("accept", "ok")
        except CallGone:
            metrics.openai_sip_control("accept", "gone")
            self._log.info("the SIP caller hung up before the call was accepted")
            self._events.emit("call.ended", self.call_id, reason="caller_gone", duration_s=0.0)
            raise CallSetupError(
                "the caller hung up before the accept", reason="caller_gone"
            ) from None
        except Exception:
            metrics.openai_sip_control("accept", "failed")
            raise
        finally:
            if calls is not self._sip_calls:
                await calls.close()

    def _replayable(self, record: Items) -> list[RealtimeItem]:
        """The record's items; one that does not parse is left out (a resumed call goes on
        without it rather than not at all)."""
        items: list[RealtimeItem] = []
        for raw in record:
            try:
                item = item_from_wire(raw)
            except RealtimeProtocolError:
                self._log.warning("left an unreadable item out of the conversation record")
                continue
            if item is not None:
                items.append(item)
        return items

    async def end(self, reason: str) -> None:
        """End the call once: close the model session, tell the ingress, report it."""
        if self.ended is not None:
            return
        self.ended = reason
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        if self._control_timer is not None:
            self._control_timer.cancel()
        if self._cut_timer is not None:
            self._cut_timer.cancel()
        if self._transcript_timer is not None:
            self._transcript_timer.cancel()
        if self._max_timer is not None:
            self._max_timer.cancel()
        self._pending_audio.clear()
        self._write_transcript(self._transcripts.flush())
        try:
            await self.session.close()
        except Exception:
            self._log.warning("closing the model session of a call failed", exc_info=True)
        self._out(CallEnded(self.call_id, reason))
        duration = round(self._clock() - self._started_at, 3)
        # A call moved to another host has not ended: it goes on there.
        kind = "call.moved" if reason == MOVED else "call.ended"
        self._events.emit(kind, self.call_id, reason=reason, duration_s=duration)
        self._on_end(self, reason)

    # ----- inputs from the ingress -----------------------------------------------------------

    def push_media(self, data: bytes) -> None:
        """Caller audio; appended to the model once ``append_ms`` of it has gathered."""
        if self.ended is not None or self._ending is not None:
            return  # the call is ending: its audio has nowhere to go
        if self._reconnecting is not None:
            return  # no model to hear it: a dead socket must not be written to
        pending = self._pending_audio
        pending += data
        if len(pending) >= self._append_bytes:
            # Straight to the transport: RealtimeSession.send_audio only forwards to it.
            self.transport.send_audio(bytes(pending))
            pending.clear()

    def push(self, message: CallInput) -> None:
        """A control input, handled at once (the host delivers inputs in the ingress's order)."""
        if self.ended is not None:
            return
        if isinstance(message, Played):
            self.tracker.on_play_ms(message.item_id, message.content_index, message.ms)
            self._write_transcript(self._transcripts.played(message.item_id, message.ms))
        elif isinstance(message, PlaybackCut):
            self._settle_interruption(message.heard)
        elif isinstance(message, Dtmf):
            self._dtmf(message.digit)
        elif isinstance(message, CallerHungUp):
            self.end_soon(message.reason)
        elif isinstance(message, TransferFailed):
            self._log.info("transfer failed with SIP status %d", message.status)
            if self._reconnecting is None:
                self.session.send_message(
                    f"The transfer to {message.target} did not go through (SIP status "
                    f"{message.status}). The caller is still on the line with you: tell them, "
                    "and carry on."
                )

    def _dtmf(self, digit: str) -> None:
        self._events.emit("dtmf", self.call_id, digit=digit)
        if self.session.current_agent.dtmf_to_model and self._reconnecting is None:
            self.session.send_message(f"The caller pressed the key {digit}.")

    def _on_model_dtmf(self, event: se.DtmfReceived) -> None:
        """A SIP call's keypad press, detected by the model (reference §4.2)."""
        if self.ended is None:
            self._dtmf(event.event)

    def fail(self) -> None:
        """An input could not be handled (a bug, or a model socket gone mid-write): end this
        call only."""
        self._log.exception("call session failed")
        self.end_soon("session_error")

    # ----- CallControl (used by in-process tools) -------------------------------------------

    # Tools may call these from a worker thread (sync tools run off the event loop).

    def hang_up(self, reason: str = "agent_hangup") -> None:
        self._loop.call_soon_threadsafe(self._after_response, Hangup(self.call_id, reason))

    def transfer(self, target: str) -> None:
        if self._sip:
            check_transfer_target(target)  # a SIP REFER's Refer-To: refused to the model here
        self._loop.call_soon_threadsafe(self._after_response, Transfer(self.call_id, target))

    def _after_response(self, command: Hangup | Transfer) -> None:
        # The tool's result makes the model say goodbye first; act when that response is done.
        self._pending_control = command
        if self._control_timer is not None:
            self._control_timer.cancel()
        self._control_timer = self._timers.call_later(CONTROL_GRACE_S, self._do_control)

    def say_goodbye(self, reason: str) -> None:
        """End the call with a spoken goodbye (the node is stopping, the call reached
        ``CALLRAY_MAX_CALL_SECONDS``): the agent says it, then the call is hung up with
        ``reason``, within ``GOODBYE_GRACE_S`` at most."""
        if self.ended is not None or self._ending is not None:
            return
        hangup = Hangup(self.call_id, reason)
        if self._reconnecting is not None:
            self._goodbye_said(hangup)  # no model to say it
            return
        # Whatever the agent is saying gives way; the goodbye is the response marked as ours
        # (metadata comes back on response.done), so the end of another one does not count.
        self.transport.cancel_response()
        self.transport.request_response(
            {"instructions": GOODBYE_INSTRUCTIONS, "metadata": {"callray": "goodbye"}}
        )
        self._goodbye = hangup
        if self._control_timer is not None:
            self._control_timer.cancel()
        self._control_timer = self._timers.call_later(GOODBYE_GRACE_S, self._goodbye_said, hangup)

    def _on_turn_done(self, response: dict[str, Any]) -> None:
        metadata = response.get("metadata") or {}
        if self._goodbye is not None and metadata.get("callray") == "goodbye":
            self._goodbye_said(self._goodbye)

    def _goodbye_said(self, hangup: Hangup) -> None:
        if self.ended is not None or self._ending is not None:
            return
        self._goodbye = None
        self._out(hangup)
        self.end_soon(hangup.reason)

    def _do_control(self) -> None:
        command, self._pending_control = self._pending_control, None
        if command is None or self.ended is not None:
            return
        self._out(command)
        if isinstance(command, Transfer) and self.spec.transport in TRANSFER_REPORTED:
            return  # the ingress ends the call if the transfer succeeds, else says it failed
        reason = command.reason if isinstance(command, Hangup) else "transferred"
        self.end_soon(reason)

    # ----- model events → commands and call events ------------------------------------------

    def _wire(self) -> None:
        s, t = self.session, self.session.transport
        s.on("audio", self._on_audio)
        s.on("audio_interrupted", self._on_interrupted)
        s.on("tool_start", self._on_tool_start)
        s.on("tool_end", self._on_tool_end)
        s.on("agent_end", self._on_agent_end)
        t.on("*", self._on_raw)
        t.on("response.output_audio_transcript.done", self._on_assistant_transcript)
        t.on("conversation.item.truncated", self._on_truncated)
        t.on("conversation.item.input_audio_transcription.completed", self._on_user_transcript)
        t.on("connection_change", self._on_connection)
        t.on("audio_done", self._on_audio_done)
        t.on("turn_done", self._on_turn_done)
        t.on("input_audio_buffer.dtmf_event_received", self._on_model_dtmf)

    def _on_audio(self, audio: TransportAudio) -> None:
        metrics.media_frames("out", 1)
        self._transcripts.audio(audio.item_id, len(audio.data), self._clock())
        self._out(PlayAudio(self.call_id, audio.data, audio.item_id, audio.content_index))

    def _on_audio_done(self, item_id: str) -> None:
        self._out(AudioDone(self.call_id, item_id))
        self._write_transcript(self._transcripts.audio_done(item_id))

    def _on_interrupted(self, _agent: RealtimeAgent) -> None:
        self._out(ClearPlayback(self.call_id, time.time()))
        self._events.emit("interrupted", self.call_id)
        if self.transport.interruption_pending:
            if self._cut_timer is not None:
                self._cut_timer.cancel()
            self._cut_timer = self._timers.call_later(
                PLAYBACK_CUT_WAIT_S, self._settle_interruption, None
            )

    def _settle_interruption(self, heard: tuple[tuple[str, int, int], ...] | None) -> None:
        if self._cut_timer is not None:
            self._cut_timer.cancel()
            self._cut_timer = None
        if self.ended is None and self._reconnecting is None:
            # (During a reconnect the interrupted response is gone with the old connection.)
            self.transport.complete_interruption(heard)

    def _on_raw(self, raw: dict[str, Any]) -> None:
        kind = raw.get("type")
        metrics.model_event(kind if kind in _KNOWN_EVENTS else "unknown")  # bounded labels

    def _on_assistant_transcript(self, event: se.OutputAudioTranscriptDone) -> None:
        # Held until the caller has heard the item out, or cut it (held_transcripts.py).
        self._write_transcript(self._transcripts.text(event.item_id, event.transcript))

    def _overdue_transcripts(self) -> None:
        self._transcript_timer = None
        if self.ended is None:
            self._write_transcript(self._transcripts.overdue(self._clock()))

    def _on_truncated(self, event: se.ConversationItemTruncated) -> None:
        self._write_transcript(self._transcripts.cut(event.item_id, event.audio_end_ms))

    def _write_transcript(self, lines: list[Line]) -> None:
        # Called for every playback report: look for the next due line only when no timer
        # waits for one already.
        if self._transcript_timer is None:
            due = self._transcripts.next_due()
            if due is not None:
                self._transcript_timer = self._timers.call_later(
                    max(0.0, due - self._clock()), self._overdue_transcripts
                )
        for line in lines:
            fields: dict[str, Any] = {"item_id": line.item_id}
            if line.interrupted:
                fields |= {
                    "interrupted": True,
                    "heard_ms": line.heard_ms,
                    "audio_ms": line.audio_ms,
                }
            self._events.emit(
                "transcript", self.call_id, role="assistant", text=line.text, **fields
            )

    def _on_user_transcript(self, event: se.InputAudioTranscriptionCompleted) -> None:
        self._events.emit("transcript", self.call_id, role="user", text=event.transcript)
        self._save()

    def _save(self) -> None:
        """Save the conversation as another host would replay it (at each completed turn)."""
        if self._save_record is not None and self.ended is None:
            items = replay_items(self.session.history, REPLAY_ITEMS)
            self._save_record(self.call_id, self._epoch, [i.to_wire() for i in items])

    def _on_tool_start(self, _agent: RealtimeAgent, tool: FunctionTool, call: ToolCall) -> None:
        self._events.emit("tool.called", self.call_id, tool=tool.name, tool_call_id=call.call_id)

    def _on_tool_end(
        self, _agent: RealtimeAgent, tool: FunctionTool, result: ToolResult, call: ToolCall
    ) -> None:
        self._save()
        self._events.emit(
            "tool.returned",
            self.call_id,
            tool=tool.name,
            tool_call_id=call.call_id,
            outcome=result.outcome,
        )

    def _on_agent_end(self, _agent: RealtimeAgent, _text: str) -> None:
        self._save()
        if self._pending_control is not None:
            if self._control_timer is not None:
                self._control_timer.cancel()
            self._do_control()

    def _on_connection(self, status: str) -> None:
        if status == "disconnected" and self.spec.attach and self.ended is None:
            # The model closes an attached sideband when its call ends (the browser hung up,
            # the SIP caller sent BYE); there is nothing to reconnect to.
            self.end_soon("caller_hangup" if self._sip else "call_ended")
            return
        if (
            status == "disconnected"
            and self.ended is None
            and self._ending is None
            and self._reconnecting is None
        ):
            metrics.model_disconnected("lost")
            self._reconnecting = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        """Open a new model connection and carry the conversation over, or end the call
        ``model_unavailable`` once ``reconnect_s`` has passed. The caller's audio meanwhile is
        dropped (there is no model to hear it); the ingress keeps the call."""
        lost_at = self._clock()
        deadline = lost_at + self._model.reconnect_s
        self._events.emit("model.disconnected", self.call_id)
        attempt = 0
        try:
            while self.ended is None and self._ending is None:
                delay = reconnect_delay(attempt, self._rng)
                await sleep(self._timers, min(delay, max(0.0, deadline - self._clock())))
                if self._clock() >= deadline:
                    break
                attempt += 1
                try:
                    async with asyncio.timeout(max(0.05, deadline - self._clock())):
                        replayed = await self.session.reconnect(
                            api_key=self._model.api_key.value or None, url=self._model_url
                        )
                except Exception as exc:
                    self._log.info("model reconnect attempt %d failed: %s", attempt, exc)
                    continue
                gap = self._clock() - lost_at
                metrics.model_reconnected(gap)
                self._events.emit(
                    "model.reconnected",
                    self.call_id,
                    gap_ms=round(gap * 1000),
                    attempts=attempt,
                    replayed=replayed,
                )
                return
        finally:
            self._reconnecting = None
        if self.ended is None:
            metrics.model_reconnect_gave_up()
            target = self.session.current_agent.fallback_transfer
            if target:
                # No model to say goodbye: rather than leave the caller with nothing, hand the
                # call to where the agent says (a human queue).
                self._log.warning("model away for %.1f s; transferring", self._model.reconnect_s)
                self._out(Transfer(self.call_id, target))
                self.end_soon("model_unavailable_transferred")
                return
            self._log.warning("model away for %.1f s; ending the call", self._model.reconnect_s)
            self.end_soon("model_unavailable")

    def end_soon(self, reason: str) -> None:
        if self._ending is None:
            self._ending = asyncio.ensure_future(self.end(reason))
