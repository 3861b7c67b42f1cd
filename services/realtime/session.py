"""``RealtimeSession``: an agent on a live Realtime connection.

It connects a transport with the agent's initial config, keeps a local projection of the
conversation, runs the model's function calls through a :class:`ToolRunner`, hands the call over
between agents, asks the application to approve sensitive tools, and runs output guardrails on
what the model says. Session events (all emitted with positional arguments):

- ``agent_start(agent)``, ``agent_end(agent, text)``
- ``audio(TransportAudio)``, ``audio_start(agent)``, ``audio_stopped(agent)``,
  ``audio_interrupted(agent)``
- ``history_added(item)``, ``history_updated(items)``
- ``tool_start(agent, tool, call)``, ``tool_end(agent, tool, result, call)``,
  ``tool_approval_requested(agent, tool, call)``
- ``guardrail_tripped(agent, GuardrailTripped)``, ``handoff(from_agent, to_agent)``
- ``error(TransportErrorEvent)``, ``transport_event(raw)``
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from services.errors import ToolError, UserError
from services.realtime import server_events as se
from services.realtime.agent import Handoff, RealtimeAgent
from services.realtime.emitter import EventEmitter
from services.realtime.guardrails import GuardrailTripped
from services.realtime.history import History, replay_items
from services.realtime.items import MessageItem, RealtimeItem
from services.realtime.playback import PlaybackSource
from services.realtime.session_config import build_initial_config
from services.realtime.tools import (
    FunctionTool,
    InProcessToolRunner,
    ToolCall,
    ToolContext,
    ToolResult,
    ToolRunner,
)
from services.realtime.transports.base import (
    RealtimeTransportLayer,
    TranscriptDelta,
    TransportAudio,
    TransportErrorEvent,
    TransportToolCall,
)
from services.realtime.transports.websocket import OpenAIRealtimeWebSocket

logger = logging.getLogger(__name__)

REJECTED_OUTPUT = "The user did not approve this tool call."
# Items replayed into a new connection after the old one was lost (the most recent ones).
REPLAY_ITEMS = 50


def guardrail_feedback(name: str) -> str:
    return (
        f"Your last answer was stopped by the '{name}' guardrail. "
        "Answer again without that content."
    )


class RealtimeSession(EventEmitter):
    def __init__(
        self,
        agent: RealtimeAgent,
        *,
        transport: RealtimeTransportLayer | str = "websocket",
        model: str | None = None,
        config: Mapping[str, Any] | None = None,
        context: Any = None,
        tool_runner: ToolRunner | None = None,
        playback: PlaybackSource | None = None,
        guardrail_debounce_chars: int = 100,
    ) -> None:
        super().__init__()
        if isinstance(transport, str):
            if transport != "websocket":
                raise UserError(f"unknown transport {transport!r}; pass a transport instance")
            transport = OpenAIRealtimeWebSocket(model=model, playback=playback)
        self._transport: RealtimeTransportLayer = transport
        self._agent = agent
        self._model = model
        self._config = dict(config or {})
        self.context = context
        self._runner: ToolRunner = tool_runner or InProcessToolRunner()
        self._in_process = InProcessToolRunner()
        self._debounce = max(1, guardrail_debounce_chars)
        self.history_store = History()
        self._pending_approval: dict[str, tuple[FunctionTool, TransportToolCall]] = {}
        self._approved: set[str] = set()
        self._tool_tasks: set[asyncio.Task[None]] = set()
        self._audio_started = False
        self._guard_checked: dict[str, int] = {}
        self._tripped_items: set[str] = set()
        self._closed = False
        # Tool results that finished while the connection was down: replayed with the history,
        # then the model is asked to answer them.
        self._owed_outputs = 0
        self._wire()

    # ----- properties ----------------------------------------------------------------------------

    @property
    def transport(self) -> RealtimeTransportLayer:
        return self._transport

    @property
    def current_agent(self) -> RealtimeAgent:
        return self._agent

    @property
    def history(self) -> list[RealtimeItem]:
        return self.history_store.items

    # ----- lifecycle -----------------------------------------------------------------------------

    def initial_config(self) -> dict[str, Any]:
        return build_initial_config(
            self._agent, self._config, model=self._model, context=self.context
        )

    async def connect(
        self, *, api_key: str | None = None, url: str | None = None, call_id: str | None = None
    ) -> None:
        config = self.initial_config()
        model = config.pop("model")
        await self._transport.connect(
            api_key=api_key,
            model=None if call_id else model,
            url=url,
            call_id=call_id,
            initial_session_config=config,
        )

    async def reconnect(
        self, *, api_key: str | None = None, url: str | None = None, replay: int = REPLAY_ITEMS
    ) -> int:
        """Open a new connection after the last one was lost and carry the conversation over:
        the current agent's configuration, then the ``replay`` most recent items of the history
        (as text; see :func:`~services.realtime.history.replay_items`), in order. Tool calls
        still running finish on the new connection; results that came in during the gap are
        replayed and answered. Returns the number of items replayed."""
        await self.connect(api_key=api_key, url=url)
        items = replay_items(self.history, replay)
        self._transport.reset_history([], items)
        if self._owed_outputs:
            self._owed_outputs = 0
            self._transport.request_response()
        return len(items)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tool_tasks):
            task.cancel()
        if self._tool_tasks:
            await asyncio.gather(*self._tool_tasks, return_exceptions=True)
        await self._transport.close()

    async def __aenter__(self) -> RealtimeSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ----- application → model --------------------------------------------------------------------

    def send_audio(self, audio: bytes, *, commit: bool = False) -> None:
        self._transport.send_audio(audio, commit=commit)

    def send_message(self, message: str | dict[str, Any]) -> None:
        self._transport.send_message(message)

    def interrupt(self) -> None:
        self._transport.interrupt()

    def mute(self, muted: bool) -> None:
        self._transport.mute(muted)

    async def update_agent(self, agent: RealtimeAgent) -> None:
        """Switch agent: new instructions, tools (and voice, if nothing was said yet)."""
        self._agent = agent
        self._transport.update_session_config(self._agent_config(agent))

    def _agent_config(self, agent: RealtimeAgent) -> dict[str, Any]:
        return {
            "instructions": agent.resolve_instructions(self.context),
            "tools": agent.tool_definitions(),
        }

    def approve(self, call_id: str) -> None:
        """Run a tool call that waits for approval (``tool_approval_requested``)."""
        pending = self._pending_approval.pop(call_id, None)
        if pending is None:
            raise UserError(f"no tool call {call_id} is waiting for approval")
        self._approved.add(call_id)
        self._spawn(self._run_tool(*pending))

    def reject(self, call_id: str, message: str = REJECTED_OUTPUT) -> None:
        pending = self._pending_approval.pop(call_id, None)
        if pending is None:
            raise UserError(f"no tool call {call_id} is waiting for approval")
        _, call = pending
        self._transport.send_function_call_output(call, message)
        self.history_store.set_tool_output(call.call_id, message)
        self.emit("history_updated", self.history)

    # ----- model → application --------------------------------------------------------------------

    def _wire(self) -> None:
        t = self._transport
        t.on("*", lambda raw: self.emit("transport_event", raw))
        t.on("audio", self._on_audio)
        t.on("audio_done", lambda _item: self.emit("audio_stopped", self._agent))
        t.on("audio_interrupted", lambda: self.emit("audio_interrupted", self._agent))
        t.on("turn_started", self._on_turn_started)
        t.on("turn_done", self._on_turn_done)
        t.on("item_update", self._on_item_update)
        t.on("item_deleted", self._on_item_deleted)
        t.on("audio_transcript_delta", self._on_transcript_delta)
        t.on("response.output_text.delta", self._on_text_delta)
        t.on("response.output_audio_transcript.done", self._on_transcript_done)
        t.on("response.output_text.done", self._on_transcript_done)
        t.on("conversation.item.input_audio_transcription.completed", self._on_input_transcript)
        t.on("function_call", self._on_function_call)
        t.on("error", self._on_error)

    def _on_error(self, event: TransportErrorEvent) -> None:
        self.emit("error", event)

    def _on_audio(self, audio: TransportAudio) -> None:
        if not self._audio_started:
            self._audio_started = True
            self.emit("audio_start", self._agent)
        self.emit("audio", audio)

    def _on_turn_started(self, response: dict[str, Any]) -> None:
        self._audio_started = False
        self.emit("agent_start", self._agent)

    def _on_turn_done(self, response: dict[str, Any]) -> None:
        self.emit("agent_end", self._agent, _response_text(response))

    def _on_item_update(self, item: RealtimeItem, previous_item_id: str | None) -> None:
        raw_retrieved = (
            previous_item_id is None and self.history_store.get(item.item_id) is not None
        )
        added = self.history_store.upsert(
            item, previous_item_id, authoritative=raw_retrieved and _has_text(item)
        )
        if added:
            self.emit("history_added", item)
        self.emit("history_updated", self.history)

    def _on_item_deleted(self, item_id: str) -> None:
        if self.history_store.delete(item_id):
            self.emit("history_updated", self.history)

    def _on_transcript_delta(self, delta: TranscriptDelta) -> None:
        item = self.history_store.append_transcript(delta.item_id, delta.delta)
        self.emit("history_updated", self.history)
        self._maybe_run_guardrails(item, final=False)

    def _on_text_delta(self, event: se.OutputTextDelta) -> None:
        item = self.history_store.append_transcript(event.item_id, event.delta, text=True)
        self.emit("history_updated", self.history)
        self._maybe_run_guardrails(item, final=False)

    def _on_transcript_done(self, event: se.OutputAudioTranscriptDone | se.OutputTextDone) -> None:
        item = self.history_store.get(event.item_id)
        if isinstance(item, MessageItem):
            self._maybe_run_guardrails(item, final=True)

    def _on_input_transcript(self, event: se.InputAudioTranscriptionCompleted) -> None:
        if self.history_store.set_input_transcript(
            event.item_id, event.content_index, event.transcript
        ):
            self.emit("history_updated", self.history)

    # ----- tools ---------------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tool_tasks.add(task)
        task.add_done_callback(self._tool_tasks.discard)

    def _on_function_call(self, call: TransportToolCall) -> None:
        handoff = self._agent.find_handoff(call.name)
        if handoff is not None:
            self._handoff(handoff, call)
            return
        tool = self._agent.find_tool(call.name)
        if tool is None:
            # As the JS SDK: tell the model, but do not ask for another response.
            self._transport.send_function_call_output(
                call, f"Tool {call.name} not found", start_response=False
            )
            self.emit(
                "error", TransportErrorEvent(ToolError(f"model called unknown tool {call.name!r}"))
            )
            return
        if tool.needs_approval and call.call_id not in self._approved:
            self._pending_approval[call.call_id] = (tool, call)
            self.emit("tool_approval_requested", self._agent, tool, call)
            return
        self._spawn(self._run_tool(tool, call))

    async def _run_tool(self, tool: FunctionTool, call: TransportToolCall) -> None:
        agent = self._agent
        tool_call = ToolCall(
            call.call_id, call.name, call.arguments, call.item_id, call.response_id
        )
        ctx = ToolContext(call=tool_call, agent_name=agent.name, context=self.context)
        self.emit("tool_start", agent, tool, tool_call)
        runner = self._in_process if tool.in_process else self._runner
        try:
            result = await runner.run(tool, ctx)
        except Exception:
            logger.exception("tool runner failed for %s", tool.name)
            result = ToolResult("An error occurred while running the tool.", "error")
        if self._closed:
            return
        if self._transport.status == "connected":
            self._transport.send_function_call_output(call, result.output)
        else:
            self._owed_outputs += 1  # a reconnect replays it (:meth:`reconnect`)
        self.history_store.set_tool_output(call.call_id, result.output)
        self.emit("tool_end", agent, tool, result, tool_call)
        self.emit("history_updated", self.history)

    def _handoff(self, handoff: Handoff, call: TransportToolCall) -> None:
        previous, self._agent = self._agent, handoff.agent
        self._transport.update_session_config(self._agent_config(handoff.agent))
        self._transport.send_function_call_output(call, handoff.transfer_message())
        self.emit("handoff", previous, handoff.agent)

    # ----- guardrails ----------------------------------------------------------------------------

    def _maybe_run_guardrails(self, item: MessageItem, *, final: bool) -> None:
        guardrails = self._agent.output_guardrails
        if not guardrails or item.item_id in self._tripped_items:
            return
        text = item.text
        checked = self._guard_checked.get(item.item_id, 0)
        # Debounced: run each time another `debounce` characters arrived, and once at the end.
        if not final and len(text) - checked < self._debounce:
            return
        if final and checked == len(text) and checked:
            return
        self._guard_checked[item.item_id] = len(text)
        self._spawn(self._run_guardrails(item.item_id, text))

    async def _run_guardrails(self, item_id: str, text: str) -> None:
        agent = self._agent
        results = await asyncio.gather(
            *(g.run(self.context, agent, text) for g in agent.output_guardrails),
            return_exceptions=True,
        )
        for guardrail, result in zip(agent.output_guardrails, results, strict=True):
            if isinstance(result, BaseException):
                logger.error("guardrail %s failed", guardrail.name, exc_info=result)
                continue
            if result.tripwire_triggered and item_id not in self._tripped_items:
                self._tripped_items.add(item_id)
                self.emit(
                    "guardrail_tripped",
                    agent,
                    GuardrailTripped(guardrail.name, result, item_id, text),
                )
                if self._closed or self._transport.status != "connected":
                    return
                self._transport.interrupt()
                self._transport.send_message(guardrail_feedback(guardrail.name))
                return


def _has_text(item: RealtimeItem) -> bool:
    return isinstance(item, MessageItem) and bool(item.content)


def _response_text(response: dict[str, Any]) -> str:
    """The last transcript or text of a response's output (``agent_end``'s text)."""
    text = ""
    for item in response.get("output") or []:
        if isinstance(item, dict) and item.get("type") == "message":
            for part in item.get("content") or []:
                if isinstance(part, dict):
                    value = part.get("transcript") or part.get("text")
                    if isinstance(value, str) and value:
                        text = value
    return text
