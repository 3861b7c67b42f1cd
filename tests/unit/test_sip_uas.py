"""The UAS core on a virtual clock, fed real datagrams: a call from INVITE to BYE, CANCEL, late
offer, ACK timeout, re-INVITE hold, session timers, REFER and its NOTIFYs, OPTIONS, the door
(allow-list, digest, INVITE flood), and the refusals (481, 420, 422, 501, 405)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from services.gateway.front_door import SourceRate
from services.telephony.sip.digest import DigestAuthority, answer
from services.telephony.sip.headers import new_branch
from services.telephony.sip.message import SipRequest, SipResponse, parse
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
)

CAPTURES = Path(__file__).parents[1] / "fixtures" / "sip" / "captures"
US = ("127.0.0.1", 5060)
PEER = ("127.0.0.1", 5090)
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0 101\r\n"
)


def uas(rate: float | None = None, **kw: object) -> UserAgentServer:
    limit = SourceRate(rate=rate, burst=2 * rate).allow if rate else None
    return UserAgentServer(UasSettings(local=US, **kw), allow_invite=limit)  # type: ignore[arg-type]


def sent(out: list[Output]) -> list[SipRequest | SipResponse]:
    return [parse(o.data) for o in out if isinstance(o, Send)]


def statuses(out: list[Output]) -> list[int]:
    return [m.status for m in sent(out) if isinstance(m, SipResponse)]


def events(out: list[Output], kind: type) -> list:  # type: ignore[type-arg]
    return [o for o in out if isinstance(o, kind)]


class Uac:
    """The caller's side, enough to drive the core."""

    def __init__(self, call_id: str = "call-1", tag: str = "ct1") -> None:
        self.call_id, self.tag, self.cseq = call_id, tag, 1
        self.to_tag: str | None = None

    def request(
        self,
        method: str,
        *,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
        cseq: int | None = None,
        in_dialog: bool = True,
        branch: str | None = None,
    ) -> bytes:
        to = "<sip:service@127.0.0.1:5060>"
        if in_dialog and self.to_tag:
            to += f";tag={self.to_tag}"
        number = cseq if cseq is not None else self.cseq
        lines = [
            f"{method} sip:service@127.0.0.1:5060 SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:5090;branch={branch or new_branch()};rport",
            "Max-Forwards: 70",
            f"From: <sip:caller@127.0.0.1>;tag={self.tag}",
            f"To: {to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {number} {method}",
            "Contact: <sip:caller@127.0.0.1:5090>",
            *[f"{k}: {v}" for k, v in headers or []],
        ]
        if body and not any(k == "Content-Type" for k, _ in headers or []):
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def invite(self, body: bytes = SDP, headers: list[tuple[str, str]] | None = None) -> bytes:
        self.branch = new_branch()
        return self.request(
            "INVITE", body=body, headers=headers, in_dialog=False, branch=self.branch
        )

    def cancel(self) -> bytes:
        """Same branch as the INVITE (RFC 3261 §9.1)."""
        return self.request("CANCEL", in_dialog=False, branch=self.branch)

    def learn(self, out: list[Output]) -> None:
        for message in sent(out):
            if isinstance(message, SipResponse) and message.to.tag:
                self.to_tag = message.to.tag

    def next(self, method: str, **kw: object) -> bytes:
        self.cseq += 1
        return self.request(method, **kw)  # type: ignore[arg-type]


def answered(
    core: UserAgentServer, uac: Uac, now: float = 0.0
) -> tuple[IncomingCall, list[Output]]:
    out = core.receive(uac.invite(), PEER, now)
    [incoming] = events(out, IncomingCall)
    accepted = core.accept(incoming.call, b"v=0\r\n", now)
    uac.learn(accepted)
    return incoming, out + accepted


def test_a_call_from_invite_to_the_callers_bye() -> None:
    core, uac = uas(), Uac()
    out = core.receive(uac.invite(), PEER, 0.0)
    assert statuses(out) == [100]
    [incoming] = events(out, IncomingCall)
    assert incoming.call.offer == SDP
    assert statuses(core.ringing(incoming.call, 0.01)) == [180]
    ok = core.accept(incoming.call, b"v=0\r\nanswer", 0.05)
    [response] = sent(ok)
    assert isinstance(response, SipResponse) and response.status == 200
    assert response.body == b"v=0\r\nanswer" and response.headers["Contact"]
    assert response.to.tag == incoming.call.to_tag
    uac.learn(ok)
    # Retransmitted until the ACK (T1 = 500 ms).
    assert statuses(core.tick(0.55)) == [200]
    confirmed = core.receive(uac.request("ACK"), PEER, 0.6)
    assert events(confirmed, CallConfirmed)
    assert statuses(core.tick(5.0)) == []  # no more 200s
    bye = core.receive(uac.next("BYE"), PEER, 10.0)
    assert statuses(bye) == [200]
    [ended] = events(bye, CallEnded)
    assert ended.reason == "caller_hangup" and core.calls == {}


def test_the_sipp_and_baresip_invites_are_offered_once_despite_retransmission() -> None:
    for name in ("sipp_invite.sip", "baresip_invite.sip"):
        core = uas()
        data = (CAPTURES / name).read_bytes()
        first = core.receive(data, PEER, 0.0)
        again = core.receive(data, PEER, 0.5)
        assert len(events(first, IncomingCall)) == 1 and events(again, IncomingCall) == []
        assert statuses(again) == [100]  # the last response, resent


def test_cancel_before_the_answer_gets_487_and_after_it_has_no_effect() -> None:
    core, uac = uas(), Uac()
    out = core.receive(uac.invite(), PEER, 0.0)
    [incoming] = events(out, IncomingCall)
    cancel = core.receive(uac.cancel(), PEER, 0.1)
    assert sorted(statuses(cancel)) == [200, 487]
    assert events(cancel, CallCancelled) and core.calls == {}
    # CANCEL after 200: no effect on the call.
    core, uac = uas(), Uac("call-2")
    incoming, _ = answered(core, uac)
    late = core.receive(uac.cancel(), PEER, 0.1)
    assert statuses(late) == [200] and not events(late, CallCancelled)
    assert incoming.call.key in core.calls


def test_a_late_offer_gets_its_answer_in_the_ack() -> None:
    core, uac = uas(), Uac()
    out = core.receive(uac.invite(body=b""), PEER, 0.0)
    [incoming] = events(out, IncomingCall)
    assert incoming.call.offer == b""
    uac.learn(core.accept(incoming.call, b"v=0\r\nour offer", 0.0))
    confirmed = core.receive(uac.request("ACK", body=b"v=0\r\ntheir answer"), PEER, 0.1)
    [event] = events(confirmed, CallConfirmed)
    assert event.sdp == b"v=0\r\ntheir answer"


def test_no_ack_ends_the_call_with_a_bye() -> None:
    core, uac = uas(), Uac()
    answered(core, uac)
    out = core.tick(32.0)  # 64·T1
    [ended] = events(out, CallEnded)
    assert ended.reason == "ack_timeout"
    assert [m.method for m in sent(out) if isinstance(m, SipRequest)] == ["BYE"]


def test_a_reinvite_is_offered_and_answered_and_a_stale_cseq_refused() -> None:
    core, uac = uas(), Uac()
    answered(core, uac)
    core.receive(uac.request("ACK"), PEER, 0.1)
    out = core.receive(
        uac.next("INVITE", body=SDP.replace(b"0 101", b"0 101\r\na=sendonly")), PEER, 1.0
    )
    [reoffer] = events(out, Reoffer)
    assert b"a=sendonly" in reoffer.sdp
    assert statuses(core.answer_reoffer(reoffer, b"v=0\r\nrecvonly", 1.0)) == [200]
    stale = core.receive(uac.request("UPDATE", cseq=1), PEER, 2.0)
    assert statuses(stale) == [500]


def test_session_timers_are_granted_and_an_unrefreshed_session_ends() -> None:
    # A session timer runs from the 200, not before: a call still being admitted an hour into
    # the clock (monotonic time is large) must not expire.
    core = uas()
    out = core.receive(
        Uac("early").invite(headers=[("Session-Expires", "90;refresher=uac")]), PEER, 3600.0
    )
    [waiting] = events(out, IncomingCall)
    assert not events(core.tick(3600.5), CallEnded) and waiting.call.key in core.calls
    core, uac = uas(), Uac()
    out = core.receive(
        uac.invite(headers=[("Supported", "timer"), ("Session-Expires", "90;refresher=uac")]),
        PEER,
        0.0,
    )
    [incoming] = events(out, IncomingCall)
    ok = core.accept(incoming.call, b"v=0\r\n", 0.0)
    [response] = sent(ok)
    assert response.headers["Session-Expires"] == "90;refresher=uac"
    assert response.headers["Require"] == "timer"
    uac.learn(ok)
    core.receive(uac.request("ACK"), PEER, 0.1)
    # A refresh at 50 s moves the end to 50 + 90 - 30.
    refresh = core.receive(uac.next("UPDATE"), PEER, 50.0)
    core.answer_reoffer(events(refresh, Reoffer)[0], b"", 50.0)
    assert not events(core.tick(100.0), CallEnded)
    out = core.tick(110.0)
    [ended] = events(out, CallEnded)
    assert ended.reason == "session_expired"
    too_short = core.receive(Uac("c9").invite(headers=[("Session-Expires", "30")]), PEER, 0.0)
    assert statuses(too_short)[-1] == 422


def test_refer_then_the_callers_notify_says_how_the_transfer_went() -> None:
    core, uac = uas(), Uac()
    incoming, _ = answered(core, uac)
    core.receive(uac.request("ACK"), PEER, 0.1)
    out = core.refer(incoming.call, "tel:+14155550123", 1.0)
    [refer] = sent(out)
    assert isinstance(refer, SipRequest) and refer.method == "REFER"
    assert refer.headers["Refer-To"] == "<tel:+14155550123>"
    accepted = SipResponse(202, "Accepted", refer.headers.copy(), b"")
    core.receive(bytes(accepted), PEER, 1.1)
    notify = uac.next(
        "NOTIFY",
        headers=[("Event", "refer"), ("Content-Type", "message/sipfrag")],
        body=b"SIP/2.0 200 OK\r\n",
    )
    out = core.receive(notify, PEER, 2.0)
    assert statuses(out) == [200]
    [result] = events(out, TransferResult)
    assert result.status == 200


def test_options_info_dtmf_and_the_refusals() -> None:
    core, uac = uas(), Uac()
    options = core.receive(uac.request("OPTIONS", in_dialog=False), PEER, 0.0)
    [response] = sent(options)
    assert isinstance(response, SipResponse) and response.status == 200
    assert "INVITE" in response.headers["Allow"]
    assert statuses(core.receive(uac.request("FOO", in_dialog=False), PEER, 0.0)) == [501]
    assert statuses(core.receive(uac.request("REGISTER", in_dialog=False), PEER, 0.0)) == [405]
    assert statuses(core.receive(Uac("x", "y").request("BYE", in_dialog=False), PEER, 0.0)) == [481]
    required = core.receive(Uac("r1").invite(headers=[("Require", "100rel, foo")]), PEER, 0.0)
    assert statuses(required)[-1] == 420
    assert sent(required)[-1].headers.get_all("Unsupported") == ["100rel", "foo"]
    answered(core, uac)
    info = uac.next(
        "INFO",
        headers=[("Content-Type", "application/dtmf-relay")],
        body=b"Signal=5\r\nDuration=160\r\n",
    )
    out = core.receive(info, PEER, 1.0)
    assert [e.digit for e in events(out, DtmfInfo)] == ["5"]
    garbage = core.receive(b"INVITE nonsense\r\n\r\n", PEER, 0.0)
    assert events(garbage, Dropped)


def test_the_door_allow_list_digest_and_an_invite_flood() -> None:
    trunk = (ipaddress.ip_network("10.0.0.0/8"),)
    closed = uas(allow_sources=trunk)
    assert statuses(closed.receive(Uac().invite(), PEER, 0.0))[-1] == 403
    assert statuses(closed.receive(Uac("ok").invite(), ("10.1.2.3", 5060), 0.0))[-1] == 100
    authority = DigestAuthority("callray", "a-secret-of-16-bytes+", {"trunk": "pw"})
    guarded = uas(allow_sources=trunk, authority=authority)
    out = guarded.receive(Uac().invite(), PEER, 0.0)
    [challenge] = sent(out)[-1:]
    assert isinstance(challenge, SipResponse) and challenge.status == 407
    header = challenge.headers["Proxy-Authenticate"]
    credentials = answer(header, "INVITE", "sip:service@127.0.0.1:5060", "trunk", "pw", "c0ffee", 1)
    retry = Uac(tag="ct2").invite(headers=[("Proxy-Authorization", credentials)])
    assert events(guarded.receive(retry, PEER, 1.0), IncomingCall)
    wrong = answer(header, "INVITE", "sip:service@127.0.0.1:5060", "trunk", "nope", "c0ffee", 2)
    assert (
        statuses(
            guarded.receive(Uac("w").invite(headers=[("Proxy-Authorization", wrong)]), PEER, 1.0)
        )[-1]
        == 407
    )
    flood = uas(rate=5.0)
    codes = [statuses(flood.receive(Uac(f"f{n}").invite(), PEER, 0.0))[-1] for n in range(12)]
    assert codes[:10] == [100] * 10 and codes[10:] == [503, 503]
    assert statuses(flood.receive(Uac("later").invite(), PEER, 1.0))[-1] == 100


def test_an_invite_left_unanswered_gets_408_at_the_deadline() -> None:
    core = uas(answer_deadline_s=5.0)
    core.receive(Uac().invite(), PEER, 0.0)
    assert core.next_deadline() is not None
    out = core.tick(5.0)
    assert 408 in statuses(out) and events(out, CallEnded)[0].reason == "unanswered"
