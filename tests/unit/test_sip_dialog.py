"""UAS dialogs (RFC 3261 §12): creation from an INVITE and our response, in-dialog requests we
build (BYE, REFER, NOTIFY), CSeq checks on requests we receive, routing; against sipp and
baresip captures where we have them."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.errors import SipError, UserError
from services.telephony.sip.dialog import Dialog, DialogId, SipUri, sipfrag_status
from services.telephony.sip.headers import NameAddr
from services.telephony.sip.message import SipRequest, SipResponse, parse, response_to

FIXTURES = Path(__file__).parents[1] / "fixtures" / "sip"
US = ("127.0.0.1", 5080)
CONTACT = ("Contact", "<sip:service@127.0.0.1:5080>")


def request(name: str) -> SipRequest:
    msg = parse((FIXTURES / "captures" / f"{name}.sip").read_bytes())
    assert isinstance(msg, SipRequest)
    return msg


def dialog_for(invite: SipRequest, tag: str = "uas1", status: int = 200) -> Dialog:
    response = response_to(invite, status, to_tag=tag, headers=[CONTACT])
    return Dialog.from_invite(invite, response, sent_by=US, source=("127.0.0.1", 5062))


def with_record_route(*routes: str) -> SipRequest:
    invite = request("sipp_invite")
    for route in routes:
        invite.headers.add("Record-Route", route)
    return invite


def test_dialog_from_sipp_invite() -> None:
    invite = request("sipp_invite")
    dialog = dialog_for(invite)
    assert dialog.id == DialogId("1-31509@127.0.0.1", "uas1", "31509SIPpTag091")
    assert dialog.remote_target == "sip:sipp@127.0.0.1:5062" and dialog.route_set == ()
    assert dialog.local == NameAddr("sip:service@127.0.0.1:5080", "service")
    assert dialog.remote == NameAddr("sip:sipp@127.0.0.1:5062", "sipp")
    assert (dialog.remote_cseq, dialog.state, dialog.local_contact) == (
        1,
        "confirmed",
        "sip:service@127.0.0.1:5080",
    )
    assert dialog.next_hop() == ("127.0.0.1", 5062)


def test_incoming_requests_find_their_dialog() -> None:
    dialog = dialog_for(request("sipp_invite"))
    bye = request("sipp_bye")
    assert DialogId.incoming(bye) == dialog.id
    assert DialogId.incoming(request("sipp_invite")) is None  # no To tag: not in a dialog
    dialog.receive(bye)
    assert dialog.remote_cseq == 2


def test_lower_cseq_is_refused_with_500() -> None:
    dialog = dialog_for(request("sipp_invite"))
    dialog.receive(request("sipp_bye"))  # CSeq 2
    dialog.receive(request("sipp_bye"))  # equal is not lower (§12.2.2)
    ack = request("sipp_ack")  # CSeq 1 ACK: the INVITE's number, never counted
    dialog.receive(ack)
    late = request("sipp_bye")
    late.headers.set("CSeq", "1 BYE")
    with pytest.raises(SipError) as info:
        dialog.receive(late)
    assert info.value.status == 500 and dialog.remote_cseq == 2


def test_request_from_another_dialog_is_481() -> None:
    dialog = dialog_for(request("sipp_invite"), tag="other")
    with pytest.raises(SipError) as info:
        dialog.receive(request("sipp_bye"))
    assert info.value.status == 481


def test_in_dialog_requests_carry_tags_cseq_contact_and_fresh_branches() -> None:
    dialog = dialog_for(request("sipp_invite"), tag="uas1")
    first, second = dialog.request("INFO"), dialog.request("OPTIONS")
    assert (first.method, first.uri) == ("INFO", "sip:sipp@127.0.0.1:5062")
    assert first.from_ == NameAddr("sip:service@127.0.0.1:5080", "service", {"tag": "uas1"})
    assert first.to == NameAddr("sip:sipp@127.0.0.1:5062", "sipp", {"tag": "31509SIPpTag091"})
    assert [first.cseq.number, second.cseq.number] == [1, 2] and second.cseq.method == "OPTIONS"
    assert first.call_id == "1-31509@127.0.0.1"
    assert [c.uri for c in first.contacts] == ["sip:service@127.0.0.1:5080"]
    assert first.via.sent_by == US and first.via.branch != second.via.branch
    assert "Route" not in first.headers
    again = parse(bytes(first))
    assert isinstance(again, SipRequest) and again.headers.get_all("Via") == first.headers.get_all(
        "Via"
    )


def test_first_cseq_can_be_chosen() -> None:
    invite = request("sipp_invite")
    response = response_to(invite, 200, to_tag="t", headers=[CONTACT])
    dialog = Dialog.from_invite(invite, response, sent_by=US, first_cseq=4711)
    assert dialog.request("INFO").cseq.number == 4711


def test_loose_route_set_is_sent_in_order() -> None:
    invite = with_record_route("<sip:p1.example.com;lr>, <sip:p2.example.com:5070;lr>")
    dialog = dialog_for(invite)
    assert dialog.route_set == ("<sip:p1.example.com;lr>", "<sip:p2.example.com:5070;lr>")
    bye = dialog.bye()
    assert bye.uri == "sip:sipp@127.0.0.1:5062"  # loose routing: the remote target
    assert bye.headers.get_all("Route") == list(dialog.route_set)
    assert dialog.next_hop() == ("p1.example.com", 5060)


def test_strict_router_becomes_the_request_uri() -> None:
    dialog = dialog_for(with_record_route("<sip:strict.example.com>", "<sip:p2.example.com;lr>"))
    req = dialog.request("INFO")
    assert req.uri == "sip:strict.example.com"  # §12.2.1.1
    assert req.headers.get_all("Route") == ["<sip:p2.example.com;lr>", "<sip:sipp@127.0.0.1:5062>"]


def test_bye_ends_the_dialog_for_new_requests() -> None:
    dialog = dialog_for(request("sipp_invite"))
    bye = dialog.bye(headers=[("Reason", 'SIP;cause=408;text="ack_timeout"')])
    assert bye.method == "BYE" and bye.headers["Reason"].endswith('"ack_timeout"')
    assert dialog.state == "terminated"
    with pytest.raises(UserError):
        dialog.request("INFO")


def test_refer_builds_refer_to_and_refuses_other_schemes() -> None:
    dialog = dialog_for(request("baresip_refer_call_invite"))
    refer = dialog.refer("tel:+14155550123", referred_by="sip:service@127.0.0.1:5080")
    assert refer.method == "REFER" and refer.uri == "sip:tester-0x55b87d2254a0@127.0.0.1:5090"
    assert refer.headers["Refer-To"] == "<tel:+14155550123>"
    assert refer.headers["Referred-By"] == "<sip:service@127.0.0.1:5080>"
    assert dialog.refer("sip:agent@example.com").headers["r"] == "<sip:agent@example.com>"
    for bad in ("http://example.com", "sip:a b@x", "agent@example.com"):
        with pytest.raises(UserError):
            dialog.refer(bad)


def test_notify_refer_carries_sipfrag_and_subscription_state() -> None:
    dialog = dialog_for(request("sipp_invite"))
    trying = dialog.notify_refer(100, "Trying", refer_cseq=3)
    assert trying.headers["Event"] == "refer;id=3"
    assert trying.headers["Subscription-State"] == "active;expires=60"
    assert trying.headers["Content-Type"] == "message/sipfrag;version=2.0"
    assert trying.body == b"SIP/2.0 100 Trying\r\n" and sipfrag_status(trying.body) == 100
    done = dialog.notify_refer(200, "OK")
    assert done.headers["Event"] == "refer"
    assert done.headers["Subscription-State"] == "terminated;reason=noresource"
    assert sipfrag_status(parse(bytes(done)).body) == 200
    assert done.cseq.number == trying.cseq.number + 1


def test_baresip_follows_our_refer_golden() -> None:
    """The NOTIFYs baresip 1.0.0 sent after our REFER (captured): they match our dialog, their
    CSeq continues baresip's INVITE, and the sipfrag says 100 then 200."""
    dialog = dialog_for(request("baresip_refer_call_invite"), tag="uas1")
    accepted = parse((FIXTURES / "captures" / "baresip_refer_202.sip").read_bytes())
    assert isinstance(accepted, SipResponse) and accepted.to.tag == dialog.remote_tag
    statuses = []
    for name in ("baresip_notify_trying", "baresip_notify_ok"):
        notify = request(name)
        assert DialogId.incoming(notify) == dialog.id
        dialog.receive(notify)
        statuses.append(sipfrag_status(notify.body))
    assert statuses == [100, 200] and dialog.remote_cseq == 23480


def test_early_dialog_then_confirmed() -> None:
    dialog = dialog_for(request("sipp_invite"), status=180)
    assert dialog.state == "early"
    dialog.confirm()
    assert dialog.state == "confirmed"  # type: ignore[comparison-overlap]  # mypy narrowed it


def test_target_refresh() -> None:
    dialog = dialog_for(request("sipp_invite"))
    reinvite = request("sipp_invite")
    reinvite.headers.set("Contact", "<sip:sipp@198.51.100.4:5062>")
    dialog.refresh_target(reinvite)
    assert dialog.remote_target == "sip:sipp@198.51.100.4:5062"
    assert dialog.next_hop() == ("198.51.100.4", 5062)


def test_creation_preconditions() -> None:
    invite = request("sipp_invite")
    with pytest.raises(UserError):  # no tag
        Dialog.from_invite(invite, response_to(invite, 100, headers=[CONTACT]), sent_by=US)
    with pytest.raises(UserError):  # no Contact in our response
        Dialog.from_invite(invite, response_to(invite, 200, to_tag="t"), sent_by=US)
    with pytest.raises(UserError):  # a failure creates no dialog
        Dialog.from_invite(
            invite, response_to(invite, 486, to_tag="t", headers=[CONTACT]), sent_by=US
        )
    invite.headers.remove("Contact")
    with pytest.raises(SipError) as info:
        dialog_for(invite)
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("text", "user", "host", "port", "address"),
    [
        ("sip:sipp@127.0.0.1:5062", "sipp", "127.0.0.1", 5062, ("127.0.0.1", 5062)),
        ("sip:user;par=u%40example.net@example.com", "user;par=u%40example.net", "example.com",
         None, ("example.com", 5060)),
        ("sips:[2001:db8::1];transport=tls", None, "[2001:db8::1]", None, ("2001:db8::1", 5061)),
        ("SIP:a:secret@pbx.example.com;maddr=192.0.2.7?subject=x", "a", "pbx.example.com", None,
         ("192.0.2.7", 5060)),
    ],
)  # fmt: skip
def test_sip_uri(
    text: str, user: str | None, host: str, port: int | None, address: tuple[str, int]
) -> None:
    uri = SipUri.parse(text)
    assert (uri.user, uri.host, uri.port, uri.address()) == (user, host, port, address)
    assert SipUri.parse(str(uri)) == uri


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("nobodyKnowsThisScheme:totallyopaquecontent", 416),  # RFC 4475 §3.3.2
        ("tel:+14155550123", 416),
        ("sip:", 400),
        ("sip:a@host:99999", 400),
        ("sip:a@ho st", 400),
    ],
)
def test_sip_uri_rejects(text: str, status: int) -> None:
    with pytest.raises(SipError) as info:
        SipUri.parse(text)
    assert info.value.status == status


def test_sipfrag_status_tolerates_lf_and_rejects_garbage() -> None:
    assert sipfrag_status(b"SIP/2.0 603 Declined\n") == 603
    assert sipfrag_status(b"INVITE sip:x SIP/2.0\r\n") is None
    assert sipfrag_status(b"") is None
