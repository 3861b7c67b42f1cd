"""Calls over SIP through the SIP adapter, on real sockets (127.0.0.1): our SIP caller against the
gateway's UAS, a real CallHost and the local model. The greeting is heard as μ-law RTP, the
caller's audio reaches the model untouched, DTMF, hang-up both ways with a Reason, busy → 503,
a bad offer → 488, hold, a transfer by REFER (done, and failed: the agent is told)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from services.config import SipSettings
from services.loadgen.audio import tone_ulaw
from services.loadgen.sip_caller import SipCaller
from tests.integration.test_gateway import running_gateway, until
from tests.wire import WireValidator

pytestmark = pytest.mark.integration


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sip(**kw: object) -> SipSettings:
    return SipSettings(port=free_udp_port(), rtp_ports=(31000, 31999), **kw)  # type: ignore[arg-type]


def appended(wire: WireValidator) -> list[str]:
    return [e["audio"] for e in wire.client_log if e["type"] == "input_audio_buffer.append"]


async def test_a_sip_call_hears_the_greeting_and_is_heard_untouched(wire: WireValidator) -> None:
    settings = sip()
    async with running_gateway(wire, sip=settings) as (_base, host):
        caller = SipCaller(("127.0.0.1", settings.port or 0))
        assert await caller.dial() == 200
        assert b"m=audio" in caller.answer and b"PCMU" in caller.answer
        await until(lambda: caller.heard_ms >= 500, "half a second of the greeting")
        [session] = host.calls.values()
        assert session.spec.transport == "sip" and session.spec.audio_format == "audio/pcmu"
        before = len(appended(wire))
        caller.speak(tone_ulaw(400))
        await until(lambda: len(appended(wire)) > before + 5, "the caller's audio at the model")
        await caller.send_dtmf("7")
        await until(lambda: any(k == "dtmf" for k, _c, _f in host._events.events), "the dtmf event")
        await caller.hang_up()
        await until(lambda: not host.calls, "the call ended")


async def test_busy_is_503_with_retry_after_and_a_bad_offer_488(wire: WireValidator) -> None:
    settings = sip()
    async with running_gateway(wire, sip=settings, capacity=1) as (_base, host):
        first = SipCaller(("127.0.0.1", settings.port or 0))
        assert await first.dial() == 200
        second = SipCaller(("127.0.0.1", settings.port or 0))
        assert await second.dial() == 503
        await second.close()
        await first.hang_up()
        await until(lambda: not host.calls, "the first call ended")
        video = SipCaller(("127.0.0.1", settings.port or 0))
        video._offer = lambda: (  # type: ignore[method-assign]
            b"v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            b"m=video 5000 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n"
        )
        assert await video.dial() == 488
        await video.close()


async def test_the_agent_hangs_up_with_a_bye_that_says_why(wire: WireValidator) -> None:
    settings = sip()
    scenario = {"steps": [{"tool": {"name": "hang_up", "arguments": {}}, "then": "Goodbye."}]}
    async with running_gateway(wire, sip=settings, scenario=_write(scenario)) as (_b, host):
        caller = SipCaller(("127.0.0.1", settings.port or 0))
        assert await caller.dial() == 200
        await asyncio.sleep(0.5)
        caller.speak(tone_ulaw(600))
        await until(lambda: caller.closed_reason is not None, "the agent's BYE")
        assert caller.closed_reason == "agent_hangup"
        await until(lambda: not host.calls, "the call ended")
        await caller.close()


def _write(scenario: dict[str, object]) -> str:
    import json
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(scenario, f)
    return f.name


TRANSFER = {
    "steps": [
        {
            "tool": {"name": "transfer_to_human", "arguments": {"department": "billing"}},
            "then": "Transferring you to billing.",
        }
    ]
}


@pytest.mark.parametrize("outcome", [200, 486])
async def test_a_transfer_is_a_refer_then_a_bye_or_the_agent_is_told_it_failed(
    wire: WireValidator, outcome: int
) -> None:
    settings = sip()
    async with running_gateway(wire, sip=settings, scenario=_write(TRANSFER)) as (_b, host):
        caller = SipCaller(("127.0.0.1", settings.port or 0))
        caller.refer_status = outcome
        assert await caller.dial() == 200
        await asyncio.sleep(0.3)
        caller.speak(tone_ulaw(600))
        await until(lambda: caller.refer_to is not None, "the REFER")
        # The demo agent's queue, at the PBX the call came from (no CALLRAY_SIP_TRANSFER_TARGETS).
        assert caller.refer_to == f"sip:billing@127.0.0.1:{caller.sip_port}"
        if outcome == 200:
            await until(lambda: caller.closed_reason is not None, "the BYE after the transfer")
            assert caller.closed_reason == "transferred"
            await until(lambda: not host.calls, "the call ended")
        else:
            await until(
                lambda: any("did not go through" in str(e) for e in wire.client_log),
                "the agent told the transfer failed",
            )
            assert caller.closed_reason is None and host.calls  # the call goes on
            await caller.hang_up()
            await until(lambda: not host.calls, "the call ended")
        await caller.close()


async def test_a_caller_whose_rtp_stops_is_taken_for_gone(wire: WireValidator) -> None:
    # A trunk that died without a BYE: no RTP for CALLRAY_SIP_RTP_TIMEOUT_S ends the call.
    settings = sip(rtp_timeout_s=1.0)
    async with running_gateway(wire, sip=settings) as (_base, host):
        caller = SipCaller(("127.0.0.1", settings.port or 0))
        assert await caller.dial() == 200
        await until(lambda: bool(host.calls), "the call up")
        caller._remote_rtp = None  # its RTP stops; no BYE comes
        await until(lambda: not host.calls, "the call ended by the RTP watchdog")
        ended = [f for k, _c, f in host._events.events if k == "call.ended"]
        assert [f["reason"] for f in ended] == ["rtp_timeout"]
        assert caller.closed_reason == "rtp_timeout"  # and the caller got a BYE saying why
        await caller.close()
