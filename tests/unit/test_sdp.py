"""The shared SDP parser: golden round trips of offers real peers sent, the helpers offer/answer
reads, tolerated sloppiness, and each malformed or oversized input refused with SdpError."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.errors import SdpError
from services.telephony import sdp
from services.telephony.sdp import Connection, Line, MediaSection, Origin, RtpMap

# Captured on loopback from sipp 3.6.1 running reference/sip-test/uac_rtpstream.xml.
SIPP = (
    b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\nm=audio 6100 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-11,16\r\n"
)
# Captured on loopback from baresip 1.0.0 (g711 module, no audio_codecs filter).
BARESIP = (
    b"v=0\r\no=- 1639757064 416045550 IN IP4 192.0.2.2\r\ns=-\r\nc=IN IP4 192.0.2.2\r\nt=0 0\r\n"
    b"a=tool:baresip 1.0.0\r\nm=audio 42082 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n"
    b"a=sendrecv\r\na=label:1\r\na=rtcp-rsize\r\na=ssrc:3594340292 cname:sip:tester@127.0.0.1\r\n"
    b"a=minptime:20\r\na=ptime:20\r\n"
)
# RFC 8866 §5 example: every session-level line type, IPv6 c= at media level.
RFC8866 = (
    "v=0\r\no=jdoe 3724394400 3724394405 IN IP4 198.51.100.1\r\ns=Call to John Smith\r\n"
    "i=SDP Offer #1\r\nu=http://www.jdoe.example.com/home.html\r\n"
    "e=Jane Doe <jane@jdoe.example.com>\r\np=+1 617 555-6011\r\nc=IN IP4 198.51.100.1\r\n"
    "t=0 0\r\nm=audio 49170 RTP/AVP 0\r\nm=audio 49180 RTP/AVP 0\r\n"
    "m=video 51372 RTP/AVP 99\r\nc=IN IP6 2001:db8::2\r\na=rtpmap:99 h263-1998/90000\r\n"
)
# RFC 4566 §5 example: multicast with a TTL, a session-level direction, LF line endings.
RFC4566_LF = (
    "v=0\no=jdoe 2890844526 2890842807 IN IP4 10.47.16.5\ns=SDP Seminar\n"
    "c=IN IP4 224.2.17.12/127\nt=2873397496 2873404696\na=recvonly\n"
    "m=audio 49170 RTP/AVP 0\nm=video 51372/2 RTP/AVP 99\na=rtpmap:99 h263-1998/90000\n"
)
CHROMIUM = (Path(__file__).parent / "data" / "chromium_offer.sdp").read_text()


@pytest.mark.parametrize("text", [SIPP, BARESIP], ids=["sipp", "baresip"])
def test_captured_offers_round_trip_byte_for_byte(text: bytes) -> None:
    parsed = sdp.parse(text)
    assert bytes(parsed) == text
    assert sdp.parse(parsed.serialize()) == parsed


@pytest.mark.parametrize("text", [RFC8866, RFC4566_LF, CHROMIUM], ids=["8866", "4566-lf", "webrtc"])
def test_grammatical_text_round_trips_with_its_line_ending(text: str) -> None:
    parsed = sdp.parse(text)
    assert parsed.serialize() == text
    assert parsed.eol == ("\n" if "\r" not in text else "\r\n")


def test_session_and_media_fields() -> None:
    parsed = sdp.parse(BARESIP)
    assert [line.type for line in parsed.lines] == ["v", "o", "s", "c", "t", "a"]
    assert parsed.origin() == Origin("-", "1639757064", "416045550", "IN", "IP4", "192.0.2.2")
    assert parsed.connection() == Connection("IN", "IP4", "192.0.2.2")
    assert parsed.attribute("tool") == "baresip 1.0.0"
    (audio,) = parsed.media
    assert (audio.media, audio.port, audio.proto, audio.formats) == (
        "audio",
        42082,
        "RTP/AVP",
        ("0", "8", "101"),
    )
    assert audio.rtpmaps() == {
        0: RtpMap(0, "PCMU", 8000, None),
        8: RtpMap(8, "PCMA", 8000, None),
        101: RtpMap(101, "telephone-event", 8000, None),
    }
    assert audio.fmtp("101") == "0-15" and audio.fmtp("0") is None
    assert audio.direction() == "sendrecv" and audio.ptime() == 20.0
    assert audio.attribute("rtcp-rsize") == "" and audio.attribute("rtcp") is None
    assert audio.attribute("ssrc") == "3594340292 cname:sip:tester@127.0.0.1"
    assert ("label", "1") in audio.attributes()


def test_media_level_connection_and_direction_override_the_session() -> None:
    parsed = sdp.parse(RFC8866)
    first, _, video = parsed.media
    assert parsed.media_connection(first) == Connection("IN", "IP4", "198.51.100.1")
    assert parsed.media_connection(video) == Connection("IN", "IP6", "2001:db8::2")
    assert parsed.media_direction(first) == "sendrecv"  # RFC 3264 §5.1 default
    lf = sdp.parse(RFC4566_LF)
    assert lf.connection() == Connection("IN", "IP4", "224.2.17.12", 127)
    assert lf.media_direction(lf.media[0]) == "recvonly"  # inherited from the session
    assert lf.media[1].port == 51372 and lf.media[1].port_count == 2
    assert lf.media[1].rtpmaps()[99] == RtpMap(99, "h263-1998", 90000, None)


def test_sloppy_but_harmless_input_is_taken_and_normalised() -> None:
    sloppy = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\n\r\nc=IN IP4 10.0.0.1\r\nm=audio  4000 RTP/AVP 0"
    parsed = sdp.parse(sloppy)  # no s=/t=, a blank line, two spaces, no final CRLF
    assert parsed.media[0].port == 4000
    assert parsed.serialize() == (
        "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\n"
    )


def test_malformed_rtpmap_and_ptime_are_ignored_not_fatal() -> None:
    text = SIPP.decode() + "a=rtpmap:x PCMU\r\na=rtpmap:102\r\na=ptime:abc\r\n"
    audio = sdp.parse(text).media[0]
    assert set(audio.rtpmaps()) == {0, 101} and audio.ptime() is None


def test_a_built_description_serializes_with_crlf() -> None:
    built = sdp.SessionDescription(
        (Line("v", "0"), Line("o", "x 1 2 IN IP4 10.0.0.1"), Line("s", "-"), Line("t", "0 0")),
        (MediaSection("audio", 0, "RTP/AVP", ("0",)),),
    )
    assert (
        built.serialize()
        == "v=0\r\no=x 1 2 IN IP4 10.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 0 RTP/AVP 0\r\n"
    )


def _too_many_lines() -> str:
    return "v=0\no=- 1 1 IN IP4 10.0.0.1\n" + "a=x\n" * sdp.MAX_LINES


def _too_many_media() -> str:
    return "v=0\no=- 1 1 IN IP4 10.0.0.1\n" + "m=audio 1 RTP/AVP 0\n" * (sdp.MAX_MEDIA + 1)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty SDP"),
        ("\r\n\r\n", "empty SDP"),
        ("hello world", "malformed SDP line"),
        ("o=- 1 1 IN IP4 10.0.0.1\nv=0\n", "first line must be v=0"),
        ("v=1\no=- 1 1 IN IP4 10.0.0.1\n", "first line must be v=0"),
        ("v=0\nv=0\no=- 1 1 IN IP4 10.0.0.1\n", "more than one v="),
        ("v=0\ns=-\n", "exactly one o= line"),
        ("v=0\no=- 1 1 IN IP4\n", "malformed o= line"),
        ("v=0\no=- one 1 IN IP4 10.0.0.1\n", "must be digits"),
        ("v=0\no=- 1 1 IN IP4 1.2.3.4\nV=0\n", "malformed SDP line"),
        ("v=0\no=- 1 1 IN IP4 1.2.3.4\na =x\n", "malformed SDP line"),
        ("v=0\no=- 1 1 IN IP4 1.2.3.4\nc=IN IP4\n", "malformed c= line"),
        ("v=0\no=- 1 1 IN IP4 1.2.3.4\nc=IN IP4 1.2.3.4/x\n", "malformed c= address"),
        ("v=0\no=- 1 1 IN IP4 1.2.3.4\nm=audio 4000 RTP/AVP\n", "malformed m= line"),
        ("v=0\no=- 1 1 IN IP4 1.2.3.4\nm=audio x RTP/AVP 0\n", "malformed m= port"),
        ("v=0\no=- 1 1 IN IP4 1.2.3.4\nm=audio 70000 RTP/AVP 0\n", "out of range"),
        ("v=0\no=- 1 1 IN IP4 1.2.3.4\nm=audio 4000 RTP/AVP 0\nt=0 0\n", "inside a media"),
        ("v=0\no=- 1 1 IN IP4 1.2.3.4\nm=audio 1 RTP/AVP 0\nc=IN IP4 a/b/c/d\n", "c= address"),
        ("v=0\no=- 1 1 IN IP4 1.2.3.4\ns=a\x00b\n", "control character"),
        ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=a\rb\r\n", "control character"),
        ("v=0\n" + "a=" + "x" * sdp.MAX_SDP_BYTES, "larger than"),
        ("v=0\na=" + "é" * (sdp.MAX_SDP_BYTES // 2), "larger than"),  # counted in bytes
        (_too_many_lines(), "more than 1024 lines"),
        (_too_many_media(), "more than 32 media"),
    ],
)
def test_malformed_input_is_refused_with_its_reason(text: str, reason: str) -> None:
    with pytest.raises(SdpError, match=reason):
        sdp.parse(text)


def test_bytes_are_checked_for_size_and_utf8() -> None:
    with pytest.raises(SdpError, match="not UTF-8"):
        sdp.parse(b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=\xff\r\n")
    with pytest.raises(SdpError, match="larger than"):
        sdp.parse(b"v=0\r\n" + b"a=x\r\n" * 4000)


def test_error_text_never_carries_quotes_or_much_of_the_input() -> None:
    hostile = 'v=0\no=- 1 1 IN IP4 1.2.3.4\nm=audio "evil\\" ' + "A" * 500 + "\n"
    with pytest.raises(SdpError) as caught:
        sdp.parse(hostile)
    message = str(caught.value)
    assert '"' not in message and "\\" not in message and len(message) < 80
