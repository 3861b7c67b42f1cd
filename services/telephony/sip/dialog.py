"""SIP dialogs on the UAS side (RFC 3261 §12), sans-I/O; plus the SIP URI parsing routing needs.

A :class:`Dialog` is created from the INVITE and our dialog-creating response (§12.1.1):
Call-ID, our tag (from that response's To: generate it with
:func:`~services.telephony.sip.headers.new_tag`), the peer's tag (From), the remote target
(the INVITE's Contact), the route set (its Record-Route, in order) and the peer's CSeq.
It then:

* checks each in-dialog request the core receives (:meth:`Dialog.receive`): it must belong to
  the dialog (else 481) and its CSeq must not go backwards (else 500, §12.2.2);
* builds our in-dialog requests (:meth:`Dialog.request`, §12.2.1.1): To/From with tags, a new
  local CSeq each, Route from the route set (loose or strict routing), Contact, and a UDP Via
  from ``sent_by``; with helpers for BYE, REFER (RFC 3515) and NOTIFY with a ``message/sipfrag``
  body; hand them to :meth:`TransactionLayer.send_request` with :meth:`Dialog.next_hop`.

Incoming requests are matched to dialogs with :meth:`DialogId.incoming` (Call-ID, our tag in
To, their tag in From). Nothing here sends, keeps time, or holds more than one dialog.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Literal

from services.errors import SipError, UserError
from services.telephony.sip.headers import (
    NameAddr,
    Params,
    is_uri,
    parse_params,
    render_params,
    split_hostport,
)
from services.telephony.sip.message import Address, SipRequest, SipResponse, build_request

__all__ = ["Dialog", "DialogId", "SipUri", "sipfrag_status"]

_SIPFRAG = re.compile(rb"\s*SIP/2\.0 ([1-6]\d\d)\b")


@dataclasses.dataclass(frozen=True, slots=True)
class SipUri:
    """A ``sip:`` / ``sips:`` URI (§19.1), enough to route: user, host, port, params.

    ``parse`` raises ``SipError(status=416)`` for any other scheme (§21.4.17), so a UAS can
    answer an unknown Request-URI scheme correctly (RFC 4475 §3.3.2); 400 if malformed.
    Escapes are kept as written.
    """

    host: str
    user: str | None = None
    port: int | None = None
    params: Params = dataclasses.field(default_factory=dict)
    headers: str = ""
    scheme: str = "sip"

    @classmethod
    def parse(cls, text: str) -> SipUri:
        text = text.strip()
        scheme, colon, rest = text.partition(":")
        if not colon or scheme.lower() not in ("sip", "sips"):
            raise SipError(f"unsupported URI scheme {scheme[:20]!r}", status=416, field="uri")
        if not is_uri(text):
            raise SipError("malformed URI", status=400, field="uri")
        userinfo, at, hostpart = rest.rpartition("@")  # the user part may hold ';' and '?'
        hostpart, _, headers = hostpart.partition("?")
        hostport, semi, params = hostpart.partition(";")
        host, port = split_hostport(hostport, "URI")
        user = userinfo.partition(":")[0] if at else None
        return cls(host, user, port, parse_params(semi + params, "URI"), headers, scheme.lower())

    def address(self) -> Address:
        """Where to send: ``maddr`` or the host, and the port or 5060/5061 (RFC 3263 §4.2 without
        DNS: the adapter resolves a hostname)."""
        host = self.params.get("maddr") or self.host
        return host.strip("[]"), self.port or (5061 if self.scheme == "sips" else 5060)

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user is not None else ""
        port = "" if self.port is None else f":{self.port}"
        headers = f"?{self.headers}" if self.headers else ""
        return f"{self.scheme}:{user}{self.host}{port}{render_params(self.params)}{headers}"


def _is_loose(route: str) -> bool:
    """A Route entry with ``;lr`` (§16.12.1.1); a URI we cannot parse counts as loose."""
    try:
        return "lr" in SipUri.parse(NameAddr.parse(route, "Route").uri).params
    except SipError:
        return True


@dataclasses.dataclass(frozen=True, slots=True)
class DialogId:
    """(Call-ID, local tag, remote tag): what identifies a dialog at our end (§12)."""

    call_id: str
    local_tag: str
    remote_tag: str

    @classmethod
    def incoming(cls, request: SipRequest) -> DialogId | None:
        """The id of the dialog an incoming request belongs to; None if it has no To tag
        (then it is not in a dialog, §12.2.2). A missing From tag (RFC 2543) is ``""``."""
        local = request.to.tag
        if local is None:
            return None
        return cls(request.call_id, local, request.from_.tag or "")


@dataclasses.dataclass
class Dialog:
    """One UAS dialog; create with :meth:`from_invite`. See the module docstring."""

    call_id: str
    local_tag: str
    remote_tag: str
    local: NameAddr  # the INVITE's To, without tag: our From in requests we send
    remote: NameAddr  # the INVITE's From, without tag: our To
    remote_target: str
    route_set: tuple[str, ...]
    local_contact: str
    sent_by: Address
    remote_cseq: int | None
    local_cseq: int = 0  # the last one used; the first request gets ``first_cseq``
    state: Literal["early", "confirmed", "terminated"] = "confirmed"
    source: Address | None = None  # where the INVITE came from (symmetric signalling, NAT)

    @classmethod
    def from_invite(
        cls,
        invite: SipRequest,
        response: SipResponse,
        *,
        sent_by: Address,
        source: Address | None = None,
        first_cseq: int = 1,
    ) -> Dialog:
        """The dialog our 101-299 ``response`` (with a To tag and a Contact) creates (§12.1.1)."""
        local_tag = response.to.tag
        our_contacts = response.contacts
        if invite.method != "INVITE" or not 100 < response.status < 300:
            raise UserError("a dialog needs an INVITE and a 101-299 response to it")
        if local_tag is None or not our_contacts:
            raise UserError("a dialog-creating response needs a To tag and a Contact (§12.1.1)")
        contacts = invite.contacts
        if not contacts:  # §8.1.1.8: an INVITE MUST carry one
            raise SipError("INVITE without Contact", status=400, field="Contact")
        to, from_ = invite.to, invite.from_
        return cls(
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=from_.tag or "",
            local=NameAddr(to.uri, to.display, {k: v for k, v in to.params.items() if k != "tag"}),
            remote=NameAddr(
                from_.uri, from_.display, {k: v for k, v in from_.params.items() if k != "tag"}
            ),
            remote_target=contacts[0].uri,
            route_set=tuple(invite.headers.get_all("Record-Route")),
            local_contact=our_contacts[0].uri,
            sent_by=sent_by,
            remote_cseq=invite.cseq.number,
            local_cseq=first_cseq - 1,
            state="confirmed" if response.status >= 200 else "early",
            source=source,
        )

    @property
    def id(self) -> DialogId:
        return DialogId(self.call_id, self.local_tag, self.remote_tag)

    def confirm(self) -> None:
        """Our 2xx went out for an early dialog (§12.1: early → confirmed)."""
        self.state = "confirmed"

    def receive(self, request: SipRequest) -> None:
        """Check an incoming in-dialog request and record its CSeq (§12.2.2).

        Raises SipError 481 if it belongs to another dialog, 500 if its CSeq is below the
        last one (out of order). ACK and CANCEL reuse the INVITE's number and are not counted.
        """
        if DialogId.incoming(request) != self.id:
            raise SipError("request does not belong to this dialog", status=481)
        if request.method in ("ACK", "CANCEL"):
            return
        number = request.cseq.number
        if self.remote_cseq is not None and number < self.remote_cseq:
            raise SipError(f"CSeq {number} is below {self.remote_cseq}", status=500, field="CSeq")
        self.remote_cseq = number

    def refresh_target(self, request: SipRequest) -> None:
        """A target refresh (re-INVITE, UPDATE) we accepted moves the remote target (§12.2.2)."""
        contacts = request.contacts
        if contacts:
            self.remote_target = contacts[0].uri

    def next_hop(self) -> Address:
        """Where our in-dialog requests go: the first route, else the remote target (§12.2.1.1,
        §8.1.2). The peer's ``source`` may be the better choice behind NAT; the core decides."""
        uri = (
            NameAddr.parse(self.route_set[0], "Route").uri if self.route_set else self.remote_target
        )
        return SipUri.parse(uri).address()

    def request(
        self,
        method: str,
        *,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> SipRequest:
        """A new in-dialog request with the next local CSeq and a fresh branch (§12.2.1.1)."""
        if self.state == "terminated":
            raise UserError("the dialog has ended")
        uri, routes = self.remote_target, list(self.route_set)
        if routes and not _is_loose(routes[0]):  # strict router: it becomes the Request-URI
            uri = NameAddr.parse(routes[0], "Route").uri
            routes = [*routes[1:], f"<{self.remote_target}>"]
        self.local_cseq += 1
        return build_request(
            method,
            uri,
            from_=self.local.with_tag(self.local_tag),
            to=self.remote.with_tag(self.remote_tag) if self.remote_tag else self.remote,
            call_id=self.call_id,
            cseq=self.local_cseq,
            sent_by=self.sent_by,
            contact=f"<{self.local_contact}>",
            route=routes,
            headers=headers,
            body=body,
            content_type=content_type,
        )

    def bye(self, *, headers: Iterable[tuple[str, str]] = ()) -> SipRequest:
        """BYE (§15.1.1); the dialog is over for new requests once it is built."""
        request = self.request("BYE", headers=headers)
        self.state = "terminated"
        return request

    def refer(self, target: str, *, referred_by: str | None = None) -> SipRequest:
        """REFER to ``target`` (a ``sip:``, ``sips:`` or ``tel:`` URI), RFC 3515 §2.4.1."""
        if not is_uri(target) or target.partition(":")[0].lower() not in ("sip", "sips", "tel"):
            raise UserError("a transfer target must be a sip:, sips: or tel: URI")
        headers = [("Refer-To", f"<{target}>")]
        if referred_by is not None:
            headers.append(("Referred-By", f"<{referred_by}>"))  # RFC 3892
        return self.request("REFER", headers=headers)

    def notify_refer(
        self, status: int, reason: str, *, refer_cseq: int | None = None, expires: int = 60
    ) -> SipRequest:
        """NOTIFY with the referred call's progress as ``message/sipfrag`` (RFC 3515 §2.4.5);
        a final ``status`` (>= 200) terminates the implicit subscription (§2.4.7)."""
        event = "refer" if refer_cseq is None else f"refer;id={refer_cseq}"
        state = f"active;expires={expires}" if status < 200 else "terminated;reason=noresource"
        return self.request(
            "NOTIFY",
            headers=[("Event", event), ("Subscription-State", state)],
            body=f"SIP/2.0 {status} {reason}\r\n".encode(),
            content_type="message/sipfrag;version=2.0",
        )


def sipfrag_status(body: bytes) -> int | None:
    """The status code of a ``message/sipfrag`` NOTIFY body (``SIP/2.0 200 OK``), or None."""
    m = _SIPFRAG.match(body)
    return int(m.group(1)) if m else None
