"""The SIP peers' harness (tests/sip_peers.py) and scenarios, checked against each other.

Our UAS does not exist yet, so each tests/fixtures/sipp/uac_*.xml runs against a SIPp stand-in
(tests/fixtures/sipp/selftest/, or uas_answer.xml) that behaves as the issue-11 UAS should,
and baresip dials SIPp. What reaches a "UAS" as RTP is read by a socket here and decoded.
Loopback only: run inside ``unshare -n`` with ``lo`` up (scripts/test.sh does).
"""

from __future__ import annotations

import hashlib
import re
import socket
import struct
from pathlib import Path

import numpy as np
import pytest

from services.telephony.g711 import pcm16_to_ulaw, ulaw_decode
from tests.sip_peers import (
    Baresip,
    Sipp,
    analyse_wav,
    require_raw_socket,
    tone_pcm16,
    write_wav,
)
from tests.sip_raw import ack_for, edge_cases, send_raw, sip_request, status_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class RtpSink:
    """A UDP socket on 127.0.0.1 that keeps every datagram: a UAS's media port, seen raw."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]

    def drain(self) -> list[bytes]:
        got = []
        while True:
            try:
                got.append(self.sock.recv(2048))
            except BlockingIOError:
                self.sock.close()
                return got


def payload_type(datagram: bytes) -> int:
    return datagram[1] & 0x7F


def digits_in(datagrams: list[bytes], pt: int) -> str:
    """RFC 4733 digits: one per event timestamp that has an end packet (E bit)."""
    ends: dict[int, int] = {}
    for d in datagrams:
        if payload_type(d) == pt and d[13] & 0x80:
            ends.setdefault(struct.unpack_from("!I", d, 4)[0], d[12])
    return "".join("0123456789*#ABCD"[event] for _, event in sorted(ends.items()))


async def test_sipp_uac_streams_the_ulaw_tone_it_was_given(tmp_path: Path) -> None:
    sink = RtpSink()
    tone = pcm16_to_ulaw(tone_pcm16(hz=1000, seconds=1.0))
    async with await Sipp(
        "uas_answer.xml", tmp_path / "uas", keys={"rtp_port": str(sink.port)}
    ).start() as uas:
        result = await Sipp(
            "uac_rtp_stream.xml", tmp_path / "uac", tone=tone, duration_ms=1200
        ).run(uas.target)
        result.assert_ok()
        (await uas.wait(5)).assert_ok()
    assert [m.first_line.split()[0] for m in result.sent()] == ["INVITE", "ACK", "BYE"]
    assert "RTP/AVP 0 101" in result.sent("INVITE")[0].body
    assert result.received("SIP/2.0 200")[0].header("Content-Type") == "application/sdp"
    audio = [d for d in sink.drain() if payload_type(d) == 0]
    assert len(audio) == 50 and {len(d) for d in audio} == {12 + 160}  # 1 s in 20 ms packets
    assert b"".join(d[12:] for d in audio) == tone  # SIPp sent the file as it is
    spectrum = np.abs(np.fft.rfft(ulaw_decode(tone).astype(float)))
    assert np.argmax(spectrum) * 8000 / len(spectrum) / 2 == pytest.approx(1000, abs=5)


async def test_sipp_uac_sends_rfc4733_digits(tmp_path: Path) -> None:
    require_raw_socket()
    sink = RtpSink()
    tone = pcm16_to_ulaw(tone_pcm16(seconds=0.4))
    async with await Sipp(
        "uas_answer.xml", tmp_path / "uas", keys={"rtp_port": str(sink.port)}
    ).start() as uas:
        uac = Sipp(
            "uac_rtp_stream_dtmf.xml",
            tmp_path / "uac",
            tone=tone,
            duration_ms=1600,  # >= 800 + 400 ms per digit: see the scenario
            keys={"dtmf": "7*"},
        )
        (await uac.run(uas.target)).assert_ok()
    datagrams = sink.drain()
    assert digits_in(datagrams, 96) == "7*"
    assert {payload_type(d) for d in datagrams} == {0, 96, 97}  # 97: RFC 6263 noop fillers


# Each UAC scenario against the stand-in that behaves as the issue asks of our UAS.
PAIRS = {
    "cancel": ("uac_cancel.xml", "selftest/uas_cancel.xml", ["INVITE", "CANCEL", "ACK"]),
    "options": ("uac_options.xml", "selftest/uas_options.xml", ["OPTIONS"]),
    "hold": (
        "uac_hold_resume.xml",
        "selftest/uas_hold_resume.xml",
        ["INVITE", "ACK"] * 3 + ["BYE"],
    ),
    "session timer": (
        "uac_session_timer.xml",
        "selftest/uas_session_timer.xml",
        ["INVITE", "ACK", "UPDATE", "INVITE", "ACK", "BYE"],
    ),
    "refer": (
        "uac_refer_target.xml",
        "selftest/uas_refer_sender.xml",
        ["INVITE", "ACK", "SIP/2.0", "NOTIFY", "NOTIFY", "SIP/2.0"],
    ),
    "refer fails": (
        "uac_refer_target_fails.xml",
        "selftest/uas_refer_sender.xml",
        ["INVITE", "ACK", "SIP/2.0", "NOTIFY", "NOTIFY", "BYE"],
    ),
    "hang-up": (
        "uac_callee_hangs_up.xml",
        "selftest/uas_hangs_up.xml",
        ["INVITE", "ACK", "SIP/2.0"],
    ),
}


@pytest.mark.parametrize("name", PAIRS)
async def test_uac_scenario_against_its_stand_in(tmp_path: Path, name: str) -> None:
    uac_scenario, uas_scenario, sent = PAIRS[name]
    async with await Sipp(uas_scenario, tmp_path / "uas").start() as uas:
        result = await Sipp(uac_scenario, tmp_path / "uac", duration_ms=200).run(uas.target)
        result.assert_ok()
        (await uas.wait(5)).assert_ok()
    assert [m.first_line.split()[0] for m in result.sent()] == sent


async def test_a_failed_scenario_check_fails_the_call(tmp_path: Path) -> None:
    # The hold stand-in answers without Session-Expires and Require: timer, which the timer
    # scenario checks: the check must fail the call, not pass silently.
    async with await Sipp("selftest/uas_hold_resume.xml", tmp_path / "uas").start() as uas:
        uac = Sipp("uac_session_timer.xml", tmp_path / "uac", recv_timeout_ms=1000)
        result = await uac.run(uas.target)  # (the stand-in then never answers the UPDATE)
    assert (result.returncode, result.successful, result.failed) == (1, 0, 1)
    assert "Failed regexp match: header Session-Expires: not found" in result.errors


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


async def test_uac_auth_answers_the_challenge_with_a_correct_md5_digest(tmp_path: Path) -> None:
    async with await Sipp("selftest/uas_auth.xml", tmp_path / "uas").start() as uas:
        uac = Sipp("uac_auth.xml", tmp_path / "uac", auth=("trunk", "secret"), duration_ms=100)
        result = await uac.run(uas.target)
        result.assert_ok()
    invite = result.sent("INVITE")[1]
    fields = dict(re.findall(r'(\w+)="?([^",]+)"?', invite.header("Proxy-Authorization") or ""))
    # RFC 2617 section 3.2.2.1 with qop=auth; SIPp signs the Request-URI (-auth_uri).
    assert fields["uri"] == invite.first_line.split()[1] == f"sip:service@127.0.0.1:{uas.sip_port}"
    ha1, ha2 = md5(f"trunk:{fields['realm']}:secret"), md5(f"INVITE:{fields['uri']}")
    nonce, nc, cnonce = fields["nonce"], fields["nc"], fields["cnonce"]
    assert fields["response"] == md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")


@pytest.mark.parametrize(("password", "registered"), [("secret", True), ("wrong", False)])
async def test_registrar_demands_the_right_password(
    tmp_path: Path, password: str, registered: bool
) -> None:
    registrar = Sipp("uas_registrar.xml", tmp_path / "uas", recv_timeout_ms=500)
    async with await registrar.start() as uas:
        # -nd: a 403 must not make the client send its default BYE.
        client = Sipp(
            "selftest/uac_register.xml",
            tmp_path / "uac",
            service="1001",
            auth=("1001", password),
            recv_timeout_ms=1000,
            extra_args=["-nd"],
        )
        result = await client.run(uas.target)
        served = await uas.wait(5)
    assert (served.successful, served.failed) == ((1, 0) if registered else (0, 1))
    answers = [m.first_line for m in result.received()]
    if registered:  # challenge, then 200 to the REGISTER, its refresh and the un-REGISTER
        result.assert_ok()
        assert answers == ["SIP/2.0 401 Unauthorized"] + ["SIP/2.0 200 OK"] * 3
        assert (
            result.received("SIP/2.0 200")[0].header("Contact")
            == f"<sip:1001@127.0.0.1:{client.sip_port}>"
        )
    else:
        assert answers[:2] == ["SIP/2.0 401 Unauthorized", "SIP/2.0 403 Forbidden"]


async def test_send_raw_gets_the_answer_to_a_handmade_request(tmp_path: Path) -> None:
    async with await Sipp("selftest/uas_options.xml", tmp_path / "uas").start() as uas:
        replies = await send_raw(
            uas.target, lambda port: sip_request("OPTIONS", uas.target, port), count=1, within=5
        )
    assert [status_of(r) for r in replies] == [200]
    assert b"Allow: INVITE" in replies[0]


def test_edge_cases_are_what_their_names_say() -> None:
    cases = edge_cases(("127.0.0.1", 5060))
    built = {name: case.build(40000) for name, case in cases.items()}
    for header in ("Via", "From", "To", "Call-ID", "CSeq"):
        assert f"\r\n{header}:".encode() not in built[f"missing {header}"]
        assert f"\r\n{header}:".encode() in built["unknown method"]
    assert len(built["over 16 KiB"]) > 16 * 1024 and built["unknown method"].startswith(b"FOO ")
    assert b"Content-Length: 9\r\n\r\nx" in built["content-length too big"]
    assert b"RTP/AVP 0" not in built["no common codec"] and b"m=audio" not in built["video only"]
    assert cases["garbage"].status is None and cases["over 16 KiB"].status == 513
    response = b"SIP/2.0 488 Not Acceptable Here\r\nTo: <sip:service@127.0.0.1:5060>;tag=x\r\n\r\n"
    ack = ack_for(built["video only"], response).decode()
    assert ack.startswith("ACK sip:service@127.0.0.1:5060 SIP/2.0\r\n") and ";tag=x" in ack
    assert "CSeq: 1 ACK" in ack and ";rport" in ack  # the INVITE's Via, branch included


async def test_baresip_hears_the_tone_sipp_echoes_and_hangs_up_at_end_of_file(
    tmp_path: Path,
) -> None:
    async with await Sipp("uas_answer.xml", tmp_path / "uas", rtp_echo=True).start() as uas:
        result = await Baresip(tmp_path / "bs", tone_seconds=2.0).call(
            f"sip:service@127.0.0.1:{uas.sip_port}"
        )
        (await uas.wait(5)).assert_ok()  # baresip's BYE ended the call
    assert not result.timed_out and "CALL_ESTABLISHED" in result.types()
    assert (
        result.events[-1]["type"] == "CALL_CLOSED" and result.events[-1]["param"] == "end of file"
    )
    heard = analyse_wav(result.received[0])
    assert heard.dominant_hz == pytest.approx(440, abs=10)
    assert 1.5 <= heard.voiced_seconds <= 2.1 and heard.rms > 3000
    offer = (await uas.stop()).received("INVITE")[0]
    assert "c=IN IP4 127.0.0.1" in offer.body  # net_interface keeps the SDP on loopback


async def test_baresip_sends_rfc4733_digits(tmp_path: Path) -> None:
    sink = RtpSink()
    async with await Sipp(
        "uas_answer.xml", tmp_path / "uas", keys={"rtp_port": str(sink.port)}
    ).start() as uas:
        caller = Baresip(tmp_path / "bs", tone_seconds=2.0, digits="19#")
        result = await caller.call(f"sip:service@127.0.0.1:{uas.sip_port}")
    datagrams = sink.drain()
    assert digits_in(datagrams, 101) == "19#"
    assert sum(payload_type(d) == 0 for d in datagrams) >= 90  # and its audio, PCMU
    assert not result.timed_out


async def test_baresip_follows_a_refer(tmp_path: Path) -> None:
    async with await Sipp("uas_answer.xml", tmp_path / "target").start() as target:
        refer_to = f"sip:agent@127.0.0.1:{target.sip_port}"
        transferor = Sipp(
            "selftest/uas_refer_then_bye.xml",
            tmp_path / "uas",
            keys={"refer_to": refer_to},
            extra_args=["-aa"],  # answers baresip's back-to-back NOTIFYs
        )
        async with await transferor.start() as uas:
            wav = write_wav(tmp_path / "tone.wav", tone_pcm16(seconds=2.5))
            caller = Baresip(tmp_path / "bs", audio=wav)
            result = await caller.call(f"sip:service@127.0.0.1:{uas.sip_port}")
            served = await uas.wait(5)
        (await target.wait(5)).assert_ok()  # the new call, hung up by baresip at end of file
    served.assert_ok()
    assert result.types().count("CALL_ESTABLISHED") == 2 and "TRANSFER" in result.types()
    invites = (await target.stop()).received("INVITE")
    assert [m.first_line for m in invites] == [f"INVITE {refer_to} SIP/2.0"]
    frags = [m.body.strip() for m in served.received("NOTIFY")]
    assert frags[0] == "SIP/2.0 100 Trying" and frags[-1] == "SIP/2.0 200 OK"  # RFC 3515 2.4.5
