"""The local model's SIP calls, as OpenAI's SIP connector holds them: a registry of pending and
live calls between the SIP front (the UAS that takes the INVITE) and the REST call control.

Each call goes (issue 11 §A; reference/realtime-protocol.md §6)::

    pending ──accept──▶ accepted ──hangup (REST) / BYE (caller)──▶ ended
      │ ──reject (REST)─────▶ rejected
      │ ──CANCEL (caller)───▶ cancelled    a later accept gets 404
      └─ no accept within accept_timeout_s ─▶ timed_out   the front answers 480

**The front calls in** (synchronously, on the event loop):

* :meth:`SipCalls.incoming` with the INVITE's headers, once it has sent 100/180: the pending
  call's id, announced with a signed ``realtime.call.incoming`` webhook (:mod:`.webhook_sender`,
  without the authorization headers) and timed;
* :meth:`SipCalls.cancelled` on the caller's CANCEL (the front answers 487 itself), and
  :meth:`SipCalls.caller_hung_up` on the caller's BYE.

**The front is told** what to put on the wire, as :data:`FrontCommand` values passed to every
listener (:meth:`SipCalls.add_listener`):

* :class:`Answer`: send 200 OK with an SDP answer for ``audio/pcmu``; then move the RTP through
  ``command.session`` (:class:`.SipSession`: ``caller_audio(payload)`` in,
  ``start_audio(send)`` out, ``dtmf(digit)`` for RFC 4733);
* :class:`Reject` (the status the REST call gave, 603 by default), :class:`Refer` (an in-dialog
  REFER with ``Refer-To: target_uri``), :class:`Bye` (the model hung up) and :class:`TimedOut`
  (480 Temporarily Unavailable).

**REST** (:mod:`.sip_calls_api`) calls :meth:`accept`, :meth:`reject`, :meth:`refer` and
:meth:`hangup`; each raises :class:`CallNotFound` (404) for a call not in the state it needs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final, Literal

from services.aio import Cancellable, Timers

from .engine import RealtimeEngine
from .session_io import SessionIO
from .sip_session import SipSession
from .webhook_sender import WebhookSender, without_authorization

__all__ = [
    "Answer",
    "Bye",
    "CallNotFound",
    "FrontCommand",
    "Refer",
    "Reject",
    "SipCall",
    "SipCalls",
    "TimedOut",
]

log = logging.getLogger(__name__)

CALL_PREFIX: Final = "rtc_"
DEFAULT_REJECT: Final = 603  # Decline, as OpenAI's reject defaults to (§6.4)
MAX_HEADERS: Final = 256
# Finished calls are remembered (their final state, for tests and logs) up to this many.
REMEMBERED: Final = 1000

State = Literal["pending", "accepted", "rejected", "cancelled", "timed_out", "ended"]


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    call_id: str
    session: SipSession


@dataclasses.dataclass(frozen=True, slots=True)
class Reject:
    call_id: str
    status: int


@dataclasses.dataclass(frozen=True, slots=True)
class Refer:
    call_id: str
    target_uri: str


@dataclasses.dataclass(frozen=True, slots=True)
class Bye:
    call_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class TimedOut:
    call_id: str


FrontCommand = Answer | Reject | Refer | Bye | TimedOut


class CallNotFound(Exception):
    """No call with that id in the state the request needs (REST answers 404)."""


@dataclasses.dataclass(slots=True, eq=False)
class SipCall:
    call_id: str
    sip_headers: tuple[tuple[str, str], ...]
    state: State = "pending"
    session: SipSession | None = None
    deadline: Cancellable | None = None


class SipCalls:
    def __init__(
        self,
        *,
        session_io: Callable[[], SessionIO],
        webhook: WebhookSender | None = None,
        accept_timeout_s: float = 10.0,
        timers: Timers | None = None,
    ) -> None:
        """``webhook`` announces each call (None: nobody is told; tests accept by hand);
        ``timers`` (the running loop when None) times the accept deadline."""
        self._session_io = session_io
        # Replaceable (tests point it at a gateway that listens after the model started).
        self.webhook = webhook
        self.accept_timeout_s = accept_timeout_s
        self._timers = timers
        self.calls: dict[str, SipCall] = {}
        self._finished: OrderedDict[str, State] = OrderedDict()
        self._listeners: list[Callable[[FrontCommand], None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    # ----- the front's side -------------------------------------------------------------------

    def add_listener(self, listener: Callable[[FrontCommand], None]) -> None:
        """``listener`` gets every :data:`FrontCommand` from now on (the SIP front; tests)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[FrontCommand], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def incoming(self, sip_headers: Sequence[tuple[str, str]]) -> str:
        """A new call (the INVITE's headers, in order): pending until accepted, rejected,
        cancelled or timed out. Returns its ``call_id``."""
        call_id = CALL_PREFIX + secrets.token_hex(16)
        headers = tuple(without_authorization(sip_headers[:MAX_HEADERS]))
        call = SipCall(call_id, headers)
        self.calls[call_id] = call
        timers = self._timers or asyncio.get_running_loop()
        call.deadline = timers.call_later(self.accept_timeout_s, self._timed_out, call_id)
        if self.webhook is not None:
            self._spawn(self.webhook.send_incoming(call_id, headers))
        log.info("local model: SIP call %s pending", call_id)
        return call_id

    def cancelled(self, call_id: str) -> None:
        """The caller cancelled the INVITE (the front answered 487); an accepted call (a race
        with the 200) is hung up instead."""
        call = self.calls.get(call_id)
        if call is not None and call.state == "pending":
            self._finish(call, "cancelled")
        elif call is not None:
            self.caller_hung_up(call_id)

    def caller_hung_up(self, call_id: str) -> None:
        """The caller sent BYE: the session ends and its sidebands close."""
        call = self.calls.get(call_id)
        if call is None:
            return
        if call.state == "pending":
            self._finish(call, "cancelled")
        else:
            self._end(call, "caller hung up")

    def state(self, call_id: str) -> State | None:
        """A call's state, also for a while after it finished; None if unknown."""
        call = self.calls.get(call_id)
        return call.state if call is not None else self._finished.get(call_id)

    def session(self, call_id: str) -> SipSession | None:
        """The live session a sideband attaches to (``?call_id=``), if the call is accepted."""
        call = self.calls.get(call_id)
        return call.session if call is not None and call.state == "accepted" else None

    # ----- REST --------------------------------------------------------------------------------

    def pending(self, call_id: str) -> SipCall:
        call = self.calls.get(call_id)
        if call is None or call.state != "pending":
            raise CallNotFound(call_id)
        return call

    def accept(self, call_id: str, engine: RealtimeEngine) -> SipSession:
        """Answer a pending call with ``engine`` (made from the accept's session config)."""
        call = self.pending(call_id)
        self._cancel_deadline(call)
        call.state = "accepted"
        call.session = SipSession(call_id, engine, self._session_io())
        log.info("local model: SIP call %s accepted", call_id)
        self._tell(Answer(call_id, call.session))
        return call.session

    def reject(self, call_id: str, status: int = DEFAULT_REJECT) -> None:
        call = self.pending(call_id)
        self._finish(call, "rejected")
        self._tell(Reject(call_id, status))

    def refer(self, call_id: str, target_uri: str) -> None:
        call = self.calls.get(call_id)
        if call is None or call.state != "accepted":
            raise CallNotFound(call_id)
        self._tell(Refer(call_id, target_uri))

    def hangup(self, call_id: str) -> None:
        """The model ends the call: BYE for an accepted one; a pending one is declined."""
        call = self.calls.get(call_id)
        if call is None or call.state not in ("pending", "accepted"):
            raise CallNotFound(call_id)
        if call.state == "pending":
            self.reject(call_id)
            return
        self._end(call, "hung up")
        self._tell(Bye(call_id))

    async def close(self) -> None:
        """End every call (the server stops): sessions end, the front is told ``Bye``."""
        for call in list(self.calls.values()):
            if call.state == "accepted":
                self._end(call, "server stopping")
                self._tell(Bye(call.call_id))
            else:
                self._finish(call, "rejected")
                self._tell(Reject(call.call_id, 503))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.webhook is not None:
            await self.webhook.close()

    # ----- inside ------------------------------------------------------------------------------

    def _timed_out(self, call_id: str) -> None:
        call = self.calls.get(call_id)
        if call is None or call.state != "pending":
            return
        call.deadline = None
        log.info("local model: SIP call %s not accepted in %g s", call_id, self.accept_timeout_s)
        self._finish(call, "timed_out")
        self._tell(TimedOut(call_id))

    def _end(self, call: SipCall, reason: str) -> None:
        if call.session is not None:
            call.session.end(reason)
        self._finish(call, "ended")

    def _finish(self, call: SipCall, state: State) -> None:
        self._cancel_deadline(call)
        call.state = state
        self.calls.pop(call.call_id, None)
        self._finished[call.call_id] = state
        while len(self._finished) > REMEMBERED:
            self._finished.popitem(last=False)

    @staticmethod
    def _cancel_deadline(call: SipCall) -> None:
        if call.deadline is not None:
            call.deadline.cancel()
            call.deadline = None

    def _tell(self, command: FrontCommand) -> None:
        for listener in list(self._listeners):
            try:
                listener(command)
            except Exception:
                log.exception("local model: a SIP front listener failed on %s", command)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
