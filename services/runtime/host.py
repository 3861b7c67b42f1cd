"""``CallHost``: many :class:`CallSession` actors in one process (a SessionHost's logic).

A Ray actor is a whole process (~48 MiB and 0.1 to 1 s to start, reference/feasibility.md §2), so
calls are hosted: each is an asyncio actor here, addressed by call id. Media crosses the process
boundary on the media channel (:mod:`services.media.channel`), never as actor calls: the channel
server hands each batch of inputs an ingress sent to :meth:`CallHost.feed`, and every command a
call produces goes into its ingress's :meth:`CallHost.outbox`, from which the channel pushes it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

from services.agents.registry import AgentRegistry
from services.config import ModelSettings
from services.errors import CallSetupError, ConfigError
from services.media.channel import Input, Outbox, command_outbox
from services.media.vocabulary import MOVED, CallSpec, Command, MoveCall
from services.observability import metrics
from services.realtime.tools import ToolRunner
from services.realtime.transports.sip import OPENAI_SIP, SipCallControl, rest_base
from services.runtime.call_session import CallSession
from services.runtime.conversations import (
    ConversationStore,
    ConversationWriter,
    MemoryConversations,
)
from services.runtime.events import EventSink

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class HostStats:
    host_id: str
    calls: int
    capacity: int
    frames_in: int
    unknown_frames: int


class CallHost:
    def __init__(
        self,
        host_id: str,
        *,
        model: ModelSettings,
        model_url: str,
        agents: AgentRegistry,
        tool_runner: ToolRunner,
        events: EventSink,
        capacity: int = 500,
        on_call_end: Callable[[str, str], None] | None = None,
        setup_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        append_ms: int = 20,
        conversations: ConversationStore | None = None,
        max_call_s: float = 0.0,
    ) -> None:
        self.host_id = host_id
        self._max_call_s = max_call_s
        # Each call's conversation, saved at each turn so another host can resume the call.
        self._conversations = conversations or MemoryConversations()
        self._records = ConversationWriter(self._conversations, on_superseded=self._moved_away)
        self._append_ms = append_ms
        self.capacity = capacity
        self._model = model
        self._model_url = model_url
        self._agents = agents
        self._runner = tool_runner
        self._events = events
        self._on_call_end = on_call_end
        self._setup_timeout = setup_timeout_s
        self._clock = clock
        self.calls: dict[str, CallSession] = {}
        self._outboxes: dict[str, Outbox[Command]] = {}
        self._frames_in = 0
        self._unknown_frames = 0
        # Call control of SIP calls the model answers (calls.accept), made at the first one.
        self._sip_calls: SipCallControl | None = None

    # ----- calls ---------------------------------------------------------------------------------

    async def open_call(self, spec: CallSpec) -> float:
        """Open a call and connect its model session; returns the setup time in seconds."""
        begin = self._clock()
        if spec.call_id in self.calls:
            raise CallSetupError(f"call {spec.call_id} is already open here", reason="duplicate")
        if len(self.calls) >= self.capacity:
            raise CallSetupError("host is full", reason="host_full")
        try:
            agent = self._agents.get(spec.agent)
        except ConfigError as exc:
            metrics.call_outcome(spec.transport, "unknown_agent")
            raise CallSetupError(str(exc), reason="unknown_agent") from exc
        if spec.transport == OPENAI_SIP and self._sip_calls is None:
            self._sip_calls = SipCallControl(rest_base(self._model_url), self._model.api_key)
        call = CallSession(
            spec,
            agent,
            model=self._model,
            model_url=self._model_url,
            tool_runner=self._runner,
            out=self.outbox(spec.ingress_id).put,
            events=self._events,
            on_end=self._ended,
            clock=self._clock,
            append_ms=self._append_ms,
            conversations=self._conversations,
            save_record=self._records.save,
            sip_calls=self._sip_calls,
            max_call_s=self._max_call_s,
        )
        self.calls[spec.call_id] = call
        try:
            async with asyncio.timeout(self._setup_timeout):
                await call.start()
        except (Exception, asyncio.CancelledError) as exc:
            self.calls.pop(spec.call_id, None)
            # A session that knows why (a SIP caller gone before the accept) says so.
            reason = exc.reason if isinstance(exc, CallSetupError) else "model_unreachable"
            metrics.call_outcome(spec.transport, reason)
            await call.session.close()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise CallSetupError(
                f"could not reach the model for call {spec.call_id}: {exc}", reason=reason
            ) from None
        setup = self._clock() - begin
        metrics.call_started(spec.transport, self.host_id, setup)
        return setup

    def _ended(self, call: CallSession, reason: str) -> None:
        if self.calls.pop(call.call_id, None) is not None:
            metrics.call_ended(call.spec.transport, self.host_id, reason)
            if self._on_call_end is not None:
                self._on_call_end(call.call_id, reason)

    def _moved_away(self, call_id: str) -> None:
        """A newer session owns the call (its host was taken for lost, it was not): end ours."""
        call = self.calls.get(call_id)
        if call is not None:
            logger.warning("call moved to another host; ending it here", extra={"call_id": call_id})
            call.end_soon(MOVED)

    async def close_call(self, call_id: str, reason: str = "closed") -> bool:
        call = self.calls.get(call_id)
        if call is None:
            return False
        await call.end(reason)
        return True

    def say_goodbye_all(self, reason: str) -> int:
        """Every call here ends with a spoken goodbye (``CallSession.say_goodbye``); returns how
        many calls were told."""
        calls = list(self.calls.values())
        for call in calls:
            call.say_goodbye(reason)
        return len(calls)

    def hand_off_all(self, reason: str) -> int:
        """Ask each call's ingress to move it to another host (a drain past its deadline). The
        sessions here go on until the router, placing each elsewhere, closes them (``moved``);
        returns how many calls were handed off."""
        calls = list(self.calls.values())
        for call in calls:
            self.outbox(call.spec.ingress_id).put(MoveCall(call.call_id, reason))
        return len(calls)

    async def close_all(self, reason: str) -> None:
        await asyncio.gather(
            *(c.end(reason) for c in list(self.calls.values())), return_exceptions=True
        )
        await self._records.close()
        if self._sip_calls is not None:
            await self._sip_calls.close()
            self._sip_calls = None

    # ----- media and control in ------------------------------------------------------------------

    def feed(self, batch: Sequence[Input], sent_at: float | None = None) -> int:
        """Deliver a batch of caller audio and control inputs (in order); returns how many were
        for calls no longer here.

        ``sent_at`` is the ingress's ``time.time()`` when it sent the batch: the hop's delay is
        measured on the same machine's wall clock (across machines it includes clock skew).
        """
        if sent_at is not None:
            metrics.media_hop("in", max(0.0, time.time() - sent_at))
        unknown = frames = 0
        for call_id, data in batch:
            call = self.calls.get(call_id)
            if call is None:
                unknown += 1
                continue
            try:
                if isinstance(data, bytes):
                    frames += 1
                    call.push_media(data)
                else:
                    call.push(data)
            except Exception:
                call.fail()  # this call only; the batch goes on
        self._frames_in += frames
        self._unknown_frames += unknown
        metrics.media_frames("in", frames)
        return unknown

    # ----- commands out --------------------------------------------------------------------------

    def outbox(self, ingress_id: str) -> Outbox[Command]:
        """Commands for ``ingress_id``'s calls, waiting for its media channel to push them."""
        box = self._outboxes.get(ingress_id)
        if box is None:
            box = self._outboxes[ingress_id] = command_outbox()
            box.on_drop = lambda n: metrics.media_dropped("out", n)
        return box

    def stats(self) -> HostStats:
        return HostStats(
            self.host_id, len(self.calls), self.capacity, self._frames_in, self._unknown_frames
        )
