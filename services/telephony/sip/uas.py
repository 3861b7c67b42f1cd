"""Our UAS core: the calls a trunk or PBX places with us, sans-I/O (datagrams and ``now`` in).

:class:`UserAgentServer` sits on the :class:`~.transaction.TransactionLayer` (retransmissions,
timers, CANCEL, the 2xx until its ACK) and owns the calls and their dialogs. What it does by
itself, as a SIP endpoint run next to Kamailio or FreeSWITCH is expected to:

* **Admission at the door** (before any call state): a source outside ``allow_sources`` gets
  403, unless digest authentication is configured, in which case an INVITE without good
  credentials gets 407 (``stale=true`` when only the nonce aged, RFC 3261 §22, RFC 8760); an
  INVITE flood from one address gets 503 + ``Retry-After`` past the rate ``allow_invite``
  keeps (so a trunk fails over); ``Require`` of an extension we lack → 420 + ``Unsupported``; a
  ``Session-Expires`` below our ``Min-SE`` → 422 (RFC 4028 §6).
* **Calls**: a new INVITE → :class:`IncomingCall` (the adapter admits it through the router and
  answers ``accept``/``reject``; ``ringing`` sends 180). CANCEL before the answer → 487 and
  :class:`CallCancelled`; after it, no effect (the transaction layer). The ACK →
  :class:`CallConfirmed` (a late offer's answer is in it); none in 64·T1 → BYE and
  :class:`CallEnded` ``ack_timeout``. BYE → 200 and ``caller_hangup``. A BYE, re-INVITE,
  UPDATE, INFO or NOTIFY for no dialog → 481.
* **Re-INVITE / UPDATE** (hold, resume, session refresh) → :class:`Reoffer`, answered by the
  adapter. RFC 4028 session timers: when the caller asks (``Session-Expires``), our 200 says
  ``refresher=uac`` and ``Require: timer``; without a refresh in time, BYE and
  ``session_expired`` (§10: BYE before the interval ends, at ``SE - min(32, SE/3)``).
* **Transfer**: ``refer`` sends REFER (RFC 3515); the caller's NOTIFYs (``message/sipfrag``)
  and a refused REFER become :class:`TransferResult`.
* **OPTIONS** → 200 with ``Allow``/``Accept``/``Supported`` (trunks use it as a keep-alive);
  INFO ``application/dtmf-relay`` → :class:`DtmfInfo`; REGISTER and REFER → 405 (we are no
  registrar, and a caller does not transfer the agent); any other method → 501.

Counters of messages in and out (``messages``) are kept for the adapter's metrics.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from services.errors import SipError, UserError
from services.telephony.sip.dialog import Dialog, DialogId, sipfrag_status
from services.telephony.sip.digest import DigestAuthority
from services.telephony.sip.headers import new_tag, split_comma_list
from services.telephony.sip.message import Address, SipRequest, SipResponse, response_to
from services.telephony.sip.register import Registration
from services.telephony.sip.transaction import (
    Ack,
    AckTimeout,
    Cancel,
    Dropped,
    NewRequest,
    ResponseReceived,
    Send,
    Timeout,
    Timers,
    TransactionLayer,
)
from services.telephony.sip.uas_events import (
    CallCancelled,
    CallConfirmed,
    CallEnded,
    DtmfInfo,
    EndReason,
    IncomingCall,
    Output,
    Reoffer,
    TransferResult,
    UasCall,
)

logger = logging.getLogger(__name__)

# REFER is one we send, not one we take: a caller cannot transfer the agent (405).
ALLOW: Final = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, NOTIFY, INFO"
SUPPORTED: Final = frozenset({"timer", "replaces", "norefersub"})
KNOWN_METHODS: Final = frozenset(
    {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "UPDATE", "REFER", "NOTIFY", "INFO", "REGISTER"}
    | {"PRACK", "SUBSCRIBE", "MESSAGE", "PUBLISH"}
)
_DTMF_RELAY: Final = re.compile(rb"Signal\s*=\s*([0-9*#A-Da-d])")
_REASON_SAFE: Final = re.compile(r"[^A-Za-z0-9_ .-]")


@dataclasses.dataclass(frozen=True, slots=True)
class UasSettings:
    local: Address  # our SIP address: Via sent-by and Contact of what we send
    user: str = "callray"  # the Contact's user part
    advertise: str | None = None  # the address peers reach us at, when not ``local``'s (NAT)
    # Sources allowed without authentication (networks, e.g. the trunk's); None: anyone. With
    # ``authority`` set, a source outside them is challenged instead of refused.
    allow_sources: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None = None
    authority: DigestAuthority | None = None
    min_se: int = 90  # RFC 4028 Min-SE
    timers: Timers = dataclasses.field(default_factory=Timers)
    answer_deadline_s: float = 32.0  # an INVITE the adapter has not answered by then: 408


class UserAgentServer:
    """``allow_invite(source_host, now)`` rates new INVITEs per source (the gateway's
    :class:`~services.gateway.front_door.SourceRate`); None: no limit."""

    def __init__(
        self,
        settings: UasSettings,
        *,
        allow_invite: Callable[[str, float], bool] | None = None,
        registration: Registration | None = None,
    ) -> None:
        self.settings = settings
        self.registration = registration  # we register with a PBX as an extension (register.py)
        self._allow_invite = allow_invite
        self.layer = TransactionLayer(settings.timers)
        self.calls: dict[str, UasCall] = {}  # by key (Call-ID + From tag)
        self._dialogs: dict[DialogId, UasCall] = {}
        self.messages: Counter[tuple[str, str, int]] = Counter()  # (direction, method, code)
        host = settings.advertise or settings.local[0]
        self._contact_host = f"[{host}]" if ":" in host else host

    # ----- input ---------------------------------------------------------------------------------

    def receive(self, data: bytes, source: Address, now: float) -> list[Output]:
        return self._handle(self.layer.receive_datagram(data, source, now), now)

    def tick(self, now: float) -> list[Output]:
        out = self._handle(self.layer.tick(now), now)
        if self.registration is not None:
            request = self.registration.due(now)
            if request is not None:
                out += self._register(request, now)
        for call in list(self.calls.values()):
            if (
                call.state == "offered"
                and now - call.received_at >= self.settings.answer_deadline_s
            ):
                out += self.reject(call, 408, now)
                out.append(CallEnded(call, "unanswered"))
            elif call.state != "offered" and call.session_expires and now >= self._expiry(call):
                out += self._end(call, now, "session_expired")
        return out

    def next_deadline(self) -> float | None:
        deadlines = [self.layer.next_deadline()]
        if self.registration is not None:
            deadlines.append(self.registration.next_due)
        for call in self.calls.values():
            if call.state == "offered":
                deadlines.append(call.received_at + self.settings.answer_deadline_s)
            elif call.session_expires:  # answered: the session timer runs from the 200
                deadlines.append(self._expiry(call))
        return min((d for d in deadlines if d is not None), default=None)

    @staticmethod
    def _expiry(call: UasCall) -> float:
        se = call.session_expires or 0
        return call.refreshed_at + se - min(32, se / 3)

    def _handle(self, outputs: Sequence[object], now: float) -> list[Output]:
        out: list[Output] = []
        for item in outputs:
            if isinstance(item, Send):
                out.append(item)
            elif isinstance(item, NewRequest):
                self._count("in", item.request.method, 0)
                out += self._request(item.request, item.source, now)
            elif isinstance(item, Ack):
                out += self._ack(item)
            elif isinstance(item, Cancel):
                out += self._cancel(item, now)
            elif isinstance(item, ResponseReceived):
                self._count("in", item.response.cseq.method, item.response.status)
                out += self._response(item.response, item.request, now)
            elif isinstance(item, Timeout):
                out += self._timeout(item, now)
            elif isinstance(item, AckTimeout):
                call = self.calls.get(_key(item.response))
                if call is not None:
                    out += self._end(call, now, "ack_timeout")
            elif isinstance(item, Dropped):
                out.append(item)
        return out

    # ----- requests ------------------------------------------------------------------------------

    def _request(self, request: SipRequest, source: Address, now: float) -> list[Output]:
        method = request.method
        if method not in KNOWN_METHODS:
            return self._reply(request, source, now, 501, [("Allow", ALLOW)])
        if method == "OPTIONS":
            return self._reply(
                request,
                source,
                now,
                200,
                [("Allow", ALLOW), ("Accept", "application/sdp"), ("Supported", "timer")],
            )
        if method in ("REGISTER", "REFER"):
            return self._reply(request, source, now, 405, [("Allow", ALLOW)])
        if request.to.tag is None:
            if method == "INVITE":
                return self._invite(request, source, now)
            return self._reply(request, source, now, 481 if method in _IN_DIALOG else 501)
        call = self._dialogs.get(DialogId.incoming(request) or _NO_DIALOG)
        if call is None or call.dialog is None:
            return self._reply(request, source, now, 481)
        try:
            call.dialog.receive(request)
        except SipError as exc:
            return self._reply(request, source, now, exc.status)
        if method == "BYE":
            out = self._reply(request, source, now, 200, to_tag=call.to_tag)
            self._forget(call)
            return [*out, CallEnded(call, "caller_hangup")]
        if method in ("INVITE", "UPDATE"):
            unsupported = self._unsupported(request)
            if unsupported:
                return self._reply(request, source, now, 420, [("Unsupported", unsupported)])
            call.refreshed_at = now  # any re-INVITE or UPDATE refreshes the session (RFC 4028)
            return [Reoffer(call, request, request.body)]
        if method == "NOTIFY":
            out = self._reply(request, source, now, 200, to_tag=call.to_tag)
            status = sipfrag_status(request.body)
            if status is not None and status >= 200 and call.refer_cseq is not None:
                call.refer_cseq = None
                out.append(TransferResult(call, status))
            return out
        if method == "INFO":
            out = self._reply(request, source, now, 200, to_tag=call.to_tag)
            match = _DTMF_RELAY.search(request.body)
            if match and b"dtmf" in (request.headers.get("Content-Type") or "").encode().lower():
                out.append(DtmfInfo(call, match.group(1).decode().upper()))
            return out
        return self._reply(request, source, now, 501, [("Allow", ALLOW)])

    def _invite(self, invite: SipRequest, source: Address, now: float) -> list[Output]:
        refused = self._admit(invite, source, now)
        if refused is not None:
            return refused
        unsupported = self._unsupported(invite)
        if unsupported:
            return self._reply(invite, source, now, 420, [("Unsupported", unsupported)])
        session_expires: int | None = None
        se = invite.headers.get("Session-Expires")
        if se is not None:
            try:
                session_expires = int(se.split(";")[0].strip())
            except ValueError:
                return self._reply(invite, source, now, 400, warning="bad Session-Expires")
            if session_expires < self.settings.min_se:
                return self._reply(
                    invite, source, now, 422, [("Min-SE", str(self.settings.min_se))]
                )
        call = UasCall(
            key=_key(invite),
            invite=invite,
            source=source,
            to_tag=new_tag(),
            offer=invite.body,
            received_at=now,
            session_expires=session_expires,
        )
        if call.key in self.calls:  # the same call on a second branch (§8.2.2.2): merged
            return self._reply(invite, source, now, 482)
        self.calls[call.key] = call
        return [IncomingCall(call)]

    def _admit(self, invite: SipRequest, source: Address, now: float) -> list[Output] | None:
        """None if the INVITE may go on; else the refusal to send."""
        if self._allow_invite is not None and not self._allow_invite(source[0], now):
            return self._reply(invite, source, now, 503, [("Retry-After", "5")])
        allowed = self.settings.allow_sources
        if allowed is None or _in_networks(source[0], allowed):
            return None
        authority = self.settings.authority
        if authority is None:
            return self._reply(invite, source, now, 403, warning="source not allowed")
        credentials = invite.headers.get("Proxy-Authorization")
        stale = False
        if credentials is not None:
            verdict = authority.verify("INVITE", credentials, now)
            if verdict.ok:
                return None
            stale = verdict.kind == "stale"
            if not stale:
                logger.warning("SIP digest refused from %s: %s", source[0], verdict.reason)
        challenge = [
            ("Proxy-Authenticate", value) for value in authority.challenge(now, stale=stale)
        ]
        return self._reply(invite, source, now, 407, challenge)

    @staticmethod
    def _unsupported(request: SipRequest) -> str:
        wanted: list[str] = []
        for value in request.headers.get_all("Require"):
            wanted += [tag.strip().lower() for tag in split_comma_list(value)]
        return ", ".join(tag for tag in wanted if tag and tag not in SUPPORTED)

    def _ack(self, ack: Ack) -> list[Output]:
        call = self.calls.get(_key(ack.request))
        if call is None or call.state != "answered":
            return []
        call.state = "confirmed"
        return [CallConfirmed(call, ack.request.body)]

    def _cancel(self, event: Cancel, now: float) -> list[Output]:
        out: list[Output] = []
        call = self.calls.get(_key(event.invite))
        out += self._sent(
            self.layer.answer_cancel(event, now, to_tag=call.to_tag if call else None)
        )
        if call is not None:
            self._forget(call)
            out.append(CallCancelled(call))
        return out

    def _response(self, response: SipResponse, request: SipRequest, now: float) -> list[Output]:
        if request.method == "REGISTER" and self.registration is not None:
            if response.status < 200:
                return []
            again = self.registration.on_response(response, now)
            return [] if again is None else self._register(again, now)
        call = self.calls.get(_dialog_key(request))
        if call is None or request.method != "REFER" or response.status < 200:
            return []
        if response.status >= 300:  # the caller would not try the transfer
            call.refer_cseq = None
            return [TransferResult(call, response.status)]
        return []  # 202: the outcome comes in NOTIFYs

    def _timeout(self, event: Timeout, now: float) -> list[Output]:
        if event.client and event.request.method == "REGISTER" and self.registration is not None:
            self.registration.on_timeout(now)
            return []
        call = self.calls.get(_dialog_key(event.request) if event.client else _key(event.request))
        if call is None:
            return []
        if event.client and event.request.method == "REFER":
            call.refer_cseq = None
            return [TransferResult(call, 408)]
        if not event.client and event.request.method == "INVITE" and call.state == "offered":
            self._forget(call)
            return [CallEnded(call, "unanswered")]
        return []

    # ----- the adapter's answers -----------------------------------------------------------------

    def ringing(self, call: UasCall, now: float) -> list[Output]:
        if call.state != "offered":
            return []
        return self._respond(call.invite, now, 180, to_tag=call.to_tag, source=call.source)

    def accept(
        self, call: UasCall, sdp: bytes, now: float, headers: Iterable[tuple[str, str]] = ()
    ) -> list[Output]:
        """200 OK with ``sdp`` (our answer, or our offer when the INVITE had none)."""
        if call.state != "offered":
            raise UserError(f"call {call.key} is {call.state}, it cannot be accepted")
        fields = [("Contact", self._contact()), ("Allow", ALLOW), ("Supported", "timer")]
        if call.session_expires:
            fields += [
                ("Session-Expires", f"{call.session_expires};refresher=uac"),
                ("Require", "timer"),
            ]
        response = response_to(
            call.invite,
            200,
            to_tag=call.to_tag,
            headers=[*fields, *headers],
            body=sdp,
            content_type="application/sdp",
            source=call.source,
        )
        call.dialog = Dialog.from_invite(
            call.invite, response, sent_by=self.settings.local, source=call.source
        )
        call.state = "answered"
        call.refreshed_at = now
        self._dialogs[call.dialog.id] = call
        return self._sent(self.layer.send_response(response, now), "INVITE", 200)

    def reject(
        self,
        call: UasCall,
        status: int,
        now: float,
        *,
        retry_after: int | None = None,
        warning: str | None = None,
    ) -> list[Output]:
        if call.state != "offered":
            return []
        headers = [("Retry-After", str(retry_after))] if retry_after is not None else []
        out = self._respond(
            call.invite,
            now,
            status,
            headers,
            to_tag=call.to_tag,
            source=call.source,
            warning=warning,
        )
        self._forget(call)
        return out

    def answer_reoffer(self, event: Reoffer, sdp: bytes, now: float) -> list[Output]:
        headers = [("Contact", self._contact())]
        if event.call.session_expires:
            headers += [
                ("Session-Expires", f"{event.call.session_expires};refresher=uac"),
                ("Require", "timer"),
            ]
        if event.call.dialog is not None:
            event.call.dialog.refresh_target(event.request)
        return self._respond(
            event.request,
            now,
            200,
            headers,
            to_tag=event.call.to_tag,
            source=event.call.source,
            body=sdp,
        )

    def refuse_reoffer(self, event: Reoffer, status: int, warning: str, now: float) -> list[Output]:
        return self._respond(
            event.request,
            now,
            status,
            to_tag=event.call.to_tag,
            source=event.call.source,
            warning=warning,
        )

    def bye(self, call: UasCall, now: float, reason: str = "") -> list[Output]:
        """Hang up: BYE once the call is answered (before that, ``reject``). ``reason`` goes in
        an RFC 3326 ``Reason`` header (Q.850 cause 16, normal clearing), for the PBX's CDRs."""
        return self._end(call, now, "bye_sent", reason)[:-1]

    def refer(self, call: UasCall, target: str, now: float) -> list[Output]:
        """Ask the caller to call ``target`` (RFC 3515); the outcome is a TransferResult."""
        if call.dialog is None or call.state != "confirmed":
            raise UserError("a call is transferred only once it is answered and confirmed")
        request = call.dialog.refer(target, referred_by=self._contact_uri())
        call.refer_cseq = request.cseq.number
        return self._send_request(request, call, now)

    # ----- helpers -------------------------------------------------------------------------------

    def _end(self, call: UasCall, now: float, reason: EndReason, text: str = "") -> list[Output]:
        out: list[Output] = []
        if call.dialog is not None and call.dialog.state != "terminated":
            why = _REASON_SAFE.sub("", text or reason)[:64]
            headers = [("Reason", f'Q.850;cause=16;text="{why}"')]
            out += self._send_request(call.dialog.bye(headers=headers), call, now)
        self._forget(call)
        return [*out, CallEnded(call, reason)]

    def _register(self, request: SipRequest, now: float) -> list[Output]:
        assert self.registration is not None
        self._count("out", "REGISTER", 0)
        return self._sent(self.layer.send_request(request, self.registration.registrar, now))

    def _send_request(self, request: SipRequest, call: UasCall, now: float) -> list[Output]:
        self._count("out", request.method, 0)
        return self._sent(self.layer.send_request(request, call.source, now))

    def _forget(self, call: UasCall) -> None:
        call.state = "ended"
        self.calls.pop(call.key, None)
        if call.dialog is not None:
            self._dialogs.pop(call.dialog.id, None)

    def _reply(
        self,
        request: SipRequest,
        source: Address,
        now: float,
        status: int,
        headers: Iterable[tuple[str, str]] = (),
        *,
        to_tag: str | None = None,
        warning: str | None = None,
    ) -> list[Output]:
        return self._respond(
            request, now, status, headers, to_tag=to_tag, source=source, warning=warning
        )

    def _respond(
        self,
        request: SipRequest,
        now: float,
        status: int,
        headers: Iterable[tuple[str, str]] = (),
        *,
        to_tag: str | None,
        source: Address,
        warning: str | None = None,
        body: bytes = b"",
    ) -> list[Output]:
        extra = list(headers)
        if warning is not None:  # §20.43; the text is ours, never the peer's input
            extra.append(("Warning", f'399 callray "{warning}"'))
        response = response_to(
            request,
            status,
            to_tag=to_tag,
            headers=extra,
            body=body,
            content_type="application/sdp" if body else None,
            source=source,
        )
        return self._sent(self.layer.send_response(response, now), request.method, status)

    def _sent(self, outputs: Sequence[object], method: str = "", status: int = 0) -> list[Output]:
        if method:
            self._count("out", method, status)
        return [o for o in outputs if isinstance(o, (Send, Dropped))]

    def _count(self, direction: str, method: str, status: int) -> None:
        self.messages[(direction, method if method in KNOWN_METHODS else "other", status)] += 1

    def _contact_uri(self) -> str:
        return f"sip:{self.settings.user}@{self._contact_host}:{self.settings.local[1]}"

    def _contact(self) -> str:
        return f"<{self._contact_uri()}>"


_IN_DIALOG: Final = frozenset({"BYE", "UPDATE", "NOTIFY", "INFO", "PRACK"})
_NO_DIALOG: Final = DialogId("", "", "")


def _key(message: SipRequest | SipResponse) -> str:
    return f"{message.call_id};{message.from_.tag or ''}"


def _dialog_key(request: SipRequest) -> str:
    """The call of a request WE sent in its dialog: our From is the caller's To."""
    return f"{request.call_id};{request.to.tag or ''}"


def _in_networks(
    host: str, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in networks)
