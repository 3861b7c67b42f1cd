"""SIP message parsing and building: golden captures (sipp, baresip), RFC 4475 torture messages
(typed by hand from the RFC's text, tests/fixtures/sip/rfc4475/), synthetic vectors, and a fuzz
test: whatever arrives, parse raises nothing but SipError."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.errors import SipError, UserError
from services.telephony.sip.headers import Headers, NameAddr, Via
from services.telephony.sip.message import (
    MAX_MESSAGE_BYTES,
    SipMessage,
    SipRequest,
    SipResponse,
    build_request,
    is_keepalive,
    parse,
    reply_to_malformed,
    response_destination,
    response_to,
    stamp_via,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "sip"
CAPTURES = sorted((FIXTURES / "captures").glob("*.sip"))
VALID = sorted((FIXTURES / "rfc4475" / "valid").glob("*.sip"))
INVALID = sorted((FIXTURES / "rfc4475" / "invalid").glob("*.sip"))
FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

BASE = (
    "OPTIONS sip:service@192.0.2.10 SIP/2.0",
    "Via: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bK-1",
    "From: <sip:a@192.0.2.1>;tag=f1",
    "To: <sip:service@192.0.2.10>",
    "Call-ID: c1@192.0.2.1",
    "CSeq: 1 OPTIONS",
    "Max-Forwards: 70",
)


def wire(lines: tuple[str, ...] | list[str], body: bytes = b"") -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def load(path: Path) -> SipMessage:
    return parse(path.read_bytes())


def fixture(name: str) -> SipMessage:
    return load(next(p for p in [*CAPTURES, *VALID] if p.stem == name))


def status_of(data: bytes) -> int:
    with pytest.raises(SipError) as info:
        parse(data)
    return info.value.status


def without_length(msg: SipMessage) -> list[tuple[str, str]]:
    return [(n, v) for n, v in msg.headers if n != "Content-Length"]


# --- golden round trips -------------------------------------------------------------------


@pytest.mark.parametrize("path", CAPTURES + VALID, ids=lambda p: p.stem)
def test_golden_round_trip(path: Path) -> None:
    msg = load(path)
    again = parse(bytes(msg))
    assert type(again) is type(msg) and again.body == msg.body
    assert without_length(again) == without_length(msg)
    assert again.headers.get("Content-Length") == str(len(msg.body))
    assert parse(bytes(again)) == again and bytes(parse(bytes(again))) == bytes(again)


@pytest.mark.parametrize(
    "name", ["baresip_invite", "baresip_ack", "baresip_bye", "baresip_notify_ok", "sipp_bye"]
)
def test_captures_serialize_byte_for_byte(name: str) -> None:
    data = (FIXTURES / "captures" / f"{name}.sip").read_bytes()
    assert bytes(parse(data)) == data


def test_sipp_invite_fields() -> None:
    msg = fixture("sipp_invite")
    assert isinstance(msg, SipRequest)
    assert (msg.method, msg.uri) == ("INVITE", "sip:service@127.0.0.1:5080")
    assert (msg.via.host, msg.via.port, msg.via.branch) == ("127.0.0.1", 5062, "z9hG4bK-31509-1-0")
    assert not msg.via.wants_rport
    assert (msg.from_.display, msg.from_.tag) == ("sipp", "31509SIPpTag091")
    assert msg.to.tag is None and msg.to.uri == "sip:service@127.0.0.1:5080"
    assert (msg.cseq.number, msg.cseq.method, msg.call_id) == (1, "INVITE", "1-31509@127.0.0.1")
    assert msg.contacts == [NameAddr("sip:sipp@127.0.0.1:5062")]
    assert len(msg.body) == 188 and msg.body.startswith(b"v=0\r\n")


def test_baresip_invite_fields() -> None:
    msg = fixture("baresip_invite")
    assert msg.via.wants_rport and msg.via.rport is None
    assert msg.headers.get_all("Allow")[:3] == ["INVITE", "ACK", "BYE"]
    assert len(msg.headers.get_all("Allow")) == 10
    assert "Supported" in msg.headers and msg.headers.get_all("Supported") == []
    assert msg.contacts[0].uri.startswith("sip:tester-0x")


def test_baresip_notify_carries_sipfrag() -> None:
    msg = fixture("baresip_notify_trying")
    assert msg.headers["Event"] == "refer;id=1" and msg.headers["Content-Type"] == "message/sipfrag"
    assert msg.body == b"SIP/2.0 100 Trying\n"


# --- RFC 4475 -----------------------------------------------------------------------------


def test_wsinv_weird_whitespace_and_folding() -> None:
    msg = fixture("wsinv")
    assert msg.to.uri == "sip:vivekg@chair-dnrc.example.com" and msg.to.tag == "1918181833n"
    assert msg.from_.display == 'J Rosenberg \\"' and msg.from_.tag == "98asjd8"
    assert (msg.cseq.number, msg.cseq.method) == (9, "INVITE")
    assert msg.headers["max-forwards"] == "0068"
    vias = [Via.parse(v) for v in msg.headers.get_all("v")]
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert msg.headers["Subject"] == ""
    assert msg.headers["newfangledheader"] == "newfangled value continued newfangled value"
    assert msg.headers["UnknownHeaderWithUnusualValue"] == ";;,,;;,;"
    (contact,) = msg.contacts
    assert contact.display == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert NameAddr.parse(msg.headers["Route"]).uri.endswith(";unknown-no-value")
    assert len(msg.body) == int(msg.headers["Content-Length"])


def test_intmeth_unusual_characters() -> None:
    msg = fixture("intmeth")
    assert isinstance(msg, SipRequest)
    assert msg.method == msg.cseq.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert msg.to.display == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert msg.from_.display == "token1~` token2'+_ token3*%!.-"
    assert msg.from_.tag == "_token~1'+`*%!-."
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.headers["extensionHeader-!.%*+_`'~"] == "\ufeff大停電"


@pytest.mark.parametrize(
    ("name", "check"),
    [
        ("esc01", lambda m: m.headers["Content-Type"] == "application/sdp"),
        ("esc01", lambda m: m.uri == "sip:sips%3Auser%40example.com@example.net"),
        ("escnull", lambda m: [c.uri for c in m.contacts][1] == "sip:%00%00@host5.example.com"),
        ("esc02", lambda m: m.method == m.cseq.method == "RE%47IST%45R"),
        ("lwsdisp", lambda m: (m.from_.display, m.from_.tag) == ("caller", "323")),
        ("longreq", lambda m: len(m.headers.get_all("Via")) == 33),
        ("longreq", lambda m: len(m.headers.get_all("Record-Route")) == 20),
        ("dblreq", lambda m: m.method == "REGISTER" and m.body == b""),
        ("semiuri", lambda m: len(m.headers.get_all("Accept")) == 6),
        ("semiuri", lambda m: m.uri == "sip:user;par=u%40example.net@example.com"),
        (
            "transports",
            lambda m: (
                [Via.parse(v).transport for v in m.headers.get_all("Via")]
                == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
            ),
        ),
        ("mpart01", lambda m: m.body.endswith(b"--7a9cbec02ceef655--\r\n")),
        ("unreason", lambda m: m.status == 200 and m.reason.endswith("простое")),
        ("noreason", lambda m: (m.status, m.reason) == (100, "")),
        ("unksm", lambda m: m.uri == "nobodyKnowsThisScheme:totallyopaquecontent"),
        ("novelsc", lambda m: m.uri == "soap.beep://192.0.2.103:3002"),
        (
            "unksm2",
            lambda m: (m.to.uri, m.from_.uri) == ("isbn:2983792873", "http://www.example.com"),
        ),
        ("unksm2", lambda m: m.contacts[0].uri == "name:John_Smith"),
        ("bext01", lambda m: m.headers.get_all("Require")[1] == "nothingSupportsThisEither"),
        ("bcast", lambda m: Via.parse(m.headers.get_all("Via")[1]).host == "255.255.255.255"),
        ("zeromf", lambda m: m.headers["Max-Forwards"] == "0"),
        ("cparam01", lambda m: m.contacts[0].params == {"unknownparam": None}),
        ("cparam02", lambda m: m.contacts[0].uri.endswith(";unknownparam")),
        ("regescrt", lambda m: m.contacts[0].uri.endswith("?Route=%3Csip:sip.example.com%3E")),
        ("badbranch", lambda m: m.via.branch == "z9hG4bK"),
        (
            "inv2543",
            lambda m: m.to.tag is None and m.via.branch is None and m.body.startswith(b"v=0"),
        ),
    ],
)
def test_rfc4475_valid(name: str, check: object) -> None:
    assert callable(check) and check(fixture(name))


INVALID_STATUS = {
    "badinv01": 400, "clerr": 400, "ncl": 400, "scalar02": 400, "scalarlg": 0, "quotbal": 400,
    "ltgtruri": 400, "lwsruri": 400, "lwsstart": 400, "trws": 400, "regbadct": 400,
    "badaspec": 400, "baddn": 400, "badvers": 505, "mismatch01": 400, "mismatch02": 400,
    "bigcode": 0, "insuf": 400, "multi01": 400, "mcl01": 400,
}  # fmt: skip


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_rfc4475_invalid(path: Path) -> None:
    assert status_of(path.read_bytes()) == INVALID_STATUS[path.stem]


def test_every_invalid_fixture_has_an_expectation() -> None:
    assert {p.stem for p in INVALID} == set(INVALID_STATUS)


# --- synthetic vectors --------------------------------------------------------------------


def test_compact_forms_expand_to_full_names() -> None:
    lines = [
        "INVITE sip:s@192.0.2.10 SIP/2.0", "v: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK-2",
        "f: <sip:a@x>;tag=1", "t: <sip:s@y>", "i: cid", "CSeq: 1 INVITE", "m: <sip:a@192.0.2.1>",
        "e: gzip", "s: hi", "k: timer", "o: refer", "u: refer", "r: <sip:t@z>", "b: <sip:a@x>",
        "x: 1800", "c: application/sdp", "l: 0",
    ]  # fmt: skip
    names = [name for name, _ in parse(wire(lines)).headers]
    assert names == [
        "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Content-Encoding", "Subject",
        "Supported", "Event", "Allow-Events", "Refer-To", "Referred-By", "Session-Expires",
        "Content-Type", "Content-Length",
    ]  # fmt: skip


def test_lookup_is_case_insensitive_and_accepts_compact_names() -> None:
    msg = parse(wire(BASE))
    assert msg.headers["call-id"] == msg.headers["CALL-ID"] == msg.headers["i"] == "c1@192.0.2.1"
    assert "via" in msg.headers and "v" in msg.headers and "Route" not in msg.headers


def test_folding_and_whitespace_variants() -> None:
    lines = [
        "OPTIONS sip:s@192.0.2.10 SIP/2.0",
        "Via:SIP/2.0/UDP\t192.0.2.1 ; branch = z9hG4bK-3 ; rport",
        "From:\t<sip:a@x>\r\n\t;tag=7",
        "To :  <sip:s@y>   ",
        "Call-ID: c3",
        "CSeq:\t 12\t OPTIONS",
        "X-Note: first\r\n  second\r\n\tthird",
    ]
    msg = parse(wire(lines))
    assert msg.via.branch == "z9hG4bK-3" and msg.via.wants_rport and msg.from_.tag == "7"
    assert msg.to.uri == "sip:s@y" and msg.cseq.number == 12
    assert msg.headers["X-Note"] == "first second third"


def test_lf_only_line_ends_and_leading_crlf_are_accepted() -> None:
    data = b"\r\n" + wire(BASE).replace(b"\r\n", b"\n")
    msg = parse(data)
    assert isinstance(msg, SipRequest) and msg.call_id == "c1@192.0.2.1"


def test_list_headers_split_outside_quotes_and_angle_brackets() -> None:
    lines = [
        *BASE,
        'Contact: "Doe, John" <sip:j@192.0.2.1;a=b,c>;q=0.5, <sip:k@192.0.2.2>',
        "Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK-p,SIP/2.0/UDP 192.0.2.3;branch=z9hG4bKq",
        'Warning: 399 x "a, b", 399 y "c"',
        'X-Custom: "not, split", <really,not>',
    ]
    msg = parse(wire(lines))
    assert [(c.display, c.uri) for c in msg.contacts] == [
        ("Doe, John", "sip:j@192.0.2.1;a=b,c"),
        (None, "sip:k@192.0.2.2"),
    ]
    assert [Via.parse(v).host for v in msg.headers.get_all("Via")] == [
        "192.0.2.1", "proxy.example.com", "192.0.2.3",
    ]  # fmt: skip
    assert msg.via.host == "192.0.2.1"
    assert msg.headers.get_all("Warning") == ['399 x "a, b"', '399 y "c"']
    assert msg.headers.get_all("X-Custom") == ['"not, split", <really,not>']


def test_unknown_method_parses() -> None:
    lines = ["FOO sip:s@192.0.2.10 SIP/2.0", *BASE[1:5], "CSeq: 3 FOO"]
    msg = parse(wire(lines))
    assert isinstance(msg, SipRequest) and msg.method == "FOO"


def test_content_length_truncates_extra_octets_and_refuses_short_bodies() -> None:
    assert parse(wire([*BASE, "Content-Length: 3"], b"abcdef")).body == b"abc"
    assert parse(wire(BASE, b"to the end")).body == b"to the end"  # no Content-Length on UDP
    assert status_of(wire([*BASE, "Content-Length: 7"], b"abc")) == 400
    for bad in ("-1", "3x", "", "0x10", "٣"):
        assert status_of(wire([*BASE, f"Content-Length: {bad}"], b"abc")) == 400


@pytest.mark.parametrize("missing", ["Via", "From", "To", "Call-ID", "CSeq"])
def test_missing_mandatory_header_is_400(missing: str) -> None:
    lines = [line for line in BASE if not line.startswith(missing + ":")]
    assert status_of(wire(lines)) == 400


@pytest.mark.parametrize(
    ("line", "status"),
    [
        ("CSeq: -1 OPTIONS", 400),
        ("CSeq: 2147483648 OPTIONS", 400),
        ("CSeq: 1", 400),
        ("CSeq: 1 INVITE", 400),
        ("Max-Forwards: 256", 400),
        ("Via: SIP/2.0/UDP", 400),
        ("Via: SIP/2.0/UDP 192.0.2.1:99999;branch=z9hG4bK1", 400),
        ("From: <sip:a@x", 400),
        ("To: sip:a@x y", 400),
        ("Call-ID: has space", 400),
    ],
)
def test_bad_header_values(line: str, status: int) -> None:
    name = line.split(":", 1)[0]
    lines = [*(x for x in BASE if not x.startswith(name + ":")), line]
    assert status_of(wire(lines)) == status


def test_largest_cseq_is_accepted() -> None:
    lines = [*(x for x in BASE if not x.startswith("CSeq")), "CSeq: 2147483647 OPTIONS"]
    assert parse(wire(lines)).cseq.number == 2**31 - 1


@pytest.mark.parametrize(
    ("start", "status"),
    [
        ("OPTIONS sip:s@192.0.2.10 SIP/2.1", 505),
        ("OPTIONS sip:s@192.0.2.10 SIP/two", 400),
        ("OPTIONS sip:s@192.0.2.10 sip/2.0", -1),  # §7.1: the version is case-insensitive
        ("OPTIONS sip:s@192.0.2.10 HTTP/1.1", 0),  # not recognisably SIP: no reply
        ("OPTIONS sip:s@192.0.2.10", 0),
        ("OPTIONS  sip:s@192.0.2.10 SIP/2.0", 400),
        ("OPTIONS <sip:s@192.0.2.10> SIP/2.0", 400),
        ("OPTIONS s@192.0.2.10 SIP/2.0", 400),
        ("SIP/2.0 99 Too Low", 0),
        ("SIP/3.0 200 OK", 0),
    ],
)
def test_start_lines(start: str, status: int) -> None:
    if status < 0:
        assert isinstance(parse(wire([start, *BASE[1:]])), SipRequest)
    else:
        assert status_of(wire([start, *BASE[1:]])) == status


def test_size_limit_is_checked_before_parsing() -> None:
    assert status_of(b"x" * (MAX_MESSAGE_BYTES + 1)) == 513
    short = len(wire(BASE))
    padded = wire([*BASE, "X-Pad: " + "p" * (MAX_MESSAGE_BYTES - short - len("X-Pad: \r\n"))])
    assert len(padded) == MAX_MESSAGE_BYTES
    assert isinstance(parse(padded), SipRequest)


@pytest.mark.parametrize("data", [b"\r\n\r\n", b"\r\n", b"\x00", b" \r\n"])
def test_keepalives_are_recognised_and_not_errors(data: bytes) -> None:
    assert is_keepalive(data)
    assert status_of(data) == 0


@pytest.mark.parametrize(
    "data",
    [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x80\x00\x01\x02", b"hello", b"\x16\x03\x01\x02\x00"],
)
def test_non_sip_datagrams_have_status_zero(data: bytes) -> None:
    assert not is_keepalive(data)
    assert status_of(data) == 0


def test_malformed_header_section() -> None:
    assert status_of(wire([BASE[0], " folded-first", *BASE[1:]])) == 400
    assert status_of(wire([*BASE, "NoColonHere"])) == 400
    assert status_of(wire([*BASE, "Bad Name: x"])) == 400
    assert status_of(wire(BASE).replace(b"c1@", b"c1\xff@")) == 400
    assert status_of(wire(BASE).replace(b"c1@", b"c1\r@")) == 400


def test_malformed_response_is_dropped_not_answered() -> None:
    lines = ["SIP/2.0 200 OK", *(x for x in BASE[1:] if not x.startswith("Call-ID"))]
    assert status_of(wire(lines)) == 0


# --- serialization ------------------------------------------------------------------------


def test_serialize_sets_content_length_once_and_keeps_order() -> None:
    msg = parse(wire([*BASE, "Content-Length: 0", "Content-Length: 0"][:-1]))
    msg.body = b"hello"
    msg.headers.add("Content-Length", "99")
    data = bytes(msg)
    assert data.count(b"Content-Length") == 1 and b"Content-Length: 5\r\n\r\nhello" in data
    bare = SipRequest("OPTIONS", "sip:x@y", Headers([("Via", "SIP/2.0/UDP h;branch=z9hG4bKa")]))
    assert bytes(bare).endswith(b"Content-Length: 0\r\n\r\n")


def test_serialize_refuses_header_injection() -> None:
    msg = parse(wire(BASE))
    msg.headers.add("X-Evil", "a\r\nVia: SIP/2.0/UDP attacker")
    with pytest.raises(UserError):
        bytes(msg)
    msg.headers.remove("X-Evil")
    msg.headers.add("Bad: Name", "x")
    with pytest.raises(UserError):
        bytes(msg)


def test_headers_collection() -> None:
    h = Headers([("v", "a"), ("From", "f"), ("Via", "b, c")])
    assert list(h) == [("Via", "a"), ("From", "f"), ("Via", "b, c")]
    assert h.get_all("VIA") == ["a", "b", "c"] and h.get("via") == "a" and h.count("Via") == 2
    h.set("via", "z")
    assert list(h) == [("Via", "z"), ("From", "f")]
    assert h.remove("FROM") == 1 and "From" not in h and len(h) == 1
    assert h.copy() == h and h != Headers([("Via", "y")])
    with pytest.raises(KeyError):
        h["To"]


# --- header values ------------------------------------------------------------------------


def test_via_parse_and_render() -> None:
    via = Via.parse("SIP/2.0/udp [2001:db8::1]:5070;Branch=z9hG4bKx;rport=5071;received=192.0.2.9")
    assert (via.transport, via.host, via.port, via.branch) == (
        "UDP",
        "[2001:db8::1]",
        5070,
        "z9hG4bKx",
    )
    assert (via.rport, via.received) == (5071, "192.0.2.9")
    assert (
        str(via) == "SIP/2.0/UDP [2001:db8::1]:5070;branch=z9hG4bKx;rport=5071;received=192.0.2.9"
    )
    assert Via.parse(str(via)) == via
    for bad in (
        "SIP/2.0/UDP host;;",
        "XIP/2.0/UDP host",
        "SIP/2.0/UDP ho st",
        "SIP/2.0/UDP h;a=b c",
    ):
        with pytest.raises(SipError):
            Via.parse(bad)


@pytest.mark.parametrize(
    ("via", "source", "stamped", "destination"),
    [
        # RFC 3581: rport asked for → received and rport filled, reply to the source port
        ("SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKa;rport", ("203.0.113.7", 40123),
         "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKa;rport=40123;received=203.0.113.7",
         ("203.0.113.7", 40123)),
        # §18.2.1: sent-by differs from the source → received; port from sent-by
        ("SIP/2.0/UDP pbx.example.com:5070;branch=z9hG4bKb", ("192.0.2.5", 5070),
         "SIP/2.0/UDP pbx.example.com:5070;branch=z9hG4bKb;received=192.0.2.5",
         ("192.0.2.5", 5070)),
        # same address, no rport → unchanged; default port 5060
        ("SIP/2.0/UDP 192.0.2.5;branch=z9hG4bKc", ("192.0.2.5", 5060),
         "SIP/2.0/UDP 192.0.2.5;branch=z9hG4bKc", ("192.0.2.5", 5060)),
    ],
)  # fmt: skip
def test_stamp_via_and_response_destination(
    via: str, source: tuple[str, int], stamped: str, destination: tuple[str, int]
) -> None:
    result = stamp_via(Via.parse(via), source)
    assert str(result) == stamped
    assert response_destination(result) == destination


def test_a_received_the_client_wrote_is_not_trusted() -> None:
    forged = Via.parse("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa;received=198.51.100.66")
    stamped = stamp_via(forged, ("192.0.2.1", 5060))
    assert stamped.received is None and response_destination(stamped) == ("192.0.2.1", 5060)


def test_errors_name_the_header_not_its_value() -> None:
    lines = [*(x for x in BASE if not x.startswith("From")), "From: <sip:+14155550123@x;tag=1"]
    with pytest.raises(SipError) as info:
        parse(wire(lines))
    assert str(info.value) == "malformed From" and info.value.field == "From"
    with pytest.raises(SipError) as info:
        parse(wire(["INVITE  sip:+14155550123@x SIP/2.0", *BASE[1:]]))
    assert "4155550123" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "display", "uri", "params"),
    [
        ('"A \\"B\\"" <sip:a@x;lr>;tag=9', 'A "B"', "sip:a@x;lr", {"tag": "9"}),
        ("Alice  Smith <sips:a@x>", "Alice Smith", "sips:a@x", {}),
        ("<tel:+14155550123>", None, "tel:+14155550123", {}),
        ("sip:a@x;tag=1;Expires=30", None, "sip:a@x", {"tag": "1", "expires": "30"}),
        ("  sip:a@x  ", None, "sip:a@x", {}),
    ],
)
def test_name_addr_forms(text: str, display: str | None, uri: str, params: dict[str, str]) -> None:
    addr = NameAddr.parse(text)
    assert (addr.display, addr.uri, addr.params) == (display, uri, params)
    assert NameAddr.parse(str(addr)) == addr
    assert addr.with_tag("t").tag == "t"


@pytest.mark.parametrize(
    "text", ['"open <sip:a@x>', "<sip:a@x", "a,b <sip:a@x>", "<sip:a@ x>", "sip:a@x?h=1", "<>", "x"]
)
def test_name_addr_rejects(text: str) -> None:
    with pytest.raises(SipError) as info:
        NameAddr.parse(text, "To")
    assert info.value.status == 400


# --- building -----------------------------------------------------------------------------


def _invite() -> SipRequest:
    msg = fixture("sipp_invite")
    assert isinstance(msg, SipRequest)
    msg.headers.add("Record-Route", "<sip:proxy1.example.com;lr>, <sip:proxy2.example.com;lr>")
    msg.headers.add("Timestamp", "54")
    return msg


def test_response_to_copies_the_rfc_3261_8_2_6_headers() -> None:
    invite = _invite()
    invite.headers.add("Via", "SIP/2.0/UDP proxy.example.com;branch=z9hG4bK-second")
    ok = response_to(
        invite,
        200,
        to_tag="t1",
        body=b"v=0\r\n",
        content_type="application/sdp",
        headers=[("Contact", "<sip:service@192.0.2.10>")],
        source=("127.0.0.1", 5062),
    )
    assert (ok.status, ok.reason) == (200, "OK")
    assert ok.headers.get_all("Via") == [
        "SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-31509-1-0",  # same address, no rport asked
        "SIP/2.0/UDP proxy.example.com;branch=z9hG4bK-second",
    ]
    assert ok.headers["From"] == invite.headers["From"]
    assert ok.headers["To"] == invite.headers["To"] + ";tag=t1" and ok.to.tag == "t1"
    assert (ok.call_id, ok.headers["CSeq"]) == (invite.call_id, "1 INVITE")
    assert len(ok.headers.get_all("Record-Route")) == 2  # §12.1.1: dialog-creating response
    assert "Timestamp" not in ok.headers
    assert ok.headers["Content-Type"] == "application/sdp" and ok.body == b"v=0\r\n"
    again = parse(bytes(ok))
    assert again == parse(bytes(again)) and isinstance(again, SipResponse)


def test_response_to_tags_and_optional_headers() -> None:
    invite = _invite()
    trying = response_to(invite, 100)
    assert trying.to.tag is None and trying.headers["Timestamp"] == "54"
    busy = response_to(invite, 486)
    assert busy.to.tag and "Record-Route" not in busy.headers and busy.reason == "Busy Here"
    assert response_to(invite, 486).to.tag != busy.to.tag  # fresh tag when none is given
    invite.headers.set("To", "<sip:s@x>;tag=existing")
    assert response_to(invite, 200, to_tag="other").to.tag == "existing"
    assert (
        response_to(invite, 299).reason == "OK"
        and response_to(invite, 200, "Fine").reason == "Fine"
    )


def test_build_request_round_trips() -> None:
    req = build_request(
        "BYE", "sip:a@192.0.2.1:5062", from_=NameAddr("sip:s@192.0.2.10", None, {"tag": "l1"}),
        to="<sip:a@192.0.2.1>;tag=r1", call_id="cid", cseq=7, sent_by=("192.0.2.10", 5060),
        route=["<sip:p@proxy;lr>"], headers=[("Reason", 'SIP;cause=200;text="bye"')],
    )  # fmt: skip
    names = [name for name, _ in req.headers]
    assert names[:7] == ["Via", "Max-Forwards", "Route", "From", "To", "Call-ID", "CSeq"]
    assert req.via.branch and req.via.branch.startswith("z9hG4bK") and req.via.wants_rport
    assert (req.cseq.number, req.cseq.method, req.from_.tag, req.to.tag) == (7, "BYE", "l1", "r1")
    again = parse(bytes(req))
    assert without_length(again) == list(req.headers) and again.body == b""


# --- stateless replies to malformed requests ----------------------------------------------


def test_reply_to_malformed_request() -> None:
    data = wire([x for x in BASE if not x.startswith("Call-ID")])
    with pytest.raises(SipError) as info:
        parse(data)
    reply = reply_to_malformed(data, info.value, ("192.0.2.1", 5062))
    assert reply is not None
    raw, destination = reply
    assert raw.startswith(b"SIP/2.0 400 Bad Request\r\n") and destination == ("192.0.2.1", 5062)
    assert b'Warning: 399 callray "missing Call-ID header"' in raw and b"CSeq: 1 OPTIONS" in raw
    assert b"To: <sip:service@192.0.2.10>;tag=" in raw


def test_reply_to_version_and_size_errors() -> None:
    bad = (FIXTURES / "rfc4475" / "invalid" / "badvers.sip").read_bytes()
    reply = reply_to_malformed(bad, SipError("v", status=505), ("192.0.2.9", 5099))
    assert reply is not None and reply[0].startswith(b"SIP/2.0 505 Version Not Supported")
    big = wire([*BASE, "X-Pad: " + "p" * MAX_MESSAGE_BYTES])
    with pytest.raises(SipError) as info:
        parse(big)
    reply = reply_to_malformed(big, info.value, ("192.0.2.1", 5062))
    assert reply is not None and reply[0].startswith(b"SIP/2.0 513 Message Too Large")


def test_reply_never_echoes_a_stray_cr() -> None:
    """Found by the fuzzer: a raw Via with a bare CR was copied into our 400."""
    data = b"OPTIONS sip:a@b SIP/2.0\nVia:SIP/2.0/UDP h;x=a\rb\n\n"
    with pytest.raises(SipError) as info:
        parse(data)
    assert reply_to_malformed(data, info.value, ("192.0.2.1", 5062)) is None
    with pytest.raises(SipError):
        Via.parse("SIP/2.0/UDP h;x=a\x00b")


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (wire(["ACK sip:s@x SIP/2.0", *BASE[1:5], "CSeq: 1 INVITE"]), 400),  # never answer ACK
        (wire([x for x in BASE if not x.startswith("Via")]), 400),  # nowhere to send it
        (b"garbage", 0),
        (wire(["SIP/2.0 200 OK", *BASE[1:]]), 400),
    ],
)
def test_no_reply_to_malformed(data: bytes, status: int) -> None:
    assert reply_to_malformed(data, SipError("x", status=status), ("192.0.2.1", 5062)) is None


# --- fuzz ---------------------------------------------------------------------------------

GOLDEN = [p.read_bytes() for p in CAPTURES + VALID + INVALID]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(GOLDEN)))
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        chunk = draw(
            st.sampled_from([b",", b";", b'"', b"<", b">", b"\r\n", b" ", b":", b"\x00", b"\xff"])
        )
        if op == "flip" and i < len(data):
            data[i] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[i:i] = chunk
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 20))]
        else:
            del data[i:]
    return bytes(data)


@FUZZ
@given(st.binary(max_size=2048) | mutated())
def test_parse_raises_only_sip_error_and_round_trips(data: bytes) -> None:
    try:
        msg = parse(data)
    except SipError as exc:
        assert exc.status in (0, 400, 505, 513)
        reply_to_malformed(data, exc, ("192.0.2.1", 5060))  # must not raise either
        return
    again = parse(bytes(msg))
    assert without_length(again) == without_length(msg) and again.body == msg.body
