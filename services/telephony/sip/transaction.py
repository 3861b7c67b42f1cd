"""SIP transactions over UDP (RFC 3261 §17, RFC 6026), sans-I/O: messages and ``now`` in.

:class:`TransactionLayer` owns every transaction of one UAS. The adapter feeds it datagrams
(``receive_datagram``) and ticks (``tick`` at ``next_deadline``); the core answers with
``send_response`` and sends its own requests with ``send_request``. Each call returns outputs:
:class:`Send` (bytes for the socket) and events for the core (:class:`NewRequest`,
:class:`Ack`, :class:`Cancel`, :class:`ResponseReceived`, :class:`Timeout`,
:class:`AckTimeout`, :class:`Dropped`). What the layer handles so the core never sees it:

* Retransmitted requests (matched per §17.2.3 by branch + sent-by + method; RFC 2543 peers
  without a magic cookie by Call-ID, From tag, CSeq, sent-by) get the last response again: one
  :class:`NewRequest` per transaction. ``send_trying`` sends 100 Trying at once (§17.2.1).
* INVITE server: a non-2xx final is retransmitted by Timer G (T1 doubling to T2) until its ACK,
  which is absorbed (Timer I = T4); none by Timer H (64·T1) → :class:`Timeout`. A 2xx moves
  it to Accepted (RFC 6026 Timer L, 64·T1: INVITE retransmissions get the 2xx) and starts a
  :class:`TwoHundredRetransmit` for the core (§13.3.1.4): the 2xx's ACK, a transaction of its
  own, reaches the core once as :class:`Ack`; none by 64·T1 → :class:`AckTimeout`.
* Non-INVITE server (§17.2.2): Trying, Proceeding, Completed; Timer J (64·T1) ends it.
* CANCEL (§9.2): no matching INVITE → 481; INVITE already answered → 200, no effect; INVITE
  pending → :class:`Cancel`, answered by ``answer_cancel`` (200 to it, 487 to the INVITE).
* Non-INVITE client (§17.1.2; BYE, REFER, NOTIFY, REGISTER, OPTIONS): Timer E retransmits (T1
  doubling to T2; T2 after a provisional), Timer F (64·T1) → :class:`Timeout`, Timer K (T4)
  absorbs repeated finals. INVITE client transactions are not implemented.
* Bounded memory: all state ends by a timer; a request the core never answers is dropped with
  a :class:`Timeout` after 64·T1 (``Timers.c`` for INVITE); past ``max_transactions`` new
  requests get a stateless 503.

Timers fire at their exact scheduled times: each retransmission is scheduled from the previous
one's due time, not from when ``tick`` ran, and a late ``tick`` catches up in order.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from typing import Literal, TypeAlias

from services.errors import SipError, UserError
from services.telephony.sip.headers import MAGIC_COOKIE, Via, new_tag
from services.telephony.sip.message import (
    Address,
    SipMessage,
    SipRequest,
    SipResponse,
    is_keepalive,
    parse,
    reply_to_malformed,
    response_destination,
    response_to,
    stamp_via,
)

__all__ = [
    "Ack",
    "AckTimeout",
    "Cancel",
    "Dropped",
    "NewRequest",
    "Output",
    "ResponseReceived",
    "Send",
    "Timeout",
    "Timers",
    "TransactionLayer",
    "TwoHundredRetransmit",
]


@dataclasses.dataclass(frozen=True, slots=True)
class Timers:
    """RFC 3261 §17.1.1.1 / Table 4 values, in seconds. ``c`` caps how long an INVITE may wait
    for the core's final response (the analogue of a proxy's Timer C, §16.6, > 3 min)."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    c: float = 180.0

    @property
    def long(self) -> float:
        """64·T1: Timers B, F, H, J, L and the 2xx give-up time."""
        return 64 * self.t1


@dataclasses.dataclass(frozen=True, slots=True)
class Send:
    data: bytes
    destination: Address


@dataclasses.dataclass(frozen=True, slots=True)
class NewRequest:
    """A request that is not a retransmission; answer it with ``send_response``."""

    request: SipRequest
    source: Address


@dataclasses.dataclass(frozen=True, slots=True)
class Ack:
    """The first ACK for a 2xx we sent (late-offer SDP may be in its body)."""

    request: SipRequest
    source: Address


@dataclasses.dataclass(frozen=True, slots=True)
class Cancel:
    """A CANCEL for an INVITE still waiting for its final response (§9.2)."""

    cancel: SipRequest
    invite: SipRequest
    source: Address


@dataclasses.dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response (provisional or the first final) to a request we sent."""

    response: SipResponse
    request: SipRequest


@dataclasses.dataclass(frozen=True, slots=True)
class Timeout:
    """``client``: our request got no final response by Timer F. Server side: no ACK for a
    non-2xx by Timer H, or the core never answered the request."""

    request: SipRequest
    client: bool


@dataclasses.dataclass(frozen=True, slots=True)
class AckTimeout:
    """No ACK for our 2xx in 64·T1 (§13.3.1.4): the core ends the call with a BYE."""

    response: SipResponse


@dataclasses.dataclass(frozen=True, slots=True)
class Dropped:
    """An input discarded; ``reason`` is a metric label: ``malformed``, ``too_large``,
    ``not_sip``, ``stray_response``, ``overload``."""

    reason: str
    status: int
    source: Address
    detail: str


Output: TypeAlias = (
    Send | NewRequest | Ack | Cancel | ResponseReceived | Timeout | AckTimeout | Dropped
)
_Key: TypeAlias = tuple[str, ...]


class TwoHundredRetransmit:
    """Retransmits a 2xx to an INVITE until its ACK (RFC 3261 §13.3.1.4): T1 doubling to T2,
    then :class:`AckTimeout` at 64·T1. Used by :class:`TransactionLayer`; usable alone."""

    def __init__(
        self, response: SipResponse, destination: Address, now: float, timers: Timers
    ) -> None:
        self.response = response
        self.destination = destination
        self.done = False
        self.scheduled: float | None = None
        self._data = bytes(response)
        self._t2 = timers.t2
        self._interval = timers.t1
        self._next = now + timers.t1
        self._give_up = now + timers.long

    @property
    def deadline(self) -> float | None:
        return None if self.done else min(self._next, self._give_up)

    def acknowledge(self) -> None:
        self.done = True

    def tick(self, now: float) -> list[Output]:
        out: list[Output] = []
        while not self.done and now >= min(self._next, self._give_up):
            if self._give_up <= self._next:
                self.done = True
                out.append(AckTimeout(self.response))
            else:
                out.append(Send(self._data, self.destination))
                self._interval = min(2 * self._interval, self._t2)
                self._next += self._interval
        return out


_ServerState = Literal["trying", "proceeding", "completed", "confirmed", "accepted"]


class _ServerTxn:
    """One server transaction (§17.2.1 INVITE, §17.2.2 non-INVITE)."""

    def __init__(
        self, key: _Key, request: SipRequest, source: Address, now: float, timers: Timers
    ) -> None:
        self.key, self.request, self.source, self.timers = key, request, source, timers
        self.invite = request.method == "INVITE"
        self.state: _ServerState = "proceeding" if self.invite else "trying"
        self.destination = response_destination(stamp_via(request.via, source))
        self.last: bytes | None = None
        self.to_tag: str | None = None
        self.retransmit_at: float | None = None
        self.interval = timers.t1
        self.end_at: float | None = now + (timers.c if self.invite else timers.long)
        self.done = False
        self.scheduled: float | None = None

    @property
    def deadline(self) -> float | None:
        due = [t for t in (self.retransmit_at, self.end_at) if t is not None]
        return min(due) if due else None

    def respond(self, response: SipResponse, now: float) -> list[Output]:
        if self.state not in ("trying", "proceeding"):
            raise UserError(f"{self.request.method} already has a final response")
        self.last = bytes(response)
        self.to_tag = response.to.tag or self.to_tag
        t = self.timers
        if response.status < 200:
            self.state = "proceeding"
        elif self.invite and response.status < 300:
            self.state, self.end_at = "accepted", now + t.long  # RFC 6026 Timer L
        elif self.invite:  # Timers G and H (§17.2.1)
            self.state, self.retransmit_at, self.end_at = "completed", now + t.t1, now + t.long
        else:  # Timer J (§17.2.2)
            self.state, self.end_at = "completed", now + t.long
        return [Send(self.last, self.destination)]

    def fire(self, now: float) -> list[Output]:
        out: list[Output] = []
        if self.retransmit_at is not None and now >= self.retransmit_at and self.last:
            out.append(Send(self.last, self.destination))  # Timer G
            self.interval = min(2 * self.interval, self.timers.t2)
            self.retransmit_at += self.interval
        if self.end_at is not None and now >= self.end_at:
            if self.state in ("trying", "proceeding") or (
                self.invite and self.state == "completed"
            ):
                out.append(Timeout(self.request, client=False))  # no answer / Timer H
            self.done = True
        return out


class _ClientTxn:
    """One non-INVITE client transaction (§17.1.2)."""

    def __init__(
        self, key: _Key, request: SipRequest, destination: Address, now: float, timers: Timers
    ) -> None:
        self.key, self.request, self.destination, self.timers = key, request, destination, timers
        self.data = bytes(request)
        self.state: Literal["trying", "proceeding", "completed"] = "trying"
        self.interval = timers.t1
        self.retransmit_at: float | None = now + timers.t1  # Timer E
        self.end_at = now + timers.long  # Timer F
        self.done = False
        self.scheduled: float | None = None

    @property
    def deadline(self) -> float:
        return self.end_at if self.retransmit_at is None else min(self.retransmit_at, self.end_at)

    def on_response(self, response: SipResponse, now: float) -> list[Output]:
        if self.state == "completed":
            return []  # a retransmitted final, absorbed while Timer K runs
        if response.status >= 200:
            self.state, self.retransmit_at, self.end_at = "completed", None, now + self.timers.t4
        else:
            self.state = "proceeding"
        return [ResponseReceived(response, self.request)]

    def fire(self, now: float) -> list[Output]:
        out: list[Output] = []
        if self.retransmit_at is not None and now >= self.retransmit_at:
            out.append(Send(self.data, self.destination))
            proceeding = self.state == "proceeding"
            self.interval = self.timers.t2 if proceeding else min(2 * self.interval, self.timers.t2)
            self.retransmit_at += self.interval
        if now >= self.end_at:
            if self.state != "completed":
                out.append(Timeout(self.request, client=True))  # Timer F
            self.done = True
        return out


_Entry: TypeAlias = _ServerTxn | _ClientTxn | TwoHundredRetransmit


def _key(via: Via, call_id: str, from_tag: str | None, cseq: int, method: str) -> _Key:
    host, port = via.sent_by
    branch = via.branch or ""
    if branch.startswith(MAGIC_COOKIE) and len(branch) > len(MAGIC_COOKIE):
        return (branch, host, str(port), method)  # §17.2.3
    # RFC 2543 peer (no usable branch; RFC 4475 §3.2.1): the older matching rules, simplified.
    return ("rfc2543", call_id, from_tag or "", str(cseq), host, str(port), method)


def _server_key(msg: SipMessage, method: str) -> _Key:
    return _key(msg.via, msg.call_id, msg.from_.tag, msg.cseq.number, method)


class TransactionLayer:
    """All transactions of one UAS; see the module docstring for the contract."""

    def __init__(
        self,
        timers: Timers | None = None,
        *,
        send_trying: bool = True,
        max_transactions: int = 10_000,
    ) -> None:
        self.timers = timers or Timers()
        self.send_trying = send_trying
        self.max_transactions = max_transactions
        self._server: dict[_Key, _ServerTxn] = {}
        self._client: dict[_Key, _ClientTxn] = {}
        self._acks: dict[tuple[str, int], TwoHundredRetransmit] = {}
        self._heap: list[tuple[float, int, _Entry]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        """Live transactions and 2xx retransmitters (what memory holds)."""
        return len(self._server) + len(self._client) + len(self._acks)

    # --- input -----------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, source: Address, now: float) -> list[Output]:
        """Parse and :meth:`receive` one datagram; keep-alives vanish, bad input is answered
        statelessly where §8.2 / §21.4 say so and reported as :class:`Dropped`."""
        if is_keepalive(data):
            return []
        try:
            msg = parse(data)
        except SipError as exc:
            out: list[Output] = []
            reply = reply_to_malformed(data, exc, source)
            if reply is not None:
                out.append(Send(*reply))
            reason = {0: "not_sip", 513: "too_large"}.get(exc.status, "malformed")
            return [*out, Dropped(reason, exc.status, source, str(exc))]
        return self.receive(msg, source, now)

    def receive(self, msg: SipMessage, source: Address, now: float) -> list[Output]:
        if isinstance(msg, SipResponse):
            return self._on_response(msg, source, now)
        if msg.method == "ACK":
            return self._on_ack(msg, source, now)
        key = _server_key(msg, msg.method)
        txn = self._server.get(key)
        if txn is not None:  # a retransmission: the last response again, nothing for the core
            return [] if txn.last is None else [Send(txn.last, txn.destination)]
        if len(self._server) >= self.max_transactions:
            busy = response_to(msg, 503, headers=[("Retry-After", "5")], source=source)
            dest = response_destination(busy.via)
            return [
                Send(bytes(busy), dest),
                Dropped("overload", 503, source, "transaction table full"),
            ]
        txn = _ServerTxn(key, msg, source, now, self.timers)
        self._server[key] = txn
        out: list[Output] = []
        if msg.method == "CANCEL":
            out += self._on_cancel(txn, msg, source, now)
        else:
            if txn.invite and self.send_trying:
                out += txn.respond(response_to(msg, 100, source=source), now)
            out.append(NewRequest(msg, source))
        self._schedule(txn)
        return out

    def _on_ack(self, ack: SipRequest, source: Address, now: float) -> list[Output]:
        txn = self._server.get(_server_key(ack, "INVITE"))
        if txn is not None and txn.state in ("completed", "confirmed"):
            if txn.state == "completed":  # ACK for our non-2xx: Timer I (§17.2.1)
                txn.state, txn.retransmit_at, txn.end_at = "confirmed", None, now + self.timers.t4
                self._schedule(txn)
            return []
        retransmitter = self._acks.pop((ack.call_id, ack.cseq.number), None)
        if retransmitter is None:
            return []  # a repeated ACK (one per 2xx retransmission) or a late one
        retransmitter.acknowledge()
        return [Ack(ack, source)]

    def _on_cancel(
        self, txn: _ServerTxn, cancel: SipRequest, source: Address, now: float
    ) -> list[Output]:
        invite = self._server.get(_server_key(cancel, "INVITE"))
        if invite is None:
            return txn.respond(response_to(cancel, 481, source=source), now)
        if invite.state == "proceeding":
            return [Cancel(cancel, invite.request, source)]
        # The INVITE has its final response: the CANCEL has no effect on it (§9.2).
        return txn.respond(response_to(cancel, 200, to_tag=invite.to_tag, source=source), now)

    def _on_response(self, response: SipResponse, source: Address, now: float) -> list[Output]:
        txn = self._client.get((response.via.branch or "", response.cseq.method))
        if txn is None:
            return [
                Dropped("stray_response", 0, source, f"{response.status} matches no transaction")
            ]
        out = txn.on_response(response, now)
        self._schedule(txn)
        return out

    # --- output ----------------------------------------------------------------------------

    def send_response(self, response: SipResponse, now: float) -> list[Output]:
        """Send the core's response through its server transaction (matched by the top Via
        and CSeq it copied); with none (it has ended), send it statelessly by the Via."""
        txn = self._server.get(_server_key(response, response.cseq.method))
        if txn is None:
            return [Send(bytes(response), response_destination(response.via))]
        out = txn.respond(response, now)
        self._schedule(txn)
        if txn.state == "accepted":
            retransmitter = TwoHundredRetransmit(response, txn.destination, now, self.timers)
            self._acks[(response.call_id, response.cseq.number)] = retransmitter
            self._schedule(retransmitter)
        return out

    def answer_cancel(
        self, event: Cancel, now: float, *, to_tag: str | None = None
    ) -> list[Output]:
        """200 to the CANCEL and 487 to its INVITE, with one To tag (§9.2): ``to_tag``, else the
        tag of a provisional response already sent, else a new one."""
        invite = self._server.get(_server_key(event.invite, "INVITE"))
        tag = to_tag or (invite.to_tag if invite else None) or new_tag()
        out = self.send_response(
            response_to(event.cancel, 200, to_tag=tag, source=event.source), now
        )
        if invite is not None and invite.state == "proceeding":
            out += self.send_response(
                response_to(event.invite, 487, to_tag=tag, source=event.source), now
            )
        return out

    def send_request(self, request: SipRequest, destination: Address, now: float) -> list[Output]:
        """Send a request of ours in a new client transaction (ACK: no transaction, §17.1.1.3)."""
        if request.method == "ACK":
            return [Send(bytes(request), destination)]
        if request.method in ("INVITE", "CANCEL"):
            raise UserError(f"client {request.method} transactions are not implemented")
        key = (request.via.branch or "", request.method)
        if key in self._client:
            raise UserError("a client transaction with this branch is already running")
        txn = _ClientTxn(key, request, destination, now, self.timers)
        self._client[key] = txn
        self._schedule(txn)
        return [Send(txn.data, destination)]

    # --- timers ----------------------------------------------------------------------------

    def tick(self, now: float) -> list[Output]:
        """Fire every timer due by ``now``, in deadline order."""
        out: list[Output] = []
        while self._heap and self._heap[0][0] <= now:
            when, _, entry = heapq.heappop(self._heap)
            if entry.done or entry.scheduled != when:
                continue  # superseded by a later schedule, or ended
            entry.scheduled = None
            out += entry.tick(now) if isinstance(entry, TwoHundredRetransmit) else entry.fire(now)
            self._schedule(entry)
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has work (None: nothing pending)."""
        while self._heap:
            when, _, entry = self._heap[0]
            if not entry.done and entry.scheduled == when:
                return when
            heapq.heappop(self._heap)
        return None

    def _schedule(self, entry: _Entry) -> None:
        if entry.done:
            self._forget(entry)
            return
        deadline = entry.deadline
        if deadline is not None and deadline != entry.scheduled:
            entry.scheduled = deadline
            heapq.heappush(self._heap, (deadline, next(self._seq), entry))

    def _forget(self, entry: _Entry) -> None:
        if isinstance(entry, _ServerTxn) and self._server.get(entry.key) is entry:
            del self._server[entry.key]
        elif isinstance(entry, _ClientTxn) and self._client.get(entry.key) is entry:
            del self._client[entry.key]
        elif isinstance(entry, TwoHundredRetransmit):
            key = (entry.response.call_id, entry.response.cseq.number)
            if self._acks.get(key) is entry:
                del self._acks[key]
