"""The gateway on a real socket with a real CallHost and the local model, without Ray: Twilio
webhook checks and every kind of bad media-stream input; other calls never notice."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets
from twilio.request_validator import RequestValidator

from services.agents.registry import load_agents
from services.config import GatewaySettings, LocalModelSettings, ModelSettings, Secret
from services.gateway.app import Gateway
from services.gateway.direct_calls import model_access
from services.localmodel.server import LocalModelServer
from services.media.channel_server import MediaChannelServer
from services.media.vocabulary import CallSpec
from services.realtime.tools import InProcessToolRunner
from services.runtime.events import ListEventSink
from services.runtime.host import CallHost
from services.runtime.router import RouterCore
from services.telephony.stream_tokens import StreamTokens
from services.webrtc import ice
from tests.conftest import TIMEOUT_FACTOR
from tests.twilio_caller import TwilioCaller
from tests.twilio_rest_stand_in import TwilioRestStandIn
from tests.wire import WireValidator

pytestmark = pytest.mark.integration

AUTH_TOKEN = "test-auth-token-123"
WAIT = 15 * TIMEOUT_FACTOR


class LocalHost:
    """A CallHost in this process behind its real media channel, seen through the ports the
    gateway (``locate``) and the router (``open_call``, ``ping``, ...) use."""

    def __init__(self, host: CallHost) -> None:
        self.host = host
        self.channel = MediaChannelServer(host)

    async def start(self) -> None:
        await self.channel.start()

    async def stop(self) -> None:
        await self.channel.stop()

    async def locate(self) -> tuple[str, str]:
        return self.channel.url, self.channel.key

    async def open_call(self, spec: CallSpec) -> float:
        return await self.host.open_call(spec)

    async def ping(self, limit_s: float) -> int:
        return len(self.host.calls)

    async def shutdown(self, limit_s: float) -> None:
        await self.host.close_all("shutdown")

    def kill(self) -> None:
        return None


async def until(predicate: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(WAIT):
        while not predicate():
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running_gateway(
    wire: WireValidator,
    *,
    scenario: str | None = None,
    api_base: str | None = None,
    mode: str = "scripted",
    capacity: int = 3,
    model_transport: str = "websocket",
    direct: bool = False,
    model_key: str = "",
    **gateway_options: Any,
) -> AsyncIterator[tuple[str, CallHost]]:
    settings = LocalModelSettings(
        port=0, speed=4.0, scenario=scenario, mode=mode, api_key=Secret(model_key)
    )
    # Over WebRTC (to the model, or a browser calling it directly) both ends gather ICE on
    # loopback (the hook is process-wide).
    ice_addresses = ("127.0.0.1",) if model_transport == "webrtc" or direct else ()
    if ice_addresses:
        ice.install(ice_addresses)
    async with LocalModelServer(settings, observer=wire, ice_addresses=ice_addresses) as model:
        router = RouterCore(cluster_capacity=capacity, events=ListEventSink())
        model_settings = ModelSettings(
            Secret(model_key), None, "gpt-realtime", transport=model_transport
        )
        host = CallHost(
            "h1",
            model=model_settings,
            model_url=model.url,
            agents=load_agents(),
            tool_runner=InProcessToolRunner(),
            events=ListEventSink(),
            capacity=capacity,
            on_call_end=router.release,
        )
        local = LocalHost(host)
        await local.start()
        router.register_host("h1", local, host, capacity, os.getpid())
        gw = Gateway(
            ingress_id="i1",
            settings=GatewaySettings(
                twilio_auth_token=Secret(AUTH_TOKEN),
                twilio_account_sid="AC" + "0" * 32 if api_base else "",
                twilio_api_base_url=api_base,
                **gateway_options,
            ),
            router=router,
            locate_channel=lambda handle: local.locate,
            tokens=StreamTokens(b"0123456789abcdef0123456789abcdef", 30.0),
            model_access=model_access(model_settings, model.url, None, 60.0) if direct else None,
        )
        port = await gw.listen("127.0.0.1", 0)
        try:
            yield f"http://127.0.0.1:{port}", host
        finally:
            await gw.stop()
            await host.close_all("test_end")
            await local.stop()


@pytest.fixture
async def gateway(wire: WireValidator) -> AsyncIterator[tuple[str, CallHost]]:
    async with running_gateway(wire) as running:
        yield running


def signed(url: str, params: dict[str, str]) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(AUTH_TOKEN).compute_signature(url, params)}


class SignedCaller(TwilioCaller):
    """A caller whose webhook requests carry a valid X-Twilio-Signature."""

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url, sign=signed)


async def test_forged_or_missing_signature_is_refused(gateway: tuple[str, CallHost]) -> None:
    base, _ = gateway
    form = {"CallSid": "CA" + "1" * 32, "From": "+1555", "To": "+1666"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/twilio/voice", data=form) as response:
            assert response.status == 403
        bad = {"X-Twilio-Signature": "Zm9yZ2Vk"}
        async with http.post(f"{base}/twilio/voice", data=form, headers=bad) as response:
            assert response.status == 403
        good = signed(f"{base}/twilio/voice", form)
        async with http.post(f"{base}/twilio/voice", data=form, headers=good) as response:
            assert response.status == 200
            assert "<Stream" in await response.text()


async def raw_stream(base: str) -> Any:
    return await websockets.connect(base.replace("http", "ws") + "/twilio/media")


async def closed_with(ws: Any) -> tuple[int, str]:
    async with asyncio.timeout(WAIT):
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None
            return exc.rcvd.code, exc.rcvd.reason


def start_frame(call_sid: str, token: str) -> str:
    sid = "MZ" + "2" * 32
    return json.dumps(
        {
            "event": "start",
            "streamSid": sid,
            "start": {
                "streamSid": sid,
                "accountSid": "AC" + "0" * 32,
                "callSid": call_sid,
                "tracks": ["inbound"],
                "customParameters": {"token": token},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    )


async def test_bad_streams_are_closed_with_a_reason_and_a_live_call_is_untouched(
    gateway: tuple[str, CallHost],
) -> None:
    base, host = gateway
    live = SignedCaller(base)
    await live.dial()
    await until(lambda: live.received_audio > 8 * 300, "the live call's greeting")

    cases: list[tuple[Any, str]] = [
        ("this is not json", "JSON"),
        (json.dumps({"event": "media", "streamSid": "MZ1", "media": {"payload": "AAAA"}}), "start"),
        (start_frame("CA" + "3" * 32, "forged-token"), "token"),
    ]
    for frame, problem in cases:
        ws = await raw_stream(base)
        await ws.send(frame)
        code, reason = await closed_with(ws)
        assert code == 1008 and problem.lower() in reason.lower(), (frame, reason)

    # A token is single-use and bound to its call: a replay is refused.
    replayer = SignedCaller(base)
    twiml = await replayer.dial()
    token = twiml.split('name="token" value="')[1].split('"')[0]
    ws = await raw_stream(base)
    await ws.send(start_frame(replayer.call_sid, token))
    code, reason = await closed_with(ws)
    assert (code == 1008 and "used" in reason.lower()) or "replay" in reason.lower(), reason
    await replayer.hang_up()

    # A 1 MB message is refused by the socket layer with "message too big".
    ws = await raw_stream(base)
    await ws.send("x" * (1024 * 1024))
    code, _reason = await closed_with(ws)
    assert code == 1009

    # An unknown event is ignored; the call goes on.
    before = live.received_audio
    await live._send({"event": "brand_new_event", "streamSid": live.stream_sid})
    await until(lambda: live.received_audio > before or live.played_audio > 0, "more audio")
    assert live.closed_reason is None and live.call_sid in host.calls
    await live.hang_up()
    await until(lambda: live.call_sid not in host.calls, "the live call's end")


async def test_dropped_socket_ends_only_that_call_and_full_host_plays_busy(
    gateway: tuple[str, CallHost],
) -> None:
    base, host = gateway
    callers = [SignedCaller(base) for _ in range(3)]
    for caller in callers:
        await caller.dial()
    await until(lambda: len(host.calls) == 3, "three calls")
    # The cap is 3: a fourth caller hears the busy tone and the stream closes.
    busy = SignedCaller(base)
    await busy.dial()
    await until(lambda: busy.closed_reason is not None, "the busy close")
    assert busy.closed_reason == "busy" and busy.received_audio >= 8 * 1000
    # Drop one socket without a stop message: its call ends, the others go on.
    await callers[0].close()
    await until(lambda: callers[0].call_sid not in host.calls, "the dropped call's end")
    assert {c.call_sid for c in callers[1:]} <= set(host.calls)
    received = callers[1].received_audio
    await until(
        lambda: callers[1].received_audio > received or callers[1].played_audio > 0, "audio"
    )
    for caller in callers[1:]:
        await caller.hang_up()


async def test_transfer_tool_redirects_the_call_through_twilio_rest(
    wire: WireValidator, tmp_path: Path
) -> None:
    """The model calls transfer_to_human; the gateway asks Twilio's REST API (a local stand-in)
    to <Dial> the queue, then closes the stream."""
    twilio_api = TwilioRestStandIn()
    await twilio_api.start()
    updates = twilio_api.updates
    scenario = tmp_path / "transfer.json"
    scenario.write_text(
        json.dumps(
            {
                "steps": [
                    {
                        "tool": {
                            "name": "transfer_to_human",
                            "arguments": {"department": "billing"},
                        },
                        "then": "Transferring you to billing.",
                    }
                ]
            }
        )
    )
    try:
        async with running_gateway(wire, scenario=str(scenario), api_base=twilio_api.base_url) as (
            base,
            host,
        ):
            caller = SignedCaller(base)
            await caller.dial()
            await until(lambda: caller.closed_reason is not None, "the transfer")
            assert caller.closed_reason == "transferred"
            path, form = updates[0]
            assert path.endswith(f"/Calls/{caller.call_sid}.json")
            assert "<Dial><Queue>billing</Queue></Dial>" in form["Twiml"]
            await until(lambda: caller.call_sid not in host.calls, "the session's end")
            await caller.close()
    finally:
        await twilio_api.close()


async def test_load_generator_against_the_gateway_in_echo_mode(wire: WireValidator) -> None:
    """`callray loadtest`'s callers through the real gateway: nothing lost, echoes measured,
    barge-ins cleared."""
    from services.loadgen import LoadOptions, run_load

    async with running_gateway(wire, mode="echo", capacity=10) as (base, host):
        report = await run_load(
            LoadOptions(
                base_url=base,
                calls=8,
                ramp_s=0.5,
                duration_s=3.0,
                barge_in_rate=0.5,
                auth_token=Secret(AUTH_TOKEN),
                seed=1,
            )
        )
        await until(lambda: not host.calls, "every call's end")
    data = report.to_dict()
    assert report.count("completed") == 8, data["per_call"]
    frames = data["frames"]
    assert frames["lost"] == 0 and frames["reordered"] == 0 and frames["echoed"] > 0, frames
    assert len(report.echo_latencies_ms()) == frames["echoed"]
    barge = data["barge_in"]
    assert barge["started"] > 0 and barge["cleared"] == barge["started"], barge


def _stream_without_reading(
    url: str, frames: list[str], opened: threading.Event, keep_sending_s: float
) -> tuple[int, str] | str:
    """A caller on a plain socket that keeps streaming media for ``keep_sending_s`` after
    ``opened`` without reading anything, as a busy Twilio edge may: then it reads the close.

    Returns (code, reason) of the close frame it finally reads, or what went wrong instead."""
    from websockets.client import ClientProtocol
    from websockets.frames import Frame, Opcode
    from websockets.uri import parse_uri

    uri = parse_uri(url)
    protocol = ClientProtocol(uri)
    with socket.create_connection((uri.host, uri.port), timeout=WAIT) as sock:
        protocol.send_request(protocol.connect())
        sock.sendall(b"".join(protocol.data_to_send()))
        while protocol.handshake_exc is None and not protocol.events_received():
            protocol.receive_data(sock.recv(65536))
        for frame in frames:
            protocol.send_text(frame.encode())
        sock.sendall(b"".join(protocol.data_to_send()))
        opened.wait(WAIT)
        media = json.dumps(
            {
                "event": "media",
                "streamSid": "MZ" + "2" * 32,
                "media": {"payload": base64.b64encode(b"\xff" * 160).decode()},
            }
        )
        deadline = time.monotonic() + keep_sending_s
        try:
            while time.monotonic() < deadline:
                protocol.send_frame(Frame(Opcode.TEXT, media.encode()))
                sock.sendall(b"".join(protocol.data_to_send()))
                time.sleep(0.005)
        except OSError as exc:
            # A caller whose socket (like an asyncio one) fails on this write never reads the
            # close frame waiting in its buffer: the reason is lost.
            return f"the gateway reset the connection while the caller was streaming: {exc!r}"
        while True:
            data = sock.recv(65536)
            if not data:
                return "connection closed without a close frame"
            protocol.receive_data(data)
            for event in protocol.events_received():
                if event.opcode is Opcode.CLOSE and protocol.close_rcvd is not None:
                    sock.sendall(b"".join(protocol.data_to_send()))  # our close reply
                    return protocol.close_rcvd.code, protocol.close_rcvd.reason


async def test_close_reason_reaches_a_caller_that_reads_late(
    gateway: tuple[str, CallHost],
) -> None:
    """The stream closes with the close handshake: the gateway waits for the caller's close
    frame before dropping TCP, so the reason is not lost to a reset while the caller is still
    streaming media (seen on CI as an agent hang-up arriving as a bare disconnect)."""
    base, host = gateway
    call_sid = "CA" + "7" * 32
    form = {"CallSid": call_sid, "AccountSid": "AC" + "0" * 32, "From": "+1555", "To": "+1666"}
    async with aiohttp.ClientSession() as http:
        url = f"{base}/twilio/voice"
        async with http.post(url, data=form, headers=signed(url, form)) as response:
            twiml = await response.text()
    token = twiml.split('name="token" value="')[1].split('"')[0]
    connected = json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    opened = threading.Event()
    outcome = asyncio.ensure_future(
        asyncio.to_thread(
            _stream_without_reading,
            base.replace("http", "ws") + "/twilio/media",
            [connected, start_frame(call_sid, token)],
            opened,
            1.0,
        )
    )
    await until(lambda: call_sid in host.calls, "the call")
    opened.set()
    await asyncio.sleep(0.1)
    assert await host.close_call(call_sid, "agent_hangup")
    assert await outcome == (1000, "agent_hangup")
