"""The model side of one session: which responses run, what they say, and their speech.

At most one response runs in the default conversation (a second ``response.create`` is an error,
reference/realtime-protocol.md, section 5.1); out-of-band responses (``conversation: "none"``) may
run beside it. In echo mode an open "echo" response carries appended audio straight back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from .audio import PCM, AudioConverter, AudioFormat, convert, encode, resample
from .client_events import ResponseParams
from .conversation import Conversation, StoredItem
from .outbox import Outbox
from .replies import CallTool, Replay, Reply, ScriptPlayer, echo_reply
from .responses import Response, ResponseSetup
from .speech import SpeechSynthesizer
from .usage import context_tokens
from .validation import InvalidRequest

__all__ = ["Responder"]


class Responder:
    def __init__(
        self,
        *,
        mode: Literal["echo", "scripted"],
        player: ScriptPlayer,
        speech: SpeechSynthesizer,
        conversation: Conversation,
        out: Outbox,
        new_id: Callable[[str], str],
        speed: float,
        chunk_ms: int,
    ) -> None:
        self.mode = mode
        self.player = player
        self._speech = speech
        self._conversation = conversation
        self._out = out
        self._new_id = new_id
        self._speed = speed
        self._chunk_ms = chunk_ms
        self._active: list[Response] = []
        self._echo: Response | None = None
        self._echo_converter: AudioConverter | None = None
        self._speech_wanted: list[tuple[str, str]] = []

    # ----- time and speech ----------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return min((d for r in self._active if (d := r.next_deadline()) is not None), default=None)

    def tick(self, now: float) -> None:
        if not self._active:
            return
        self._poll_speech(now)
        for response in self._active:
            response.advance(now)
        self._drop_finished()

    def speech_requests(self) -> list[tuple[str, str]]:
        wanted, self._speech_wanted = self._speech_wanted, []
        return wanted

    def _poll_speech(self, now: float) -> None:
        for response in self._active:
            if not response.waiting_for_audio:
                continue
            key = (response.text, response.setup.voice)
            samples = self._speech.lookup(*key)
            if samples is None:
                if key not in self._speech_wanted:
                    self._speech_wanted.append(key)
                continue
            fmt = response.setup.output_format
            response.provide_audio(encode(resample(samples, PCM.rate, fmt.rate), fmt), now)

    # ----- starting and stopping ----------------------------------------------------------

    def default(self) -> Response | None:
        """The in-progress response of the default conversation, if any."""
        for response in self._active:
            if response.setup.conversation is not None and not response.done:
                return response
        return None

    def create(self, params: ResponseParams, session: dict[str, Any], now: float) -> None:
        active = self.default()
        if params.conversation == "auto" and active is not None:
            raise InvalidRequest(
                f"Conversation already has an active response in progress: {active.id}. Wait "
                "until the response is finished before creating a new one.",
                code="conversation_already_has_active_response",
            )
        response = self._start(params, session, now)
        reply = self._reply(params, session)
        if isinstance(reply, CallTool):
            call_id = self._new_id("call")
            self.player.call_started(call_id)
            response.start_function_call(reply.name, reply.arguments, call_id)
        elif isinstance(reply, Replay) and response.setup.modality == "audio":
            audio = convert(reply.audio, reply.fmt, response.setup.output_format)
            response.start_message(reply.transcript, audio)
        else:
            response.start_message(reply.transcript if isinstance(reply, Replay) else reply.text)
        self.tick(now)

    def echo(
        self, audio: bytes, session: dict[str, Any], input_fmt: AudioFormat, now: float
    ) -> None:
        """Echo mode: stream ``audio`` back, opening an echo response if none is running."""
        if not audio or session["output_modalities"] != ["audio"]:
            return
        if self._echo is None and self.default() is None:
            self._echo = self._start(ResponseParams(), session, now)
            self._echo_converter = AudioConverter(input_fmt, self._echo.setup.output_format)
            self._echo.start_echo()
        if self._echo is not None and self._echo_converter is not None:
            self._echo.push_audio(self._echo_converter.feed(audio))

    def end_echo(self) -> bool:
        """Complete the echo response; ``False`` if there was none."""
        if self._echo is None:
            return False
        self._echo.finish()
        self._drop_finished()
        return True

    def interrupt(self) -> None:
        """VAD heard the caller: cancel the default response (never the echo, which is the
        caller's own audio)."""
        active = self.default()
        if active is not None and active is not self._echo:
            active.cancel("turn_detected")
            self._drop_finished()

    def cancel(self, response_id: str | None) -> None:
        if response_id is None:
            target = self.default()
        else:
            target = next((r for r in self._active if r.id == response_id), None)
        if target is None or target.done:
            shown = f" with id {response_id}" if response_id else ""
            raise InvalidRequest(
                f"Cancellation failed: no active response found{shown}.",
                code="response_cancel_not_active",
            )
        target.cancel("client_cancelled")
        self._drop_finished()

    # ----- helpers ------------------------------------------------------------------------

    def _start(self, params: ResponseParams, session: dict[str, Any], now: float) -> Response:
        out = session["audio"]["output"]
        modalities = params.output_modalities or session["output_modalities"]
        setup = ResponseSetup(
            id=self._new_id("resp"),
            conversation=None if params.conversation == "none" else self._conversation,
            modality="text" if modalities == ["text"] else "audio",
            output_format=AudioFormat.from_wire(params.output_format or out["format"]),
            voice=params.voice or out["voice"],
            max_output_tokens=params.max_output_tokens or session["max_output_tokens"],
            metadata=params.metadata,
            chunk_ms=self._chunk_ms,
            speed=self._speed,
            context_tokens=context_tokens(session["instructions"], self._conversation),
        )
        response = Response(setup, self._out, now, self._new_id)
        self._active.append(response)
        return response

    def _reply(self, params: ResponseParams, session: dict[str, Any]) -> Reply:
        if self.mode == "echo":
            given = [i for i in params.input or [] if isinstance(i, StoredItem)]
            return echo_reply(given or list(self._conversation))
        choice = params.tool_choice or session["tool_choice"]
        tools = params.tools if params.tools is not None else session["tools"]
        names = set() if choice == "none" else {t["name"] for t in tools if t["type"] == "function"}
        return self.player.reply(names, out_of_band=params.conversation == "none")

    def _drop_finished(self) -> None:
        if not any(r.done for r in self._active):
            return  # the echo, if any, is among them: it is not done either
        self._active = [r for r in self._active if not r.done]
        if self._echo is not None and self._echo.done:
            self._echo = None
            self._echo_converter = None
