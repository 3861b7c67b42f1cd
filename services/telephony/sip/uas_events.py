"""What the UAS core tells its adapter, and the state it keeps per call. Sans-I/O.

:class:`~services.telephony.sip.uas.UserAgentServer` returns a list of outputs from every
input: :class:`~services.telephony.sip.transaction.Send` (bytes for the socket) and the events
below, which the adapter turns into calls on the ingress seam. Each event names its
:class:`UasCall`; the adapter answers an :class:`IncomingCall` or a :class:`Reoffer` by calling
the core back (``accept``/``reject``, ``answer_reoffer``/``refuse_reoffer``) in the same turn or
later (an INVITE waits for admission and the model's session).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, TypeAlias

from services.telephony.sip.dialog import Dialog
from services.telephony.sip.message import Address, SipRequest
from services.telephony.sip.transaction import Dropped, Send


@dataclasses.dataclass(eq=False, slots=True)
class UasCall:
    """One call a peer placed with us: from its INVITE to its end."""

    key: str  # Call-ID + the caller's From tag: unique per call, stable across retransmits
    invite: SipRequest
    source: Address  # where the INVITE came from: our requests go back there (NAT)
    to_tag: str  # ours, on every response of the dialog
    offer: bytes  # the INVITE's SDP; empty for a late offer (the answer comes in the ACK)
    received_at: float
    state: Literal["offered", "answered", "confirmed", "ended"] = "offered"
    dialog: Dialog | None = None
    session_expires: int | None = None  # RFC 4028: negotiated interval, the caller refreshes
    refreshed_at: float = 0.0
    refer_cseq: int | None = None  # a REFER of ours is in progress

    @property
    def caller(self) -> str:
        return self.invite.from_.uri


@dataclasses.dataclass(frozen=True, slots=True)
class IncomingCall:
    """A new INVITE, admitted by source, authentication and rate: answer it with ``accept``
    (our SDP) or ``reject``; ``ringing`` meanwhile if the answer will take a while."""

    call: UasCall


@dataclasses.dataclass(frozen=True, slots=True)
class CallCancelled:
    """The caller gave up before our final answer (CANCEL); the core already sent 487."""

    call: UasCall


@dataclasses.dataclass(frozen=True, slots=True)
class CallConfirmed:
    """The ACK for our 200 arrived; for a late offer its ``sdp`` is the caller's answer."""

    call: UasCall
    sdp: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Reoffer:
    """A re-INVITE or UPDATE with an SDP offer (hold, resume, a new address, a session
    refresh): answer with ``answer_reoffer`` or ``refuse_reoffer``. ``sdp`` empty: a re-INVITE
    without SDP asks us to offer (our current SDP)."""

    call: UasCall
    request: SipRequest
    sdp: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class TransferResult:
    """How a REFER of ours went: the final status of the transferred call (NOTIFY sipfrag), or
    of the REFER itself when the caller refused it or never answered (408)."""

    call: UasCall
    status: int


@dataclasses.dataclass(frozen=True, slots=True)
class DtmfInfo:
    """A digit sent as SIP INFO (``application/dtmf-relay``), as some PBXs do instead of RFC
    4733."""

    call: UasCall
    digit: str


EndReason: TypeAlias = Literal[
    "caller_hangup", "ack_timeout", "session_expired", "unanswered", "bye_sent"
]


@dataclasses.dataclass(frozen=True, slots=True)
class CallEnded:
    """The call is over at the SIP level (``caller_hangup``: their BYE; ``ack_timeout``: no
    ACK for our 200; ``session_expired``: no RFC 4028 refresh; ``unanswered``: we never gave a
    final answer in time; ``bye_sent``: ours, after ``bye``)."""

    call: UasCall
    reason: EndReason


Event: TypeAlias = (
    IncomingCall
    | CallCancelled
    | CallConfirmed
    | Reoffer
    | TransferResult
    | DtmfInfo
    | CallEnded
    | Dropped
)
Output: TypeAlias = Send | Event
