"""The local model's SIP front on real sockets (127.0.0.1): a caller dials it as it would dial
OpenAI's SIP connector; each call is announced by a signed webhook to a small stand-in, and the
test controls it over the Calls REST API as a client of the connector does. Accept → 200 OK
with a PCMU answer → the greeting as μ-law RTP, the caller's audio and digits into the session;
reject, CANCEL (by SIPp), no accept in time (480), REFER, hang-up, the caller's BYE; and SIPp's
μ-law caller, answered by a stand-in that accepts every call at once."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from services.config import LocalModelSettings, Secret
from services.loadgen.audio import tone_ulaw
from services.loadgen.sip_caller import SipCaller
from services.localmodel.server import LocalModelServer
from services.localmodel.sip_front import SipFrontSettings
from services.localmodel.sip_session import SipSession
from services.localmodel.webhook_sender import WebhookSender
from services.realtime.transports.sip import CallGone, SipCallControl
from tests.conftest import TIMEOUT_FACTOR
from tests.integration.test_gateway import until
from tests.sip_peers import Sipp
from tests.virtual_time import FakeClock
from tests.wire import WireValidator

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"callray-sip-front-test-secret!!!").decode()
KEY = "sk-model-" + "7" * 24
ACCEPT = {"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcmu"}}}}
PCMA_ONLY = (
    b"v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
)
OnCall = Callable[[str], Awaitable[None]]


@dataclass
class Front:
    model: LocalModelServer
    http: aiohttp.ClientSession
    control: SipCallControl
    hooks: list[dict[str, Any]] = field(default_factory=list)  # the webhooks' data, in order
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # sideband's, per call
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def target(self) -> tuple[str, int]:
        return ("127.0.0.1", self.model.sip_port or 0)

    async def next_call(self, seen: int = 0) -> str:
        await until(lambda: len(self.hooks) > seen, "the webhook")
        call_id: str = self.hooks[seen]["call_id"]
        return call_id

    async def greet(self, call_id: str) -> None:
        """Attach a sideband, as the connector's client does, and ask for the greeting."""
        url = f"{self.model.url}?call_id={call_id}"
        ws = await self.http.ws_connect(url, headers={"Authorization": f"Bearer {KEY}"})
        await ws.send_json({"type": "response.create"})
        events = self.events.setdefault(call_id, [])

        async def read() -> None:
            async for message in ws:
                events.append(json.loads(message.data))

        self.tasks.append(asyncio.ensure_future(read()))

    def sideband_saw(self, call_id: str, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events.get(call_id, []) if e["type"] == kind]


@contextlib.asynccontextmanager
async def webhook_stand_in(
    on_call: Callable[[dict[str, Any]], None],
) -> AsyncIterator[str]:
    """An aiohttp app that takes the connector's webhooks (``on_call`` gets each one's data)
    and answers 200; yields its URL."""

    async def hook(request: web.Request) -> web.Response:
        on_call((await request.json())["data"])
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def front(
    wire: WireValidator, *, on_call: OnCall | None = None, timers: FakeClock | None = None
) -> AsyncIterator[Front]:
    settings = LocalModelSettings(port=0, speed=4.0, api_key=Secret(KEY))
    async with (
        LocalModelServer(settings, observer=wire, timers=timers, sip=SipFrontSettings()) as model,
        aiohttp.ClientSession() as http,
    ):
        control = SipCallControl(f"http://127.0.0.1:{model.port}/v1", Secret(KEY))
        f = Front(model, http, control)

        def announced(data: dict[str, Any]) -> None:
            f.hooks.append(data)
            if on_call is not None:
                f.tasks.append(asyncio.ensure_future(on_call(data["call_id"])))

        async with webhook_stand_in(announced) as url:
            model.sip.webhook = WebhookSender(url, Secret(SECRET))
            try:
                yield f
            finally:
                for task in f.tasks:
                    task.cancel()
                await control.close()


async def answered(f: Front) -> tuple[SipCaller, str]:
    """A caller whose call the test accepted, greeted."""
    caller = SipCaller(f.target)
    dialing = asyncio.ensure_future(caller.dial())
    call_id = await f.next_call(len(f.hooks))
    await f.control.accept(call_id, ACCEPT)
    assert await dialing == 200
    await f.greet(call_id)
    return caller, call_id


# ----- a call, accepted ---------------------------------------------------------------------------


async def test_an_accepted_call_is_answered_pcmu_greets_the_caller_and_hears_them(
    wire: WireValidator,
) -> None:
    async with front(wire) as f:
        caller = SipCaller(f.target)
        dialing = asyncio.ensure_future(caller.dial())
        call_id = await f.next_call()
        # Announced with the INVITE's headers, in order; ringing until the accept.
        assert caller._invite is not None
        sent = [(n, v) for n, v in caller._invite.headers if n != "Content-Length"]
        announced = [(h["name"], h["value"]) for h in f.hooks[0]["sip_headers"]]
        assert [h for h in announced if h[0] != "Content-Length"] == sent
        assert f.model.sip.state(call_id) == "pending" and not dialing.done()
        assert caller.status == 180
        await f.control.accept(call_id, ACCEPT)
        assert await dialing == 200
        assert b"m=audio" in caller.answer and b"RTP/AVP 0 " in caller.answer
        assert b"PCMA" not in caller.answer
        await f.greet(call_id)
        await until(lambda: caller.heard_ms >= 500, "half a second of the greeting as μ-law RTP")
        session = f.model.sip.session(call_id)
        assert session is not None and f.sideband_saw(call_id, "output_audio_buffer.started")
        caller.speak(tone_ulaw(400))
        await until(lambda: session.frames_in >= 25, "the caller's audio in the session")
        await caller.send_dtmf("5")
        await until(
            lambda: bool(f.sideband_saw(call_id, "input_audio_buffer.dtmf_event_received")),
            "the digit at the sideband",
        )
        assert f.sideband_saw(call_id, "input_audio_buffer.dtmf_event_received")[0]["event"] == "5"
        # The caller's BYE ends the registry's call and the session.
        await caller.hang_up()
        await until(lambda: f.model.sip.state(call_id) == "ended", "the call's end")
        assert session.end_reason == "caller hung up"
        assert f.model.sip_front is not None and not f.model.sip_front.calls


async def test_a_rejected_call_gets_the_status_the_client_chose(wire: WireValidator) -> None:
    async with front(wire) as f:
        for status, expected in [(486, 486), (None, 603)]:
            caller = SipCaller(f.target)
            dialing = asyncio.ensure_future(caller.dial())
            call_id = await f.next_call(len(f.hooks))
            if status is None:
                await f.control.reject(call_id)
            else:
                await f.control.reject(call_id, status)
            assert await dialing == expected
            assert f.model.sip.state(call_id) == "rejected"
            await caller.close()


async def test_an_offer_without_pcmu_is_488_and_announces_nothing(wire: WireValidator) -> None:
    async with front(wire) as f:
        caller = SipCaller(f.target)
        caller._offer = lambda: PCMA_ONLY  # type: ignore[method-assign]
        assert await caller.dial() == 488
        await caller.close()
        assert f.hooks == [] and not f.model.sip.calls


async def test_a_late_offer_gets_ours_and_the_ack_carries_the_answer(wire: WireValidator) -> None:
    async with front(wire) as f:
        caller = SipCaller(f.target, late_offer=True)
        dialing = asyncio.ensure_future(caller.dial())
        call_id = await f.next_call()
        await f.control.accept(call_id, ACCEPT)
        assert await dialing == 200
        assert b"a=rtpmap:0 PCMU/8000" in caller.answer
        await f.greet(call_id)
        await until(lambda: caller.heard_ms >= 300, "the greeting")
        await caller.hang_up()
        await until(lambda: f.model.sip.state(call_id) == "ended", "the call's end")


# ----- the ways a pending call ends -------------------------------------------------------------


async def test_cancel_before_the_accept_is_487_and_a_later_accept_404(
    wire: WireValidator, tmp_path: Path
) -> None:
    async with front(wire) as f:
        result = await Sipp("uac_cancel.xml", tmp_path).run(f.target)
        result.assert_ok()
        assert result.received("SIP/2.0 487") and result.received("SIP/2.0 180")
        call_id = await f.next_call()
        assert f.model.sip.state(call_id) == "cancelled"
        with pytest.raises(CallGone):
            await f.control.accept(call_id, ACCEPT)
        assert f.model.sip_front is not None and not f.model.sip_front.calls


async def test_a_call_not_accepted_in_time_gets_480(wire: WireValidator) -> None:
    clock = FakeClock()
    async with front(wire, timers=clock) as f:
        caller = SipCaller(f.target)
        dialing = asyncio.ensure_future(caller.dial())
        call_id = await f.next_call()
        clock.advance(9.9)
        assert f.model.sip.state(call_id) == "pending"
        clock.advance(0.2)  # 10 s without an accept
        assert await dialing == 480
        assert f.model.sip.state(call_id) == "timed_out"
        with pytest.raises(CallGone):
            await f.control.accept(call_id, ACCEPT)
        await caller.close()


# ----- call control of an answered call ----------------------------------------------------------


@pytest.mark.parametrize("outcome", [200, 486])
async def test_refer_sends_a_refer_and_a_transfer_done_ends_the_call(
    wire: WireValidator, outcome: int
) -> None:
    async with front(wire) as f:
        caller, call_id = await answered(f)
        caller.refer_status = outcome
        await f.control.refer(call_id, "tel:+14155550123")
        await until(lambda: caller.refer_to is not None, "the REFER")
        assert caller.refer_to == "tel:+14155550123"
        if outcome == 200:  # the transferor leaves once the caller reached the target
            await until(lambda: caller.closed_reason is not None, "the BYE after the transfer")
            assert f.model.sip.state(call_id) == "ended"
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.3):
                    await until(lambda: caller.closed_reason is not None, "no BYE")
            assert caller.closed_reason is None and f.model.sip.state(call_id) == "accepted"
        await caller.hang_up()


async def test_hangup_sends_bye_and_ends_the_session(wire: WireValidator) -> None:
    async with front(wire) as f:
        caller, call_id = await answered(f)
        session = f.model.sip.session(call_id)
        await f.control.hangup(call_id)
        await until(lambda: caller.closed_reason is not None, "the BYE")
        assert f.model.sip.state(call_id) == "ended"
        assert session is not None and session.ended.is_set()
        with pytest.raises(CallGone):
            await f.control.hangup(call_id)
        await caller.close()


async def test_stopping_the_model_hangs_up_its_calls(wire: WireValidator) -> None:
    async with front(wire) as f:
        caller, _ = await answered(f)
        await f.model.stop()
        await until(lambda: caller.closed_reason is not None, "the BYE")
        await caller.close()


# ----- a peer we did not write ----------------------------------------------------------------


async def test_sipps_ulaw_caller_is_answered_and_heard(wire: WireValidator, tmp_path: Path) -> None:
    sessions: list[SipSession] = []

    async def accept_and_greet(call_id: str) -> None:
        await f.control.accept(call_id, ACCEPT)
        session = f.model.sip.session(call_id)
        assert session is not None
        sessions.append(session)
        await f.greet(call_id)

    async with front(wire, on_call=accept_and_greet) as f:
        sipp = Sipp("uac_rtp_stream.xml", tmp_path, duration_ms=3500)
        result = await sipp.run(f.target)
        result.assert_ok()  # its check: the 200's answer chose PCMU
        (call_id,) = [h["call_id"] for h in f.hooks]
        assert f.model.sip.state(call_id) == "ended"  # its BYE
        (ok,) = result.received("SIP/2.0 200 OK")[:1]
        assert "a=rtpmap:0 PCMU/8000" in ok.body
        # Its 3 s tone reached the session through the jitter buffer, and the model took it for
        # speech (which cut the greeting short: a barge-in).
        assert sessions[0].frames_in >= 140
        assert f.sideband_saw(call_id, "input_audio_buffer.speech_started")


@pytest.mark.parametrize("scenario", ["uac_hold_resume.xml", "uac_session_timer.xml"])
async def test_sipp_holds_resumes_and_refreshes_an_answered_call(
    wire: WireValidator, tmp_path: Path, scenario: str
) -> None:
    async def accept(call_id: str) -> None:
        await f.control.accept(call_id, ACCEPT)

    async with front(wire, on_call=accept) as f:
        result = await Sipp(scenario, tmp_path, duration_ms=300).run(f.target)
        result.assert_ok()  # its checks: the answers' directions, Session-Expires kept
        (call_id,) = [h["call_id"] for h in f.hooks]
        assert f.model.sip.state(call_id) == "ended"


# ----- callray model --sip-port ------------------------------------------------------------------


async def test_callray_model_takes_calls_on_its_sip_port() -> None:
    from tests.integration.test_cli_model import start_model

    hooks: list[dict[str, Any]] = []
    async with webhook_stand_in(hooks.append) as url:
        proc = await start_model(
            "--sip-port", "0", "--webhook-url", url, "--webhook-secret", SECRET
        )
        caller: SipCaller | None = None
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(20 * TIMEOUT_FACTOR):
                banner = b"".join([await proc.stdout.readline() for _ in range(6)]).decode()
            sip = re.search(r"SIP: sip:\S+@127\.0\.0\.1:(\d+) \(UDP\)", banner)
            http = re.search(r"ws://127\.0\.0\.1:(\d+)/v1/realtime", banner)
            assert sip and http, banner
            caller = SipCaller(("127.0.0.1", int(sip.group(1))))
            dialing = asyncio.ensure_future(caller.dial())
            await until(lambda: bool(hooks), "the webhook")
            control = SipCallControl(f"http://127.0.0.1:{http.group(1)}/v1", Secret("sk-any"))
            try:
                await control.reject(hooks[0]["call_id"], 486)
            finally:
                await control.close()
            assert await dialing == 486
        finally:
            if caller is not None:
                await caller.close()
            proc.send_signal(signal.SIGINT)
            async with asyncio.timeout(20 * TIMEOUT_FACTOR):
                await proc.wait()
    bad = await start_model("--sip-port", "70000")
    async with asyncio.timeout(20 * TIMEOUT_FACTOR):
        _, err = await bad.communicate()
    assert bad.returncode == 2 and b"--sip-port must be a UDP port" in err
