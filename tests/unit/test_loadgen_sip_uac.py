"""The load generator's SIP UAC, sans-I/O, on a virtual clock: against our UAS core (the two are
wired datagram for datagram), and against hand-made responses for what the UAS never does."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from services.loadgen.sip_uac import Answered, HungUp, Output, Refused, Send, SipUac
from services.telephony.sip import offer_answer
from services.telephony.sip.message import SipRequest, SipResponse, parse, response_to
from services.telephony.sip.uas import UasSettings, UserAgentServer
from services.telephony.sip.uas_events import CallConfirmed, CallEnded, IncomingCall

T = TypeVar("T")
UAC = ("127.0.0.1", 40000)
UAS = ("127.0.0.1", 5060)


def sends(out: Sequence[object]) -> list[bytes]:
    return [o.data for o in out if isinstance(o, Send)]


def events(out: Sequence[object], kind: type[T]) -> list[T]:
    return [o for o in out if isinstance(o, kind)]


def request(data: bytes) -> SipRequest:
    message = parse(data)
    assert isinstance(message, SipRequest)
    return message


class Pair:
    """A UAC and a UAS exchanging datagrams at virtual times."""

    def __init__(self) -> None:
        self.uac = SipUac(UAC, UAS)
        self.uas = UserAgentServer(UasSettings(local=UAS))
        self.uac_events: list[Output] = []
        self.uas_events: list[object] = []

    def to_uas(self, out: Sequence[object], now: float) -> None:
        for data in sends(out):
            got = self.uas.receive(data, UAC, now)
            self.uas_events += [o for o in got if not isinstance(o, Send)]
            self.to_uac(got, now)

    def to_uac(self, out: Sequence[object], now: float) -> None:
        for data in sends(out):
            got = self.uac.receive(data, UAS, now)
            self.uac_events += [o for o in got if not isinstance(o, Send)]
            self.to_uas(got, now)

    def incoming(self) -> IncomingCall:
        [call] = [e for e in self.uas_events if isinstance(e, IncomingCall)]
        assert isinstance(call, IncomingCall)
        return call


def answer_sdp(offer: bytes, port: int = 30000) -> bytes:
    return offer_answer.answer(
        offer, local_ip="127.0.0.1", rtp_port=port, session_id=7, session_version=1
    ).sdp.encode()


def test_a_call_is_invited_answered_acked_and_hung_up_by_us() -> None:
    pair = Pair()
    call, out = pair.uac.dial(0, 41000, 0.0)
    invite = request(sends(out)[0])
    assert invite.method == "INVITE" and b"m=audio 41000 RTP/AVP 0 101" in invite.body
    assert invite.headers["Content-Type"] == "application/sdp" and "rport" in invite.via.params
    pair.to_uas(out, 0.0)
    incoming = pair.incoming().call
    pair.to_uac(pair.uas.accept(incoming, answer_sdp(incoming.offer), 0.004, [("X-A", "b")]), 0.004)
    [answered] = events(pair.uac_events, Answered)
    assert answered.call is call and call.status == 200
    assert call.remote_rtp == ("127.0.0.1", 30000) and call.setup_ms == 4.0
    assert any(isinstance(e, CallConfirmed) for e in pair.uas_events)  # our ACK reached it
    out = pair.uac.hang_up(call, 5.0)
    bye = request(sends(out)[0])
    assert bye.method == "BYE" and bye.cseq.number == 2 and bye.to.tag == incoming.to_tag
    pair.to_uas(out, 5.0)
    assert any(isinstance(e, CallEnded) for e in pair.uas_events)
    assert pair.uac.tick(40.0) == [] and pair.uac.bye_timeouts == 0  # the 200 stopped Timer E


def test_the_uas_bye_is_answered_with_its_reason() -> None:
    pair = Pair()
    call, out = pair.uac.dial(0, 41000, 0.0)
    pair.to_uas(out, 0.0)
    incoming = pair.incoming().call
    pair.to_uac(pair.uas.accept(incoming, answer_sdp(incoming.offer), 0.01), 0.01)
    bye = pair.uas.bye(incoming, 1.0, "agent_hangup")
    got = pair.uac.receive(sends(bye)[0], UAS, 1.0)
    [ok] = sends(got)
    assert parse(ok).status == 200  # type: ignore[union-attr]
    assert events(got, HungUp) and call.closed_reason == "agent_hangup" and call.state == "ended"
    again = pair.uac.receive(sends(bye)[0], UAS, 1.5)  # a retransmission: the 200, no event
    assert sends(again) == [ok] and not events(again, HungUp)
    assert pair.uac.hang_up(call, 2.0) == []  # already over: no BYE of ours


def test_busy_is_refused_and_acked_on_the_invite_branch() -> None:
    pair = Pair()
    call, out = pair.uac.dial(3, 41000, 0.0)
    pair.to_uas(out, 0.0)
    rejected = pair.uas.reject(pair.incoming().call, 503, 0.002, retry_after=5)
    [data] = sends(rejected)
    got = pair.uac.receive(data, UAS, 0.002)
    [refused] = events(got, Refused)
    assert call.status == 503 and refused.reason == "SIP 503 Service Unavailable"
    ack = request(sends(got)[0])
    invite = call.invite
    assert ack.method == "ACK" and ack.via.branch == invite.via.branch  # §17.1.1.3
    assert ack.cseq.number == 1 and ack.to.tag == parse(data).to.tag
    again = pair.uac.receive(data, UAS, 0.5)  # the UAS's Timer G: the ACK again, no event
    assert sends(again) == sends(got)[:1] and not events(again, Refused)


def test_timer_a_doubles_until_a_provisional_and_timer_b_gives_up() -> None:
    uac = SipUac(UAC, UAS)
    call, out = uac.dial(0, 41000, 0.0)
    first = sends(out)[0]
    assert uac.next_deadline() == 0.5
    assert sends(uac.tick(0.49)) == []
    assert sends(uac.tick(0.5)) == [first]
    assert sends(uac.tick(1.4)) == [] and sends(uac.tick(1.5)) == [first]  # 1 s later
    assert sends(uac.tick(3.5)) == [first]  # 2 s later
    trying = response_to(call.invite, 100)
    assert uac.receive(bytes(trying), UAS, 3.6) == []
    assert sends(uac.tick(10.0)) == []  # proceeding: no more retransmissions
    assert call.invite_retransmits == 3
    [refused] = events(uac.tick(32.0), Refused)  # Timer B: 64·T1
    assert call.status == 408 and refused.call is call
    assert uac.next_deadline() is None


def test_a_2xx_retransmission_gets_the_same_ack_and_no_second_answer() -> None:
    uac = SipUac(UAC, UAS)
    call, _ = uac.dial(0, 41000, 0.0)
    ok = response_to(
        call.invite,
        200,
        headers=[("Contact", "<sip:callray@127.0.0.1:5060>"), ("X-Callray-Call-Id", "sip_x")],
        body=answer_sdp(call.offer.encode()),
        content_type="application/sdp",
    )
    first = uac.receive(bytes(ok), UAS, 0.1)
    assert events(first, Answered) and call.callray_call_id == "sip_x"
    ack = request(sends(first)[0])
    assert ack.uri == "sip:callray@127.0.0.1:5060" and ack.cseq.number == 1
    assert ack.via.branch != call.invite.via.branch  # a new transaction (§13.2.2.4)
    second = uac.receive(bytes(ok), UAS, 0.6)
    assert sends(second) == sends(first)[:1] and not events(second, Answered)


def test_an_answer_without_usable_audio_is_refused_and_the_call_ended() -> None:
    uac = SipUac(UAC, UAS)
    call, _ = uac.dial(0, 41000, 0.0)
    rejected_audio = answer_sdp(call.offer.encode()).replace(b"m=audio 30000", b"m=audio 0")
    ok = response_to(call.invite, 200, body=rejected_audio, content_type="application/sdp")
    got = uac.receive(bytes(ok), UAS, 0.1)
    [refused] = events(got, Refused)
    assert "unusable answer" in refused.reason
    assert [request(d).method for d in sends(got)] == ["ACK", "BYE"]


def test_in_dialog_requests_are_answered() -> None:
    pair = Pair()
    call, out = pair.uac.dial(0, 41000, 0.0)
    pair.to_uas(out, 0.0)
    incoming = pair.incoming().call
    pair.to_uac(pair.uas.accept(incoming, answer_sdp(incoming.offer), 0.01), 0.01)
    assert incoming.dialog is not None
    hold = incoming.dialog.request("INVITE")
    hold.body = answer_sdp(call.offer.encode()).replace(b"a=sendrecv", b"a=sendonly")
    hold.headers.set("Content-Type", "application/sdp")
    [reply] = sends(pair.uac.receive(bytes(hold), UAS, 1.0))
    response = parse(reply)
    assert isinstance(response, SipResponse) and response.status == 200
    assert b"a=recvonly" in response.body and b"m=audio 41000" in response.body
    for method, status in (("OPTIONS", 200), ("REFER", 501)):
        [reply] = sends(pair.uac.receive(bytes(incoming.dialog.request(method)), UAS, 1.1))
        assert parse(reply).status == status  # type: ignore[union-attr]
    stranger = incoming.dialog.request("BYE")
    stranger.headers.set("Call-ID", "nobody")
    [reply] = sends(pair.uac.receive(bytes(stranger), UAS, 1.2))
    assert parse(reply).status == 481  # type: ignore[union-attr]


def test_our_bye_is_retransmitted_until_answered_or_timer_f() -> None:
    uac = SipUac(UAC, UAS)
    call, _ = uac.dial(0, 41000, 0.0)
    ok = response_to(call.invite, 200, body=answer_sdp(call.offer.encode()))
    uac.receive(bytes(ok), UAS, 0.1)
    [bye] = sends(uac.hang_up(call, 1.0))
    assert sends(uac.tick(1.5)) == [bye]
    assert uac.tick(40.0) and uac.bye_timeouts == 1
    assert uac.receive(b"not sip at all\r\n\r\n", UAS, 41.0) == [] and uac.dropped["malformed"]
