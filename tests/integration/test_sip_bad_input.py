"""Bad SIP and RTP input at the SIP ingress, on real sockets, while a call is up: each gets its
answer (or is dropped and counted) and the live call keeps its audio both ways."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from services.config import SipSettings
from services.loadgen.audio import tone_ulaw
from services.loadgen.sip_caller import SipCaller
from services.observability import metrics
from services.telephony.rtp import RtpSender
from tests.integration.test_gateway import running_gateway, until
from tests.integration.test_sip_ingress import appended, free_udp_port
from tests.wire import WireValidator

pytestmark = pytest.mark.integration

GOOD_HEADERS = (
    "Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{branch};rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:bad@127.0.0.1>;tag=b1\r\n"
    "To: <sip:agent@127.0.0.1>\r\n"
    "Call-ID: bad-{branch}\r\n"
    "CSeq: 1 {method}\r\n"
    "Contact: <sip:bad@127.0.0.1:{port}>\r\n"
)
VIDEO_ONLY = (
    "v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=video 5000 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n"
)


def request(method: str, port: int, branch: str, extra: str = "", body: str = "") -> bytes:
    head = f"{method} sip:agent@127.0.0.1 SIP/2.0\r\n" + GOOD_HEADERS.format(
        port=port, branch=branch, method=method
    )
    if body:
        head += "Content-Type: application/sdp\r\n"
    return (head + extra + f"Content-Length: {len(body)}\r\n\r\n" + body).encode()


class Probe:
    """A raw UDP peer: send a datagram, read the final status it gets back (or None)."""

    def __init__(self, target: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.target = ("127.0.0.1", target)

    async def status(self, data: bytes, wait_s: float = 1.0) -> int | None:
        loop = asyncio.get_running_loop()
        await loop.sock_sendto(self.sock, data, self.target)
        try:
            async with asyncio.timeout(wait_s):
                while True:
                    reply = await loop.sock_recv(self.sock, 65536)
                    code = int(reply.split(b" ", 2)[1])
                    if code >= 200:
                        return code
        except TimeoutError:
            return None


@pytest.fixture
async def live(wire: WireValidator) -> AsyncIterator[tuple[SipCaller, Probe, WireValidator]]:
    settings = SipSettings(port=free_udp_port(), rtp_ports=(33000, 33999))
    async with running_gateway(wire, sip=settings, capacity=4) as (_base, host):
        caller = SipCaller(("127.0.0.1", settings.port or 0))
        assert await caller.dial() == 200
        await until(lambda: caller.heard_ms > 200, "the greeting")
        probe = Probe(settings.port or 0)
        yield caller, probe, wire
        probe.sock.close()
        await caller.hang_up()
        await until(lambda: not host.calls, "the call ended")


async def still_up(caller: SipCaller, wire: WireValidator) -> None:
    """The live call: audio reaches the model and comes back."""
    heard, sent = caller.heard_ms, len(appended(wire))
    caller.speak(tone_ulaw(200))
    await until(lambda: len(appended(wire)) > sent, "the live call's audio at the model")
    await until(lambda: caller.heard_ms > heard or caller.received, "the live call hears on")
    assert caller.closed_reason is None


async def test_each_bad_message_gets_its_answer_and_the_live_call_goes_on(
    live: tuple[SipCaller, Probe, WireValidator],
) -> None:
    caller, probe, wire = live
    p = probe.port
    cases: list[tuple[bytes, int | None]] = [
        (b"\x00\x01garbage that is not SIP", None),  # dropped, no answer
        (request("INVITE", p, "1").replace(b"Call-ID: bad-1\r\n", b""), 400),
        (request("OPTIONS", p, "2").replace(b"Content-Length: 0", b"Content-Length: 99"), 400),
        (request("INVITE", p, "3", body="x" * 17000), 513),
        (request("FROB", p, "4").replace(b"CSeq: 1 FROB", b"CSeq: 1 FROB"), 501),
        (request("INVITE", p, "5", extra="Require: magic\r\n"), 420),
        (request("INVITE", p, "6", body=VIDEO_ONLY), 488),
        (
            request("BYE", p, "7").replace(
                b"To: <sip:agent@127.0.0.1>", b"To: <sip:agent@127.0.0.1>;tag=nope"
            ),
            481,
        ),
        (request("CANCEL", p, "8"), 481),
    ]
    for data, expected in cases:
        assert await probe.status(data, wait_s=0.5 if expected is None else 2.0) == expected, data[
            :40
        ]
    await still_up(caller, wire)


async def test_an_invite_retransmission_is_one_call(
    live: tuple[SipCaller, Probe, WireValidator],
) -> None:
    caller, probe, wire = live
    invite = request("INVITE", probe.port, "r1", body=VIDEO_ONLY)
    first = await probe.status(invite)
    again = await probe.status(invite)  # the last response, resent by the transaction
    assert first == again == 488
    await still_up(caller, wire)


async def test_bad_rtp_and_a_foreign_source_are_dropped_and_counted(
    live: tuple[SipCaller, Probe, WireValidator],
) -> None:
    caller, _probe, wire = live
    before = dict(_rtp_drops())
    answer = caller.answer.decode()
    port = int(answer.split("m=audio ")[1].split()[0])
    intruder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    intruder.bind(("127.0.0.1", 0))
    for _ in range(200):  # a foreign source: dropped unparsed
        intruder.sendto(RtpSender(0).packet(b"\x00" * 160), ("127.0.0.1", port))
    await asyncio.sleep(1.5)  # counted into the metrics once a second
    drops = _rtp_drops()
    assert drops.get("source", 0) - before.get("source", 0) >= 200
    intruder.close()
    await still_up(caller, wire)


def _rtp_drops() -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text, _ = metrics.render()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text.decode()):
        if family.name == "callray_rtp_dropped":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[sample.labels["reason"]] = sample.value
    return out
