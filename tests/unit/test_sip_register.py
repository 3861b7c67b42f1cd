"""Registering with a PBX as an extension, on a virtual clock: the digest challenge answered once,
the granted expiry and its refresh, 423 Min-Expires, wrong credentials and a silent registrar
retried with back-off; and through the UAS, REGISTER on its own schedule."""

from __future__ import annotations

from services.telephony.sip.digest import DigestAuthority
from services.telephony.sip.message import SipRequest, SipResponse, parse, response_to
from services.telephony.sip.register import Registration
from services.telephony.sip.transaction import Send
from services.telephony.sip.uas import UasSettings, UserAgentServer

PBX = ("127.0.0.1", 5070)
US = ("127.0.0.1", 5060)
AUTHORITY = DigestAuthority("pbx", "sixteen-bytes-of-secret", {"agent": "s3cret"})


def registration(password: str = "s3cret") -> Registration:
    return Registration(
        registrar=PBX,
        aor="sip:agent@127.0.0.1",
        contact="sip:callray@127.0.0.1:5060",
        sent_by=US,
        username="agent",
        password=password,
        expires=600,
    )


def registrar(request: SipRequest, now: float, *, grant: int = 120) -> SipResponse:
    """A registrar that wants digest (401) and grants ``grant`` seconds."""
    credentials = request.headers.get("Authorization")
    if credentials is None or not AUTHORITY.verify("REGISTER", credentials, now).ok:
        challenge = [("WWW-Authenticate", v) for v in AUTHORITY.challenge(now)]
        return response_to(request, 401, headers=challenge)
    contact = f"<sip:callray@127.0.0.1:5060>;expires={grant}"
    return response_to(request, 200, headers=[("Contact", contact)])


def test_a_challenge_is_answered_then_the_binding_is_refreshed_before_it_ends() -> None:
    reg = registration()
    first = reg.due(0.0)
    assert first is not None and first.method == "REGISTER"
    assert first.headers["Contact"] == "<sip:callray@127.0.0.1:5060>;expires=600"
    again = reg.on_response(registrar(first, 0.0), 0.0)
    assert again is not None and "Authorization" in again.headers
    assert again.cseq.number == first.cseq.number + 1 and again.call_id == first.call_id
    assert reg.on_response(registrar(again, 0.1), 0.1) is None
    assert reg.state == "registered" and reg.granted == 120
    assert reg.next_due == 0.1 + 90  # 80% of 120 is 96; 30 s before the end is sooner
    assert reg.due(50.0) is None
    refresh = reg.due(90.1)
    assert refresh is not None and refresh.cseq.number == again.cseq.number + 1


def test_wrong_credentials_fail_and_are_retried_with_back_off() -> None:
    reg = registration(password="wrong")
    first = reg.due(0.0)
    assert first is not None
    answered = reg.on_response(registrar(first, 0.0), 0.0)
    assert answered is not None
    # Challenged again though it carried credentials: they are wrong; no loop of REGISTERs.
    assert reg.on_response(registrar(answered, 0.1), 0.1) is None
    assert reg.state == "failed" and "credentials" in reg.reason
    assert reg.next_due == 0.1 + 30
    retry = reg.due(30.1)
    assert retry is not None
    reg.on_timeout(62.0)  # the registrar went silent
    assert reg.state == "failed" and reg.next_due == 62.0 + 60


def test_423_retries_at_the_registrars_minimum() -> None:
    reg = registration()
    first = reg.due(0.0)
    assert first is not None
    brief = response_to(first, 423, headers=[("Min-Expires", "1800")])
    again = reg.on_response(brief, 0.0)
    assert again is not None and again.headers["Expires"] == "1800"


def test_the_uas_registers_on_its_schedule_through_its_transactions() -> None:
    reg = registration()
    core = UserAgentServer(UasSettings(local=US), registration=reg)
    assert core.next_deadline() == 0.0
    sent = [o for o in core.tick(0.0) if isinstance(o, Send)]
    assert [s.destination for s in sent] == [PBX]
    request = parse(sent[0].data)
    assert isinstance(request, SipRequest)
    out = core.receive(bytes(registrar(request, 0.0)), PBX, 0.0)
    [answered] = [parse(o.data) for o in out if isinstance(o, Send)]
    assert isinstance(answered, SipRequest) and "Authorization" in answered.headers
    core.receive(bytes(registrar(answered, 0.1)), PBX, 0.1)
    assert reg.state == "registered"
    assert core.messages[("out", "REGISTER", 0)] == 2


def test_a_stale_nonce_is_answered_once_more() -> None:
    short = DigestAuthority("pbx", "sixteen-bytes-of-secret", {"agent": "s3cret"}, nonce_ttl_s=5)
    reg = registration()
    first = reg.due(0.0)
    assert first is not None
    challenged = response_to(
        first, 401, headers=[("WWW-Authenticate", v) for v in short.challenge(0.0)]
    )
    answered = reg.on_response(challenged, 0.0)
    assert answered is not None
    verdict = short.verify("REGISTER", answered.headers["Authorization"], 10.0)
    assert verdict.kind == "stale"  # the answer arrived after the nonce aged
    stale = response_to(
        answered, 401, headers=[("WWW-Authenticate", v) for v in short.challenge(10.0, stale=True)]
    )
    again = reg.on_response(stale, 10.0)
    assert again is not None and short.verify("REGISTER", again.headers["Authorization"], 10.0).ok
