"""RFC 3264 offer/answer for the SIP UAS: the codec/event/ptime/direction matrix, rejected
m-lines answered with port 0 in place, each 488 reason, hold detection, and the late-offer
direction (our offer in the 200 OK, the peer's answer in the ACK)."""

from __future__ import annotations

import dataclasses

import pytest

from services.errors import SdpError, UserError
from services.telephony import sdp
from services.telephony.sip.offer_answer import (
    Answer,
    Codec,
    NegotiatedAudio,
    accept_answer,
    answer,
    is_hold,
    offer,
)
from tests.unit.test_sdp import BARESIP, SIPP

LOCAL = "198.51.100.7"


def _offer(m: str = "m=audio 4000 RTP/AVP 0", *extra: str, c: str = "IN IP4 203.0.113.5") -> str:
    head = ["v=0", "o=trunk 1 1 IN IP4 203.0.113.5", "s=-", f"c={c}", "t=0 0"]
    return "\r\n".join([*head, m, *extra]) + "\r\n"


def _answer(text: str | bytes, **kwargs: object) -> Answer:
    args: dict[str, object] = {"local_ip": LOCAL, "rtp_port": 40000, "session_id": 42}
    args["session_version"] = 1
    args.update(kwargs)
    return answer(text, **args)  # type: ignore[arg-type]


def _m_lines(text: str) -> list[str]:
    return ["m=" + m.m_line() for m in sdp.parse(text).media]


def test_the_answer_to_a_sipp_offer_is_exactly_what_a_trunk_expects() -> None:
    result = _answer(SIPP)
    assert result.sdp == (
        "v=0\r\no=callray 42 1 IN IP4 198.51.100.7\r\ns=callray\r\nc=IN IP4 198.51.100.7\r\n"
        "t=0 0\r\nm=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
    )
    assert result.audio == NegotiatedAudio(
        codec="PCMU",
        payload_type=0,
        telephone_event=101,
        ptime_ms=20,
        remote_address="127.0.0.1",
        remote_port=6100,
        direction="sendrecv",
    )
    assert result.audio.sends and result.audio.receives
    assert (result.audio_index, result.rejected) == (0, ())


@pytest.mark.parametrize(
    ("preference", "codec", "pt"),
    [(("PCMU", "PCMA"), "PCMU", 0), (("PCMA", "PCMU"), "PCMA", 8), (("PCMA",), "PCMA", 8)],
)
def test_baresip_offering_both_codecs_gets_the_one_we_prefer(
    preference: tuple[Codec, ...], codec: str, pt: int
) -> None:
    result = _answer(BARESIP, codecs_preference=preference)
    assert (result.audio.codec, result.audio.payload_type) == (codec, pt)
    assert result.audio.telephone_event == 101 and result.audio.ptime_ms == 20
    assert result.audio.remote_address == "192.0.2.2" and result.audio.remote_port == 42082
    assert _m_lines(result.sdp) == [f"m=audio 40000 RTP/AVP {pt} 101"]  # one codec, no switching


@pytest.mark.parametrize(
    ("m_line", "extra", "codec", "pt"),
    [
        ("m=audio 4000 RTP/AVP 0", (), "PCMU", 0),
        ("m=audio 4000 RTP/AVP 8", (), "PCMA", 8),
        ("m=audio 4000 RTP/AVP 8 0", (), "PCMU", 0),  # our preference, not the offer's order
        ("m=audio 4000 RTP/AVP 18 8", ("a=rtpmap:18 G729/8000",), "PCMA", 8),
        ("m=audio 4000 RTP/AVP 97", ("a=rtpmap:97 pcmu/8000",), "PCMU", 97),  # dynamic, any case
        ("m=audio 4000 RTP/AVP 97 8", ("a=rtpmap:97 PCMU/8000/2", "a=ptime:20"), "PCMA", 8),
    ],
)
def test_the_codec_matrix(m_line: str, extra: tuple[str, ...], codec: str, pt: int) -> None:
    result = _answer(_offer(m_line, *extra))
    assert (result.audio.codec, result.audio.payload_type) == (codec, pt)
    assert _m_lines(result.sdp) == [f"m=audio 40000 RTP/AVP {pt}"]
    assert f"a=rtpmap:{pt} {codec}/8000\r\n" in result.sdp
    assert result.audio.telephone_event is None and "telephone-event" not in result.sdp


@pytest.mark.parametrize("event_pt", [96, 101, 127])
def test_telephone_event_keeps_the_offers_payload_type(event_pt: int) -> None:
    text = _offer(
        f"m=audio 4000 RTP/AVP 8 {event_pt}",
        f"a=rtpmap:{event_pt} telephone-event/8000",
        f"a=fmtp:{event_pt} 0-16",
    )
    result = _answer(text)
    assert result.audio.telephone_event == event_pt
    assert _m_lines(result.sdp) == [f"m=audio 40000 RTP/AVP 8 {event_pt}"]
    assert f"a=fmtp:{event_pt} 0-15\r\n" in result.sdp


def test_telephone_event_at_another_clock_rate_is_not_taken() -> None:
    text = _offer("m=audio 4000 RTP/AVP 0 110", "a=rtpmap:110 telephone-event/48000")
    assert _answer(text).audio.telephone_event is None


@pytest.mark.parametrize(("line", "ptime"), [("a=ptime:30", 30), ("a=ptime:abc", 20), (None, 20)])
def test_ptime_follows_the_offer(line: str | None, ptime: int) -> None:
    text = _offer("m=audio 4000 RTP/AVP 0", *([line] if line else []))
    result = _answer(text)
    assert result.audio.ptime_ms == ptime and f"a=ptime:{ptime}\r\n" in result.sdp


def test_a_session_level_ptime_is_honoured() -> None:
    text = _offer("m=audio 4000 RTP/AVP 0").replace("t=0 0\r\n", "t=0 0\r\na=ptime:40\r\n")
    assert _answer(text).audio.ptime_ms == 40


def test_video_beside_audio_is_rejected_with_port_zero_in_its_place() -> None:
    text = _offer(
        "m=video 5000 RTP/AVP 96 97",
        "a=rtpmap:96 VP8/90000",
        "a=rtpmap:97 H264/90000",
        "m=audio 4000 RTP/AVP 0",
        "m=application 6000 UDP/BFCP *",
    )
    result = _answer(text)
    assert _m_lines(result.sdp) == [
        "m=video 0 RTP/AVP 96 97",
        "m=audio 40000 RTP/AVP 0",
        "m=application 0 UDP/BFCP *",
    ]
    assert (result.audio_index, result.rejected) == (1, ("video", "application"))
    assert "VP8" not in result.sdp


def test_best_effort_srtp_takes_the_plain_rtp_stream() -> None:
    text = _offer(
        "m=audio 4000 RTP/SAVP 0",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz",
        "m=audio 4002 RTP/AVP 0",
    )
    result = _answer(text)
    assert _m_lines(result.sdp) == ["m=audio 0 RTP/SAVP 0", "m=audio 40000 RTP/AVP 0"]
    assert result.audio.remote_port == 4002 and "crypto" not in result.sdp


def test_a_second_usable_audio_stream_is_rejected() -> None:
    text = _offer("m=audio 4000 RTP/AVP 8", "m=audio 4002 RTP/AVP 0")
    result = _answer(text)
    assert _m_lines(result.sdp) == ["m=audio 40000 RTP/AVP 8", "m=audio 0 RTP/AVP 0"]
    assert result.rejected == ("audio",)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (_offer("m=video 5000 RTP/AVP 96", "a=rtpmap:96 VP8/90000"), "video-only"),
        (_offer("m=audio 4000 RTP/SAVP 0", "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:x"), "SRTP"),
        (_offer("m=audio 4000 UDP/TLS/RTP/SAVPF 0"), "SRTP"),
        (_offer("m=audio 4000 TCP/RTP/AVP 0"), "transport not supported"),
        (_offer("m=audio 4000 RTP/AVP 9 18", "a=rtpmap:18 G729/8000"), "no common codec"),
        (_offer("m=audio 4000 RTP/AVP 96", "a=rtpmap:96 opus/48000/2"), "no common codec"),
        (_offer("m=audio 4000 RTP/AVP 96"), "no common codec"),  # dynamic PT, no rtpmap
        (_offer("m=audio 4000 RTP/SAVP 0", "m=audio 4002 RTP/AVP 9"), "no common codec"),
        (_offer("m=audio 0 RTP/AVP 0"), "disabled"),
        (_offer().replace("m=audio 4000 RTP/AVP 0\r\n", ""), "no media"),
        (_offer(c="IN IP4 trunk.example.com"), "not an IP address"),
        (_offer(c="IN IP4 239.1.1.1/32"), "multicast"),
        (_offer(c="ATM NSAP 47.0091"), "not IN IP4"),
        (_offer().replace("c=IN IP4 203.0.113.5\r\n", ""), "no connection address"),
        ("INVITE sip:x SIP/2.0\r\n", "malformed SDP line"),
    ],
)
def test_offers_we_refuse_raise_a_488_reason_fit_for_a_warning(text: str, reason: str) -> None:
    with pytest.raises(SdpError, match=reason) as caught:
        _answer(text)
    assert '"' not in str(caught.value) and "\\" not in str(caught.value)


@pytest.mark.parametrize(
    ("direction_line", "connection", "answered", "sends", "receives"),
    [
        ("a=sendrecv", "IN IP4 203.0.113.5", "sendrecv", True, True),
        ("a=sendonly", "IN IP4 203.0.113.5", "recvonly", False, True),  # we are on hold
        ("a=inactive", "IN IP4 203.0.113.5", "inactive", False, False),
        ("a=recvonly", "IN IP4 203.0.113.5", "sendonly", True, False),
        (None, "IN IP4 0.0.0.0", "recvonly", False, True),  # RFC 2543 hold
        ("a=inactive", "IN IP4 0.0.0.0", "inactive", False, False),
        ("a=recvonly", "IN IP4 0.0.0.0", "inactive", False, False),
    ],
)
def test_the_answer_mirrors_the_offered_direction(
    direction_line: str | None, connection: str, answered: str, sends: bool, receives: bool
) -> None:
    text = _offer(
        "m=audio 4000 RTP/AVP 0", *([direction_line] if direction_line else []), c=connection
    )
    result = _answer(text)
    assert result.audio.direction == answered
    assert sdp.parse(result.sdp).media[0].direction() == answered
    assert (result.audio.sends, result.audio.receives) == (sends, receives)


def test_a_session_level_direction_applies_to_the_audio() -> None:
    text = _offer().replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n")
    assert _answer(text).audio.direction == "recvonly"
    assert is_hold(text)


def test_our_own_hold_is_intersected_with_the_offer() -> None:
    assert _answer(_offer(), direction="sendonly").audio.direction == "sendonly"
    assert _answer(
        _offer("m=audio 4000 RTP/AVP 0", "a=sendonly"), direction="sendonly"
    ).audio.direction == ("inactive")


def test_a_media_level_address_wins_over_the_session_one() -> None:
    text = _offer("m=audio 4000 RTP/AVP 0", "c=IN IP6 2001:db8::9")
    assert _answer(text).audio.remote_address == "2001:db8::9"


def test_a_reinvite_answer_keeps_the_session_id_and_raises_the_version() -> None:
    first = sdp.parse(_answer(SIPP, session_version=1).sdp).origin()
    again = sdp.parse(_answer(SIPP, session_version=2).sdp).origin()
    assert (first.session_id, first.session_version) == ("42", "1")
    assert (again.session_id, again.session_version) == ("42", "2")


def test_an_ipv6_local_address_is_written_as_ip6() -> None:
    result = _answer(SIPP, local_ip="2001:db8::1")
    assert "c=IN IP6 2001:db8::1\r\n" in result.sdp and "IN IP6 2001:db8::1\r\ns=" in result.sdp


@pytest.mark.parametrize(
    "kwargs",
    [
        {"local_ip": "callray.local"},
        {"rtp_port": 0},
        {"session_version": -1},
        {"codecs_preference": ()},
        {"codecs_preference": ("G722",)},
    ],
)
def test_our_own_bad_arguments_are_user_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(UserError):
        _answer(SIPP, **kwargs)


@pytest.mark.parametrize(
    ("text", "held"),
    [
        (_offer("m=audio 4000 RTP/AVP 0", "a=sendonly"), True),
        (_offer("m=audio 4000 RTP/AVP 0", "a=inactive"), True),
        (_offer(c="IN IP4 0.0.0.0"), True),
        (_offer("m=audio 4000 RTP/AVP 0", "a=recvonly"), False),
        (_offer("m=audio 4000 RTP/AVP 0", "a=sendrecv"), False),
        (SIPP.decode(), False),
        (_offer("m=audio 0 RTP/AVP 0", "a=sendonly"), False),  # a removed stream is not hold
        (_offer("m=video 5000 RTP/AVP 96"), False),
    ],
)
def test_is_hold(text: str, held: bool) -> None:
    assert is_hold(text) is held


def test_is_hold_refuses_text_that_is_not_sdp() -> None:
    with pytest.raises(SdpError):
        is_hold("hello")


# ------------------------------------------------------------------ late offer (SDP in ACK)


def _late_offer(**kwargs: object) -> str:
    args: dict[str, object] = {"session_id": 7, "session_version": 1}
    args.update(kwargs)
    return offer(LOCAL, 40000, **args)  # type: ignore[arg-type]


def test_our_late_offer() -> None:
    assert _late_offer() == (
        "v=0\r\no=callray 7 1 IN IP4 198.51.100.7\r\ns=callray\r\nc=IN IP4 198.51.100.7\r\n"
        "t=0 0\r\nm=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
    )
    assert _m_lines(_late_offer(codecs=("PCMA",), telephone_event=None)) == [
        "m=audio 40000 RTP/AVP 8"
    ]


@pytest.mark.parametrize(
    "kwargs", [{"codecs": ()}, {"codecs": ("G722",)}, {"telephone_event": 8}, {"ptime_ms": 5}]
)
def test_a_bad_late_offer_request_is_a_user_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(UserError):
        _late_offer(**kwargs)


@pytest.mark.parametrize("preference", [("PCMU", "PCMA"), ("PCMA", "PCMU")])
def test_late_offer_round_trip_through_our_own_answerer(preference: tuple[Codec, ...]) -> None:
    ours = _late_offer(ptime_ms=30)
    theirs = answer(
        ours,
        local_ip="203.0.113.5",
        rtp_port=5004,
        session_id=9,
        session_version=1,
        codecs_preference=preference,
    )
    plan = accept_answer(theirs.sdp, ours)
    # The peer's plan and ours agree on everything but whose address is remote.
    assert plan == dataclasses.replace(theirs.audio, remote_address="203.0.113.5", remote_port=5004)
    assert plan.codec == preference[0] and plan.telephone_event == 101 and plan.ptime_ms == 30


def _peer_answer(m: str = "m=audio 5004 RTP/AVP 8 101", *extra: str) -> str:
    return _offer(m, "a=rtpmap:101 telephone-event/8000", *extra, c="IN IP4 203.0.113.5")


def test_accept_answer_reads_codec_event_ptime_and_address() -> None:
    plan = accept_answer(_peer_answer("m=audio 5004 RTP/AVP 8 101", "a=ptime:30"), _late_offer())
    assert plan == NegotiatedAudio("PCMA", 8, 101, 30, "203.0.113.5", 5004, "sendrecv")


def test_accept_answer_without_telephone_event_and_with_hold() -> None:
    plan = accept_answer(_peer_answer("m=audio 5004 RTP/AVP 0", "a=recvonly"), _late_offer())
    assert (plan.codec, plan.telephone_event, plan.direction) == ("PCMU", None, "sendonly")
    plan = accept_answer(_peer_answer("m=audio 5004 RTP/AVP 0", "a=sendonly"), _late_offer())
    assert plan.direction == "recvonly" and not plan.sends


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (_peer_answer("m=audio 0 RTP/AVP 0"), "rejected the audio"),
        (_peer_answer("m=audio 5004 RTP/SAVP 0"), "changed the audio transport"),
        (_peer_answer("m=audio 5004 RTP/AVP 18"), "no common codec"),
        (_peer_answer("m=audio 5004 RTP/AVP 0", "m=video 0 RTP/AVP 96"), "2 m-lines"),
        (_peer_answer("m=video 5004 RTP/AVP 0"), "rejected the audio"),
        ("v=0\r\n", "exactly one o= line"),
    ],
)
def test_an_answer_that_breaks_rfc_3264_is_refused(text: str, reason: str) -> None:
    with pytest.raises(SdpError, match=reason):
        accept_answer(text, _late_offer())
