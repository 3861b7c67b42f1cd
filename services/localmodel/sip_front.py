"""The local model's SIP front: the UDP endpoint a caller's INVITE and RTP reach, as OpenAI's SIP
connector (``sip:$PROJECT_ID@sip.api.openai.com``) takes them, driving the registry of
:mod:`.sip_calls` (issue 11 §A; reference/telephony.md §4.1).

The SIP work is our sans-I/O :class:`~services.telephony.sip.uas.UserAgentServer` (no
allow-list, no authentication: OpenAI's connector takes calls from any trunk); the RTP work is
:mod:`services.telephony.rtp_io` (latch → RFC 4733 → jitter buffer in, one pacer out), with
each call's port and SDP in :mod:`.sip_front_call`. This module is the signalling between the
socket, the UAS and the registry:

* INVITE → 100 Trying (the transaction layer) → its offer checked (nothing G.711 μ-law in it:
  488 + ``Warning``, before any call exists) → 180 Ringing → :meth:`SipCalls.incoming` (the
  pending call and its signed webhook);
* the registry's :class:`~.sip_calls.Answer` → an RTP port, our SDP answer (PCMU only: the
  session takes ``audio/pcmu``) → 200 OK; the caller's audio to ``session.caller_audio``, its
  RFC 4733 or SIP INFO digits to ``session.dtmf``, and every 20 ms ``session.next_frame()``
  out (silence when the model is quiet). An INVITE without SDP gets our offer in the 200 and
  its answer comes in the ACK (RFC 3264 late offer);
* :class:`~.sip_calls.Reject` → that status; :class:`~.sip_calls.TimedOut` → 480;
  :class:`~.sip_calls.Bye` → BYE; :class:`~.sip_calls.Refer` → an in-dialog REFER (RFC 3515;
  held until the ACK if it comes first). A transfer the caller reports done (NOTIFY ``200``)
  ends the call with our BYE, as a transferor does; a failed one leaves the call up;
* the caller's CANCEL (the core answered 487) → :meth:`SipCalls.cancelled`; its BYE, or a call
  the core ended (no ACK, an expired session timer) → :meth:`SipCalls.caller_hung_up`;
* a re-INVITE or UPDATE (hold, resume, a refresh) is answered from the same RTP port; an
  UPDATE without SDP (an RFC 4028 refresh) gets a 200 without one (RFC 3311 §5.2).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable

from services.errors import SdpError, UserError
from services.telephony.rtp_io import Pacer, RtpPorts
from services.telephony.sip.transaction import Dropped, Send
from services.telephony.sip.uas import UasSettings, UserAgentServer
from services.telephony.sip.uas_events import (
    CallCancelled,
    CallConfirmed,
    CallEnded,
    DtmfInfo,
    IncomingCall,
    Output,
    Reoffer,
    TransferResult,
    UasCall,
)
from services.telephony.sip_io import UasEndpoint

from .sip_calls import Answer, Bye, CallNotFound, FrontCommand, Refer, Reject, SipCalls, TimedOut
from .sip_front_call import FrontCall, plan
from .sip_session import SipSession

__all__ = ["SipFront", "SipFrontSettings"]

log = logging.getLogger(__name__)

# The UAS's own "no final answer" deadline (408) stays behind the registry's accept timeout,
# so a slow accept is answered 480 by the registry, as OpenAI's connector does.
ANSWER_MARGIN_S = 5.0


@dataclasses.dataclass(frozen=True, slots=True)
class SipFrontSettings:
    port: int = 0  # UDP for SIP; 0: any free port
    host: str = "127.0.0.1"  # SIP and RTP bind here, and our SDP and Contact name it
    rtp_ports: tuple[int, int] | None = None  # even ports from this range; None: any free one
    user: str = "proj_localmodel"  # our Contact's user part (OpenAI's: the project id)


class SipFront(UasEndpoint):
    def __init__(
        self,
        registry: SipCalls,
        settings: SipFrontSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(clock=clock, name="the local model's SIP front")
        self.registry = registry
        self.settings = settings
        self.pacer = Pacer(clock=clock)
        self._ports = RtpPorts(settings.host, *settings.rtp_ports) if settings.rtp_ports else None
        self.calls: dict[str, FrontCall] = {}  # by call_id
        self._by_key: dict[str, FrontCall] = {}  # by the UAS call's key

    # ----- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> int:
        host = self.settings.host
        await self.bind(host, self.settings.port, "choose another --sip-port")
        deadline = max(32.0, self.registry.accept_timeout_s + ANSWER_MARGIN_S)
        self.uas = UserAgentServer(
            UasSettings(
                local=(host, self.port), user=self.settings.user, answer_deadline_s=deadline
            )
        )
        self.registry.add_listener(self._told)
        self.start_timers()
        self.spawn(self.pacer.run())
        log.info("local model: SIP on udp %s:%d", host, self.port)
        return self.port

    async def stop(self) -> None:
        """Calls still up are ended (BYE, or 503 to an unanswered INVITE); the socket closes."""
        self.registry.remove_listener(self._told)
        for call in list(self.calls.values()):
            self._hang_up(call, 503)
        await self.close()

    # ----- the UAS's outputs ---------------------------------------------------------------------

    def apply(self, outputs: list[Output]) -> None:
        for item in outputs:
            if isinstance(item, Send):
                self.send(item)
                continue
            if isinstance(item, IncomingCall):
                self._incoming(item.call)
                continue
            if isinstance(item, Dropped):
                log.debug("local model: SIP input dropped: %s", item.detail)
                continue
            call = self._by_key.get(item.call.key)
            if call is None:
                if isinstance(item, Reoffer):  # a call we have already let go of
                    self.apply(self._core().refuse_reoffer(item, 481, "no call", self._clock()))
            elif isinstance(item, CallCancelled):
                self.registry.cancelled(call.call_id)
                self._release(call)
            elif isinstance(item, CallEnded):
                self.registry.caller_hung_up(call.call_id)
                self._release(call)
            elif isinstance(item, CallConfirmed):
                self._confirmed(call, item.sdp)
            elif isinstance(item, Reoffer):
                self._reoffer(call, item)
            elif isinstance(item, DtmfInfo) and call.session is not None:
                call.session.dtmf(item.digit)
            elif isinstance(item, TransferResult):
                self._transfer_result(call, item.status)

    def _core(self) -> UserAgentServer:
        assert self.uas is not None
        return self.uas

    def _incoming(self, uas_call: UasCall) -> None:
        now = self._clock()
        try:
            plan(uas_call.offer, self.settings.host)
        except SdpError as exc:
            self.apply(self._core().reject(uas_call, 488, now, warning=str(exc)))
            return
        self.apply(self._core().ringing(uas_call, now))
        call_id = self.registry.incoming(list(uas_call.invite.headers))
        call = FrontCall(call_id, uas_call, self.settings.host)
        self.calls[call.call_id] = call
        self._by_key[uas_call.key] = call

    # ----- the registry's commands ---------------------------------------------------------------

    def _told(self, command: FrontCommand) -> None:
        call = self.calls.get(command.call_id)
        if call is None:
            return
        if isinstance(command, Answer):
            self.spawn(self._answer(call, command.session))
        elif isinstance(command, Reject | TimedOut):
            self._hang_up(call, command.status if isinstance(command, Reject) else 480)
        elif isinstance(command, Refer):
            call.refer_to = command.target_uri
            if call.uas.state == "confirmed":
                self._refer(call)
        elif isinstance(command, Bye):
            self._hang_up(call, 480)

    async def _answer(self, call: FrontCall, session: SipSession) -> None:
        try:
            stream = await call.open(session, self._ports, self._clock)
            if call.ended or call.uas.state != "offered":  # cancelled or hung up meanwhile
                self._release(call)
                return
            call.sdp = call.local_sdp(call.uas.offer)
            self.apply(self._core().accept(call.uas, call.sdp, self._clock()))
        except Exception as exc:  # no RTP port (503), or a bug: this call fails, no other
            status = 503 if isinstance(exc, OSError) else 500
            log.warning("local model: SIP call %s not answered: %r", call.call_id, exc)
            self._hang_up(call, status)
            self.registry.caller_hung_up(call.call_id)
            return
        self.pacer.add(stream)

    def _hang_up(self, call: FrontCall, status: int) -> None:
        """End a call from our side: ``status`` to an INVITE not answered yet, else BYE."""
        if call.ended:
            return
        now = self._clock()
        if call.uas.state == "offered":
            self.apply(self._core().reject(call.uas, status, now))
        elif call.uas.state != "ended":
            self.apply(self._core().bye(call.uas, now))
        self._release(call)

    def _refer(self, call: FrontCall) -> None:
        target, call.refer_to = call.refer_to, None
        if target is None:
            return
        try:
            self.apply(self._core().refer(call.uas, target, self._clock()))
        except UserError as exc:
            log.warning("local model: REFER for %s not sent: %s", call.call_id, exc)

    def _transfer_result(self, call: FrontCall, status: int) -> None:
        log.info("local model: SIP call %s transfer: %d", call.call_id, status)
        if 200 <= status < 300:  # the caller is on the new call: the transferor leaves
            with contextlib.suppress(CallNotFound):
                self.registry.hangup(call.call_id)  # its Bye command sends the BYE

    def _release(self, call: FrontCall) -> None:
        self.calls.pop(call.call_id, None)
        self._by_key.pop(call.uas.key, None)
        if call.stream is not None:
            self.pacer.remove(call.stream)
        call.close()

    # ----- SDP after the answer ----------------------------------------------------------------

    def _confirmed(self, call: FrontCall, sdp: bytes) -> None:
        if not call.uas.offer and call.stream is not None:  # a late offer: the ACK answers ours
            try:
                call.take_answer(sdp)
            except SdpError as exc:
                log.warning("local model: a late offer's answer cannot be used: %s", exc)
                self.registry.caller_hung_up(call.call_id)
                self._hang_up(call, 488)
                return
        self._refer(call)

    def _reoffer(self, call: FrontCall, event: Reoffer) -> None:
        now = self._clock()
        if not event.sdp and event.request.method == "UPDATE":
            # A session refresh by UPDATE carries no offer and gets no answer (RFC 3311 §5.2).
            self.apply(self._core().answer_reoffer(event, b"", now))
            return
        try:
            sdp = call.reoffer(event.sdp) if call.stream is not None else call.sdp
        except SdpError as exc:
            self.apply(self._core().refuse_reoffer(event, 488, str(exc), now))
            return
        self.apply(self._core().answer_reoffer(event, sdp, now))
