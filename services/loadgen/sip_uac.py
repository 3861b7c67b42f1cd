"""The SIP side of a load test's calls, sans-I/O: one user agent client for every call.

``callray loadtest --provider sip`` places many calls from one UDP socket, as a trunk or PBX
does. :class:`SipUac` is the signalling of all of them: datagrams and ``now`` in, datagrams and
events out; the asyncio driver (:mod:`.sip_runner`) moves bytes and reads the clock.

* :meth:`SipUac.dial` sends an INVITE with a PCMU + telephone-event offer (our RTP port) and
  keeps its client transaction (RFC 3261 §17.1.1, which :class:`TransactionLayer` does not
  implement): Timer A retransmits it from T1, doubling, until a response; Timer B (64·T1) gives
  up as ``408``. A provisional stops the retransmissions. A 2xx is ACKed in a request of its own
  (§13.2.2.4; every retransmission of the 2xx gets the same ACK again) and the answer's address
  is where RTP goes (:class:`Answered`); a non-2xx final is ACKed on the INVITE's branch
  (§17.1.1.3) and reported as :class:`Refused`.
* In-dialog requests go through our :class:`TransactionLayer` (retransmissions absorbed, our
  BYE's Timer E/F): the ingress's BYE → 200 and :class:`HungUp` with its RFC 3326 ``Reason``
  text; a re-INVITE or UPDATE (session refresh, hold) → 200 with our answer; OPTIONS, INFO,
  NOTIFY → 200; anything else → 501.
* :meth:`SipUac.hang_up` sends our BYE (§15.1.1) to the dialog's remote target.

What is simplified, since the peer is our own ingress on loopback: no Route set (in-dialog
requests go to the target address, with the 2xx's Contact as their Request-URI), no CANCEL
(a call still ringing when abandoned is left to Timer B), no authentication.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from collections import Counter
from typing import Literal, TypeAlias

from services.errors import SdpError, SipError
from services.telephony.sip import offer_answer
from services.telephony.sip.headers import NameAddr, new_tag
from services.telephony.sip.message import (
    Address,
    SipRequest,
    SipResponse,
    build_request,
    is_keepalive,
    parse,
    response_to,
)
from services.telephony.sip.transaction import (
    Dropped,
    NewRequest,
    Send,
    Timeout,
    Timers,
    TransactionLayer,
)

__all__ = [
    "Answered",
    "HungUp",
    "Output",
    "Refused",
    "Send",
    "SipUac",
    "UacCall",
]

_REASON_TEXT = re.compile(r'text="([^"]*)"')
_ALLOW = "INVITE, ACK, BYE, OPTIONS, UPDATE, INFO, NOTIFY"
#: Status reported for an INVITE that no final response answered by Timer B (§17.1.1.2).
TIMED_OUT = 408

CallState = Literal["calling", "proceeding", "confirmed", "refused", "ended"]


@dataclasses.dataclass(eq=False)
class UacCall:
    """One outbound call's dialog. Times are the ``now`` the driver passed in."""

    index: int
    call_id: str
    tag: str
    rtp_port: int  # ours, offered in the INVITE
    offer: str
    invite: SipRequest
    invite_sent_at: float
    state: CallState = "calling"
    status: int = 0  # the INVITE's final status (0 until one came)
    to_tag: str | None = None
    remote_target: str = ""  # the 2xx's Contact URI: the Request-URI of in-dialog requests
    remote_rtp: tuple[str, int] | None = None
    callray_call_id: str = ""  # X-Callray-Call-Id of the 200 OK
    answered_at: float | None = None  # the first 2xx arrived
    closed_reason: str | None = None  # the Reason text of the ingress's BYE
    invite_retransmits: int = 0
    cseq: int = 1
    _ack: bytes = b""
    _retransmit_at: float | None = None  # Timer A
    _interval: float = 0.0
    _give_up_at: float = 0.0  # Timer B

    @property
    def setup_ms(self) -> float | None:
        """INVITE sent → 200 OK received."""
        if self.answered_at is None:
            return None
        return (self.answered_at - self.invite_sent_at) * 1000


@dataclasses.dataclass(frozen=True, slots=True)
class Answered:
    """The call is up (2xx ACKed); RTP goes to ``call.remote_rtp``."""

    call: UacCall


@dataclasses.dataclass(frozen=True, slots=True)
class Refused:
    """A final non-2xx (``call.status``; 408 for no final response by Timer B), or a 2xx whose
    answer cannot be used (``call.status`` 200, ``reason`` says why; we sent BYE)."""

    call: UacCall
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class HungUp:
    """The ingress sent BYE; ``call.closed_reason`` is its Reason text (or ``"bye"``)."""

    call: UacCall


Output: TypeAlias = Send | Answered | Refused | HungUp


class SipUac:
    """Every call of one load test, from ``local`` (our SIP socket) to the UAS at ``target``."""

    def __init__(
        self,
        local: Address,
        target: Address,
        *,
        user: str = "agent",
        timers: Timers | None = None,
    ) -> None:
        self.local = local
        self.target = target
        self.user = user
        self.timers = timers or Timers()
        self.layer = TransactionLayer(self.timers, send_trying=False)
        self.calls: dict[str, UacCall] = {}  # by Call-ID, kept for the whole test
        self._ringing: dict[str, UacCall] = {}  # INVITEs still waiting for a final response
        self.dropped: Counter[str] = Counter()  # inputs ignored, by reason
        self.bye_timeouts = 0

    # --- our requests ----------------------------------------------------------------------

    def dial(self, index: int, rtp_port: int, now: float) -> tuple[UacCall, list[Output]]:
        """A new call: the INVITE to send (Timer A and B start now)."""
        host = self.local[0]
        call_id = f"{secrets.token_hex(12)}@{host}"
        session_id = secrets.randbelow(10**9) + 1
        offer = offer_answer.offer(
            host, rtp_port, session_id=session_id, session_version=1, codecs=("PCMU",)
        )
        tag = new_tag()
        invite = build_request(
            "INVITE",
            self._request_uri(),
            from_=NameAddr(f"sip:caller{index}@{host}").with_tag(tag),
            to=NameAddr(self._request_uri()),
            call_id=call_id,
            cseq=1,
            sent_by=self.local,
            contact=f"<sip:caller{index}@{host}:{self.local[1]}>",
            headers=[("Allow", _ALLOW), ("User-Agent", "callray-loadtest")],
            body=offer.encode(),
            content_type="application/sdp",
        )
        call = UacCall(index, call_id, tag, rtp_port, offer, invite, invite_sent_at=now)
        call._interval = self.timers.t1
        call._retransmit_at = now + self.timers.t1
        call._give_up_at = now + self.timers.long
        self.calls[call_id] = call
        self._ringing[call_id] = call
        return call, [Send(bytes(invite), self.target)]

    def hang_up(self, call: UacCall, now: float) -> list[Output]:
        """Our BYE for a confirmed call; nothing for a call in any other state."""
        if call.state != "confirmed":
            return []
        call.state = "ended"
        call.closed_reason = call.closed_reason or "caller_hangup"
        out = self.layer.send_request(self._in_dialog(call, "BYE"), self.target, now)
        return [o for o in out if isinstance(o, Send)]

    def _request_uri(self) -> str:
        return f"sip:{self.user}@{self.target[0]}:{self.target[1]}"

    def _in_dialog(self, call: UacCall, method: str, cseq: int | None = None) -> SipRequest:
        if cseq is None:
            call.cseq += 1
            cseq = call.cseq
        host = self.local[0]
        return build_request(
            method,
            call.remote_target or self._request_uri(),
            from_=NameAddr(f"sip:caller{call.index}@{host}").with_tag(call.tag),
            to=NameAddr(self._request_uri()).with_tag(call.to_tag or ""),
            call_id=call.call_id,
            cseq=cseq,
            sent_by=self.local,
        )

    # --- input -----------------------------------------------------------------------------

    def receive(self, data: bytes, source: Address, now: float) -> list[Output]:
        """One datagram from the SIP socket."""
        if is_keepalive(data):
            return []
        try:
            message = parse(data)
        except SipError:
            self.dropped["malformed"] += 1
            return []
        if isinstance(message, SipResponse) and message.cseq.method == "INVITE":
            return self._invite_response(message, now)
        out: list[Output] = []
        for item in self.layer.receive(message, source, now):
            if isinstance(item, Send):
                out.append(item)
            elif isinstance(item, NewRequest):
                out += self._request(item.request, item.source, now)
            elif isinstance(item, Dropped):
                self.dropped[item.reason] += 1
            # ResponseReceived (to our BYE), Ack (to a re-INVITE's 200): nothing to do.
        return out

    def _invite_response(self, response: SipResponse, now: float) -> list[Output]:
        call = self.calls.get(response.call_id)
        if call is None or response.cseq.number != 1:
            self.dropped["stray_response"] += 1
            return []
        if response.status < 200:
            if call.state == "calling":
                call.state, call._retransmit_at = "proceeding", None  # Timer A stops
            return []
        if response.status >= 300:
            return self._refused(call, response, now)
        if call.state not in ("calling", "proceeding"):
            # A retransmitted 2xx: its ACK again (§13.2.2.4); after our BYE, the same.
            return [Send(call._ack, self.target)] if call._ack else []
        return self._answered(call, response, now)

    def _refused(self, call: UacCall, response: SipResponse, now: float) -> list[Output]:
        # §17.1.1.3: the ACK of a non-2xx is on the INVITE's branch, with the response's To.
        ack = SipRequest("ACK", call.invite.uri)
        for name in ("Via", "From", "Call-ID"):
            ack.headers.add(name, call.invite.headers[name])
        ack.headers.add("To", response.headers["To"])
        ack.headers.add("CSeq", "1 ACK")
        ack.headers.add("Max-Forwards", "70")
        call._ack = bytes(ack)
        out: list[Output] = [Send(call._ack, self.target)]
        if call.state in ("calling", "proceeding"):
            self._ringing.pop(call.call_id, None)
            call.state, call.status = "refused", response.status
            out.append(Refused(call, f"SIP {response.status} {response.reason}".strip()))
        return out

    def _answered(self, call: UacCall, response: SipResponse, now: float) -> list[Output]:
        self._ringing.pop(call.call_id, None)
        call.state, call.status, call.answered_at = "confirmed", response.status, now
        call.to_tag = response.to.tag
        contacts = response.contacts
        call.remote_target = contacts[0].uri if contacts else self._request_uri()
        call.callray_call_id = response.headers.get("X-Callray-Call-Id") or ""
        # A request of its own with the INVITE's CSeq number (§13.2.2.4).
        call._ack = bytes(self._in_dialog(call, "ACK", cseq=1))
        out: list[Output] = [Send(call._ack, self.target)]
        try:
            audio = offer_answer.accept_answer(response.body, call.offer)
        except (SdpError, SipError) as exc:
            out += self.hang_up(call, now)
            return [*out, Refused(call, f"unusable answer: {exc}")]
        call.remote_rtp = (audio.remote_address, audio.remote_port)
        return [*out, Answered(call)]

    def _request(self, request: SipRequest, source: Address, now: float) -> list[Output]:
        call = self.calls.get(request.call_id)
        method = request.method
        if call is None or call.state == "refused":
            return self._respond(request, 481, source, now)
        if method == "BYE":
            out = self._respond(request, 200, source, now)
            if call.state == "ended":
                return out  # our BYE and theirs crossed
            call.state = "ended"
            match = _REASON_TEXT.search(request.headers.get("Reason") or "")
            call.closed_reason = match.group(1) if match else "bye"
            return [*out, HungUp(call)]
        if method in ("INVITE", "UPDATE"):
            return self._reoffer(call, request, source, now)
        if method in ("OPTIONS", "INFO", "NOTIFY"):
            return self._respond(request, 200, source, now)
        return self._respond(request, 501, source, now)

    def _reoffer(
        self, call: UacCall, request: SipRequest, source: Address, now: float
    ) -> list[Output]:
        """A session refresh or a hold: answer its offer (or offer ours again if it has none)."""
        sdp = call.offer
        if request.body:
            try:
                sdp = offer_answer.answer(
                    request.body,
                    local_ip=self.local[0],
                    rtp_port=call.rtp_port,
                    session_id=1,
                    session_version=call.cseq,
                    codecs_preference=("PCMU",),
                ).sdp
            except (SdpError, SipError):
                return self._respond(request, 488, source, now)
        ok = response_to(
            request,
            200,
            source=source,
            headers=[("Contact", f"<sip:caller{call.index}@{self.local[0]}:{self.local[1]}>")],
            body=sdp.encode(),
            content_type="application/sdp",
        )
        return [o for o in self.layer.send_response(ok, now) if isinstance(o, Send)]

    def _respond(
        self, request: SipRequest, status: int, source: Address, now: float
    ) -> list[Output]:
        response = response_to(request, status, source=source)
        return [o for o in self.layer.send_response(response, now) if isinstance(o, Send)]

    # --- timers ----------------------------------------------------------------------------

    def tick(self, now: float) -> list[Output]:
        """Timers A and B of every INVITE still ringing, and the transaction layer's timers."""
        out: list[Output] = []
        for call in list(self._ringing.values()):
            if now >= call._give_up_at:  # Timer B
                del self._ringing[call.call_id]
                call.state, call.status = "refused", TIMED_OUT
                out.append(Refused(call, "no final response to the INVITE (Timer B)"))
                continue
            while call._retransmit_at is not None and now >= call._retransmit_at:  # Timer A
                out.append(Send(bytes(call.invite), self.target))
                call.invite_retransmits += 1
                call._interval *= 2
                call._retransmit_at += call._interval
        for item in self.layer.tick(now):
            if isinstance(item, Send):
                out.append(item)
            elif isinstance(item, Timeout) and item.client:
                self.bye_timeouts += 1
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has work (None: nothing pending)."""
        deadlines = [self.layer.next_deadline()]
        for call in self._ringing.values():
            deadlines.append(call._give_up_at)
            deadlines.append(call._retransmit_at)
        return min((d for d in deadlines if d is not None), default=None)
