"""SIP transactions on a virtual clock: exact retransmission times, timers E-L as a UAS meets
them (it answers INVITEs and sends BYE/REFER/NOTIFY), CANCEL, timeouts and bounded memory."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.errors import UserError
from services.telephony.sip.headers import NameAddr
from services.telephony.sip.message import (
    SipRequest,
    SipResponse,
    build_request,
    parse,
    response_to,
)
from services.telephony.sip.transaction import (
    Ack,
    AckTimeout,
    Cancel,
    Dropped,
    NewRequest,
    Output,
    ResponseReceived,
    Send,
    Timeout,
    Timers,
    TransactionLayer,
    TwoHundredRetransmit,
)

CAPTURES = Path(__file__).parents[1] / "fixtures" / "sip" / "captures"
SIPP = ("127.0.0.1", 5062)
# Timer G / E / 2xx retransmissions from t=0 with T1=0.5, T2=4 (RFC 3261 §17.1.2.2, §17.2.1).
DOUBLING = [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]


def capture(name: str) -> bytes:
    return (CAPTURES / f"{name}.sip").read_bytes()


def request(name: str) -> SipRequest:
    msg = parse(capture(name))
    assert isinstance(msg, SipRequest)
    return msg


def sends(outputs: list[Output]) -> list[Send]:
    return [o for o in outputs if isinstance(o, Send)]


def events(outputs: list[Output]) -> list[Output]:
    return [o for o in outputs if not isinstance(o, Send)]


def status_sent(send: Send) -> int:
    msg = parse(send.data)
    assert isinstance(msg, SipResponse)
    return msg.status


def run(layer: TransactionLayer, until: float) -> list[tuple[float, Output]]:
    """Tick exactly at each deadline up to ``until``; the timeline of what came out."""
    timeline: list[tuple[float, Output]] = []
    while (deadline := layer.next_deadline()) is not None and deadline <= until:
        timeline += [(deadline, out) for out in layer.tick(deadline)]
    return timeline


def send_times(timeline: list[tuple[float, Output]]) -> list[float]:
    return [t for t, out in timeline if isinstance(out, Send)]


def new_invite(layer: TransactionLayer, now: float = 0.0) -> SipRequest:
    out = layer.receive_datagram(capture("sipp_invite"), SIPP, now)
    (event,) = events(out)
    assert isinstance(event, NewRequest)
    return event.request


# --- INVITE server transaction --------------------------------------------------------------


def test_new_invite_gets_100_trying_at_once_and_one_event() -> None:
    layer = TransactionLayer()
    out = layer.receive_datagram(capture("sipp_invite"), SIPP, 0.0)
    assert [type(o) for o in out] == [Send, NewRequest]
    trying = parse(sends(out)[0].data)
    assert isinstance(trying, SipResponse) and trying.status == 100 and trying.to.tag is None
    assert sends(out)[0].destination == SIPP
    again = layer.receive_datagram(capture("sipp_invite"), SIPP, 0.3)
    assert again == [Send(sends(out)[0].data, SIPP)]  # the retransmission: 100 again, no event
    assert len(layer) == 1


def test_without_auto_trying_a_retransmission_before_any_answer_is_absorbed() -> None:
    layer = TransactionLayer(send_trying=False)
    out = layer.receive_datagram(capture("sipp_invite"), SIPP, 0.0)
    assert [type(o) for o in out] == [NewRequest]
    assert layer.receive_datagram(capture("sipp_invite"), SIPP, 0.5) == []


def test_retransmitted_invite_gets_the_last_provisional() -> None:
    layer = TransactionLayer()
    invite = new_invite(layer)
    ringing = sends(layer.send_response(response_to(invite, 180, to_tag="tt", source=SIPP), 0.1))
    assert [status_sent(s) for s in ringing] == [180]
    assert layer.receive_datagram(capture("sipp_invite"), SIPP, 0.6) == ringing


def test_symmetric_response_routing_for_rport() -> None:
    layer = TransactionLayer()
    nat = ("203.0.113.7", 40123)
    out = layer.receive_datagram(capture("baresip_invite"), nat, 0.0)
    trying = sends(out)[0]
    assert trying.destination == nat  # RFC 3581: back to the source port, not 5090
    assert b";rport=40123;received=203.0.113.7" in trying.data


def test_non_2xx_final_retransmits_until_timer_h() -> None:
    layer = TransactionLayer()
    invite = new_invite(layer)
    out = layer.send_response(response_to(invite, 486, to_tag="tt", source=SIPP), 0.0)
    assert [status_sent(s) for s in sends(out)] == [486]
    timeline = run(layer, 100.0)
    assert send_times(timeline) == DOUBLING  # Timer G: T1 doubling, capped at T2
    assert [(t, type(o)) for t, o in timeline if not isinstance(o, Send)] == [(32.0, Timeout)]
    timeout = timeline[-1][1]
    assert isinstance(timeout, Timeout) and not timeout.client and timeout.request == invite
    assert len(layer) == 0 and layer.next_deadline() is None


def test_ack_for_non_2xx_is_absorbed_and_timer_i_ends_the_transaction() -> None:
    layer = TransactionLayer()
    invite = new_invite(layer)
    layer.send_response(response_to(invite, 486, to_tag="tt", source=SIPP), 0.0)
    assert send_times(run(layer, 2.0)) == [0.5, 1.5]
    ack = build_request(  # §17.1.1.3: the ACK for a non-2xx reuses the INVITE's branch
        "ACK", invite.uri, from_=invite.headers["From"], to=f"{invite.headers['To']};tag=tt",
        call_id=invite.call_id, cseq=1, sent_by=SIPP, branch=invite.via.branch,
    )  # fmt: skip
    assert layer.receive(ack, SIPP, 2.0) == []
    assert layer.receive(ack, SIPP, 2.2) == []  # a repeated ACK too
    assert layer.next_deadline() == 2.0 + 5.0  # Timer I = T4
    assert run(layer, 100.0) == [] and len(layer) == 0


def test_2xx_is_retransmitted_until_ack_and_the_ack_reaches_the_core_once() -> None:
    layer = TransactionLayer()
    invite = new_invite(layer)
    ok = response_to(invite, 200, to_tag="tt", headers=[("Contact", "<sip:s@127.0.0.1:5080>")])
    layer.send_response(ok, 0.0)
    assert send_times(run(layer, 2.0)) == [0.5, 1.5]
    ack = capture("sipp_ack")  # a new branch: the ACK for a 2xx is its own transaction
    out = layer.receive_datagram(ack, SIPP, 2.0)
    assert [type(o) for o in out] == [Ack]
    assert layer.receive_datagram(ack, SIPP, 2.5) == []
    later = run(layer, 100.0)
    assert send_times(later) == [] and events([o for _, o in later]) == []
    assert len(layer) == 0


def test_no_ack_for_2xx_gives_up_after_64_t1() -> None:
    layer = TransactionLayer()
    invite = new_invite(layer)
    ok = response_to(invite, 200, to_tag="tt")
    layer.send_response(ok, 0.0)
    timeline = run(layer, 100.0)
    assert send_times(timeline) == DOUBLING
    assert [(t, o) for t, o in timeline if not isinstance(o, Send)] == [(32.0, AckTimeout(ok))]


def test_invite_retransmission_after_2xx_gets_the_2xx_not_a_new_call() -> None:
    layer = TransactionLayer()
    invite = new_invite(layer)
    ok_out = layer.send_response(response_to(invite, 200, to_tag="tt"), 0.0)
    out = layer.receive_datagram(capture("sipp_invite"), SIPP, 0.2)  # Accepted (RFC 6026)
    assert out == sends(ok_out)


def test_timers_scale_with_t1_and_t2() -> None:
    layer = TransactionLayer(Timers(t1=0.1, t2=0.4, t4=1.0))
    invite = new_invite(layer)
    layer.send_response(response_to(invite, 603, to_tag="tt"), 0.0)
    timeline = run(layer, 10.0)
    assert send_times(timeline) == pytest.approx(
        [0.1, 0.3, 0.7, 1.1, 1.5, 1.9, 2.3, 2.7, 3.1, 3.5, 3.9, 4.3, 4.7, 5.1, 5.5, 5.9, 6.3]
    )
    assert [t for t, o in timeline if isinstance(o, Timeout)] == [pytest.approx(6.4)]


def test_a_late_tick_catches_up_then_keeps_the_schedule() -> None:
    layer = TransactionLayer()
    invite = new_invite(layer)
    layer.send_response(response_to(invite, 486, to_tag="tt"), 0.0)
    assert len(sends(layer.tick(10.0))) == 4  # 0.5, 1.5, 3.5 and 7.5 were due
    assert layer.next_deadline() == 11.5


def test_unanswered_invite_is_dropped_after_timer_c() -> None:
    layer = TransactionLayer()
    invite = new_invite(layer)
    timeline = run(layer, 1000.0)
    assert [(t, o) for t, o in timeline] == [(180.0, Timeout(invite, client=False))]
    assert len(layer) == 0


def test_a_second_final_response_is_a_usage_error() -> None:
    layer = TransactionLayer()
    invite = new_invite(layer)
    layer.send_response(response_to(invite, 486, to_tag="tt"), 0.0)
    with pytest.raises(UserError):
        layer.send_response(response_to(invite, 200, to_tag="tt"), 0.1)


def test_response_without_a_transaction_is_sent_statelessly_by_via() -> None:
    layer = TransactionLayer()
    invite = request("baresip_invite")
    out = layer.send_response(response_to(invite, 481, source=("198.51.100.2", 7000)), 0.0)
    assert [s.destination for s in sends(out)] == [("198.51.100.2", 7000)]
    assert len(layer) == 0


# --- CANCEL ---------------------------------------------------------------------------------


def cancel_for(invite: SipRequest) -> bytes:
    cancel = build_request(  # §9.1: same Request-URI, Call-ID, From, To, CSeq number, top Via
        "CANCEL", invite.uri, from_=invite.headers["From"], to=invite.headers["To"],
        call_id=invite.call_id, cseq=invite.cseq.number, sent_by=SIPP, branch=invite.via.branch,
    )  # fmt: skip
    cancel.headers.set("Via", invite.headers["Via"])
    return bytes(cancel)


def test_cancel_of_a_pending_invite_gives_200_and_487_with_one_tag() -> None:
    layer = TransactionLayer()
    invite = new_invite(layer)
    layer.send_response(response_to(invite, 180, to_tag="ring1", source=SIPP), 0.1)
    out = layer.receive_datagram(cancel_for(invite), SIPP, 1.0)
    (event,) = out
    assert isinstance(event, Cancel) and event.invite == invite and event.cancel.method == "CANCEL"
    answers = layer.answer_cancel(event, 1.0)
    replies = [parse(s.data) for s in sends(answers)]
    assert [(r.cseq.method, r.status) for r in replies if isinstance(r, SipResponse)] == [
        ("CANCEL", 200),
        ("INVITE", 487),
    ]
    assert {r.to.tag for r in replies} == {"ring1"}
    assert layer.receive_datagram(cancel_for(invite), SIPP, 1.2) == sends(answers)[:1]
    # The 487 is retransmitted until the ACK, as any non-2xx final.
    assert send_times(run(layer, 1.6)) == [1.5]


def test_cancel_after_200_has_no_effect_on_the_invite() -> None:
    layer = TransactionLayer()
    invite = new_invite(layer)
    ok = response_to(invite, 200, to_tag="tt")
    layer.send_response(ok, 0.0)
    out = layer.receive_datagram(cancel_for(invite), SIPP, 0.2)
    (sent,) = out
    assert isinstance(sent, Send)  # no Cancel event for the core
    reply = parse(sent.data)
    assert isinstance(reply, SipResponse) and (reply.status, reply.cseq.method) == (200, "CANCEL")
    assert reply.to.tag == "tt"
    timeline = run(layer, 100.0)
    assert [o for _, o in timeline if not isinstance(o, Send)] == [AckTimeout(ok)]  # 2xx goes on


def test_cancel_for_no_invite_gets_481() -> None:
    layer = TransactionLayer()
    out = layer.receive_datagram(cancel_for(request("sipp_invite")), SIPP, 0.0)
    assert [status_sent(s) for s in sends(out)] == [481] and events(out) == []


# --- non-INVITE server transaction ----------------------------------------------------------


def test_bye_server_transaction_resends_its_final_and_ends_on_timer_j() -> None:
    layer = TransactionLayer()
    out = layer.receive_datagram(capture("sipp_bye"), SIPP, 0.0)
    (event,) = out
    assert isinstance(event, NewRequest) and event.request.method == "BYE"
    assert layer.receive_datagram(capture("sipp_bye"), SIPP, 0.3) == []  # Trying: absorbed
    ok = layer.send_response(response_to(event.request, 200), 0.4)
    assert layer.receive_datagram(capture("sipp_bye"), SIPP, 1.0) == ok
    assert layer.next_deadline() == pytest.approx(0.4 + 32.0)  # Timer J, no retransmissions
    assert run(layer, 100.0) == [] and len(layer) == 0


def test_unanswered_non_invite_is_dropped_after_64_t1() -> None:
    layer = TransactionLayer()
    (event,) = layer.receive_datagram(capture("sipp_bye"), SIPP, 0.0)
    assert isinstance(event, NewRequest)
    assert run(layer, 100.0) == [(32.0, Timeout(event.request, client=False))]


# --- non-INVITE client transaction ----------------------------------------------------------


def our_bye() -> SipRequest:
    return build_request(
        "BYE", "sip:sipp@127.0.0.1:5062", from_=NameAddr("sip:s@127.0.0.1", None, {"tag": "tt"}),
        to="sipp <sip:sipp@127.0.0.1:5062>;tag=31509SIPpTag091", call_id="1-31509@127.0.0.1",
        cseq=1, sent_by=("127.0.0.1", 5080),
    )  # fmt: skip


def test_client_request_retransmits_until_timer_f() -> None:
    layer = TransactionLayer()
    bye = our_bye()
    out = layer.send_request(bye, SIPP, 0.0)
    assert out == [Send(bytes(bye), SIPP)]
    timeline = run(layer, 100.0)
    assert send_times(timeline) == DOUBLING  # Timer E
    assert [(t, o) for t, o in timeline if not isinstance(o, Send)] == [
        (32.0, Timeout(bye, client=True))  # Timer F
    ]
    assert len(layer) == 0


def test_client_provisional_switches_timer_e_to_t2() -> None:
    layer = TransactionLayer()
    bye = our_bye()
    layer.send_request(bye, SIPP, 0.0)
    run(layer, 0.7)
    out = layer.receive(response_to(bye, 100), SIPP, 0.7)
    assert [type(o) for o in out] == [ResponseReceived]
    assert send_times(run(layer, 100.0)) == [1.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5]


def test_client_final_response_stops_retransmission_and_timer_k_absorbs_repeats() -> None:
    layer = TransactionLayer()
    bye = our_bye()
    layer.send_request(bye, SIPP, 0.0)
    run(layer, 1.0)
    ok = response_to(bye, 200)
    assert layer.receive(ok, SIPP, 1.0) == [ResponseReceived(ok, bye)]
    assert layer.receive(ok, SIPP, 2.0) == []
    assert layer.next_deadline() == 1.0 + 5.0  # Timer K = T4
    assert run(layer, 100.0) == [] and len(layer) == 0
    assert [type(o) for o in layer.receive(ok, SIPP, 7.0)] == [Dropped]


def test_responses_match_by_branch_and_method() -> None:
    layer = TransactionLayer()
    bye = our_bye()
    layer.send_request(bye, SIPP, 0.0)
    wrong_method = response_to(bye, 200)
    wrong_method.headers.set("CSeq", "1 INFO")
    (dropped,) = layer.receive(wrong_method, SIPP, 0.1)
    assert isinstance(dropped, Dropped) and dropped.reason == "stray_response"
    notify = build_request("NOTIFY", "sip:x@y", from_="<sip:a@b>;tag=1", to="<sip:c@d>;tag=2",
                           call_id="n", cseq=5, sent_by=("127.0.0.1", 5080))  # fmt: skip
    layer.send_request(notify, SIPP, 0.0)
    notify_ok = response_to(notify, 200)
    assert layer.receive(notify_ok, SIPP, 0.2) == [ResponseReceived(notify_ok, notify)]
    assert len(layer) == 2


def test_send_request_rules() -> None:
    layer = TransactionLayer()
    ack = build_request("ACK", "sip:x@y", from_="<sip:a@b>;tag=1", to="<sip:c@d>;tag=2",
                        call_id="a", cseq=1, sent_by=("127.0.0.1", 5080))  # fmt: skip
    assert layer.send_request(ack, SIPP, 0.0) == [Send(bytes(ack), SIPP)] and len(layer) == 0
    with pytest.raises(UserError):
        layer.send_request(request("sipp_invite"), SIPP, 0.0)
    bye = our_bye()
    layer.send_request(bye, SIPP, 0.0)
    with pytest.raises(UserError):
        layer.send_request(bye, SIPP, 0.1)


# --- datagrams, RFC 2543 peers, overload, memory --------------------------------------------


def test_receive_datagram_drops_and_answers_bad_input() -> None:
    layer = TransactionLayer()
    assert layer.receive_datagram(b"\r\n\r\n", SIPP, 0.0) == []
    (dropped,) = layer.receive_datagram(b"\x16\x03\x01 hello", SIPP, 0.0)
    assert isinstance(dropped, Dropped) and (dropped.reason, dropped.status) == ("not_sip", 0)
    broken = capture("sipp_invite").replace(b"Call-ID: 1-31509@127.0.0.1\r\n", b"")
    out = layer.receive_datagram(broken, SIPP, 0.0)
    assert [type(o) for o in out] == [Send, Dropped]
    assert (
        sends(out)[0].data.startswith(b"SIP/2.0 400 Bad Request")
        and sends(out)[0].destination == SIPP
    )
    (big,) = events(layer.receive_datagram(b"x" * 20000, SIPP, 0.0))
    assert isinstance(big, Dropped) and big.reason == "too_large" and len(layer) == 0


def test_rfc_2543_peer_without_branch_is_matched_by_call_id_and_cseq() -> None:
    layer = TransactionLayer()
    old = (Path(__file__).parents[1] / "fixtures/sip/rfc4475/valid/inv2543.sip").read_bytes()
    source = ("192.0.2.15", 5060)
    (event,) = events(layer.receive_datagram(old, source, 0.0))
    assert isinstance(event, NewRequest)
    assert len(sends(layer.receive_datagram(old, source, 0.5))) == 1  # the 100 again
    invite = event.request
    layer.send_response(response_to(invite, 404, to_tag="tt"), 1.0)
    to = f"{invite.headers['To']};tag=tt"
    ack = build_request("ACK", invite.uri, from_=invite.headers["From"], to=to,
                        call_id=invite.call_id, cseq=56, sent_by=source)  # fmt: skip
    ack.headers.set("Via", invite.headers["Via"])  # no branch, like the INVITE
    assert layer.receive(ack, source, 1.2) == []
    assert send_times(run(layer, 100.0)) == [] and len(layer) == 0


def test_overload_answers_503_without_state() -> None:
    layer = TransactionLayer(max_transactions=1)
    new_invite(layer)
    out = layer.receive_datagram(capture("baresip_invite"), ("127.0.0.1", 5090), 0.0)
    assert [type(o) for o in out] == [Send, Dropped]
    busy = parse(sends(out)[0].data)
    assert (
        isinstance(busy, SipResponse) and busy.status == 503 and busy.headers["Retry-After"] == "5"
    )
    assert len(layer) == 1


def test_old_transactions_are_removed() -> None:
    layer = TransactionLayer()
    base = request("sipp_invite")
    for i in range(300):
        data = bytes(base).replace(b"z9hG4bK-31509-1-0", f"z9hG4bK-n{i}".encode())
        invite = parse(data.replace(b"1-31509@", f"{i}-31509@".encode()))
        assert isinstance(invite, SipRequest)
        layer.receive(invite, SIPP, i * 0.01)
        status = (200, 486, 603)[i % 3]
        layer.send_response(response_to(invite, status, to_tag=f"t{i}"), i * 0.01)
        bye = our_bye()
        layer.send_request(bye, SIPP, i * 0.01)
        if i % 2:
            layer.receive(response_to(bye, 200), SIPP, i * 0.01 + 0.2)
    assert len(layer) == 300 + 100 + 300
    run(layer, 500.0)
    assert len(layer) == 0 and layer.next_deadline() is None


def test_two_hundred_retransmit_alone() -> None:
    ok = response_to(request("sipp_invite"), 200, to_tag="tt")
    retransmit = TwoHundredRetransmit(ok, SIPP, 10.0, Timers())
    assert retransmit.deadline == 10.5
    assert retransmit.tick(12.0) == [Send(bytes(ok), SIPP)] * 2  # 10.5 and 11.5
    retransmit.acknowledge()
    assert retransmit.deadline is None and retransmit.tick(100.0) == []


GOLDEN = [p.read_bytes() for p in sorted((CAPTURES.parent).rglob("*.sip"))]


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(GOLDEN) | st.binary(max_size=300),
            st.integers(0, 40),  # which byte to cut at (0: keep whole)
            st.floats(0, 5),  # time step
            st.sampled_from([None, 200, 486, 100]),  # how the core answers a NewRequest
        ),
        max_size=12,
    )
)
def test_layer_never_raises_on_any_input(steps: list[tuple[bytes, int, float, int | None]]) -> None:
    layer = TransactionLayer()
    now = 0.0
    for data, cut, step, answer in steps:
        now += step
        for out in layer.receive_datagram(data[:-cut] if cut else data, SIPP, now) + layer.tick(
            now
        ):
            if (
                isinstance(out, NewRequest)
                and answer is not None
                and out.request.method != "CANCEL"
            ):
                layer.send_response(response_to(out.request, answer, to_tag="t", source=SIPP), now)
            elif isinstance(out, Cancel):
                layer.answer_cancel(out, now)
    run(layer, now + 1000.0)
    assert len(layer) == 0
