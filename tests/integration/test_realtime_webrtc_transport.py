"""``OpenAIRealtimeWebRTC`` against the local model's ``POST /v1/realtime/calls`` (aiortc on
both ends, ICE on 127.0.0.1, loopback only): the session.updated ack and its fallback, a channel
closing mid-wait, ``change_peer_connection`` replacing the pc, raw ``*`` events, audio both
ways, interrupt, close, and the server's refusal as a typed error."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from services.config import LocalModelSettings, Secret
from services.errors import ProviderError, TransportClosed
from services.localmodel.server import LocalModelServer
from services.media.playout import Playout
from services.realtime.transports.base import TransportAudio
from services.realtime.transports.webrtc import OpenAIRealtimeWebRTC
from services.telephony.g711 import ulaw_encode
from services.webrtc import ice
from services.webrtc.track import PacedTrack
from tests.conftest import TIMEOUT_FACTOR
from tests.integration.test_gateway import SignedCaller, running_gateway
from tests.integration.test_transport_conformance import PCM_SESSION, tone, until
from tests.wire import WireValidator

pytestmark = pytest.mark.integration


@pytest.fixture
async def model() -> AsyncIterator[LocalModelServer]:
    ice.install(("127.0.0.1",))
    settings = LocalModelSettings(port=0, speed=4.0, mode="echo")
    async with LocalModelServer(settings, ice_addresses=("127.0.0.1",)) as server:
        yield server


async def test_connect_resolves_on_the_ack_and_events_flow(model: LocalModelServer) -> None:
    transport = OpenAIRealtimeWebRTC(base_url=model.calls_url)
    raw: list[str] = []
    transport.on("*", lambda event: raw.append(event["type"]))
    began = time.monotonic()
    await transport.connect(initial_session_config=PCM_SESSION)
    try:
        assert time.monotonic() - began < 2.0 * TIMEOUT_FACTOR
        assert transport.status == "connected"
        assert transport.call_id is not None and transport.call_id.startswith("rtc_")
        assert "session.created" in raw and "session.updated" in raw
    finally:
        await transport.close()
    assert transport.status == "disconnected" and transport.pc is None


async def test_audio_goes_out_on_the_track_and_the_echo_comes_back(
    model: LocalModelServer,
) -> None:
    transport = OpenAIRealtimeWebRTC(base_url=model.calls_url)
    heard: list[TransportAudio] = []
    transport.on("audio", heard.append)
    await transport.connect(initial_session_config=PCM_SESSION)
    try:
        for _ in range(40):
            transport.send_audio(tone(20))
            await asyncio.sleep(0.02)
        await until(lambda: len(heard) > 10, "echoed audio from the model's track")
        assert all(a.item_id for a in heard)
    finally:
        await transport.close()


async def test_interrupt_stops_the_models_audio_at_once() -> None:
    ice.install(("127.0.0.1",))
    settings = LocalModelSettings(port=0, speed=4.0, mode="scripted")
    async with LocalModelServer(settings, ice_addresses=("127.0.0.1",)) as model:
        transport = OpenAIRealtimeWebRTC(base_url=model.calls_url)
        heard: list[TransportAudio] = []
        transport.on("audio", heard.append)
        await transport.connect(initial_session_config=PCM_SESSION)
        try:
            transport.request_response()  # the greeting: seconds of audio, queued at 4x speed

            def loud() -> int:
                return sum(1 for a in heard if np.abs(np.frombuffer(a.data, "<i2")).max() > 500)

            await until(lambda: loud() > 10, "the greeting on the model's track")
            before = loud()
            transport.interrupt()
            await asyncio.sleep(0.5)
            # What was in flight (a jitter buffer's worth) may still arrive; the rest is gone.
            assert loud() - before <= 6, "the model's audio stopped at the interrupt"
        finally:
            await transport.close()


async def test_without_an_ack_connect_resolves_after_the_timeout(
    model: LocalModelServer, caplog: pytest.LogCaptureFixture
) -> None:
    model.delay_session_updated(math.inf)
    transport = OpenAIRealtimeWebRTC(base_url=model.calls_url, ack_timeout_s=0.5)
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="services.realtime.transports.webrtc"):
        await transport.connect(initial_session_config=PCM_SESSION)
    try:
        waited = time.monotonic() - began
        assert 0.5 <= waited < 0.5 + 1.5 * TIMEOUT_FACTOR, waited
        assert "timed out waiting for session.updated ack" in caplog.text
        assert transport.status == "connected"
    finally:
        await transport.close()


async def test_a_channel_closing_during_the_wait_raises(model: LocalModelServer) -> None:
    model.delay_session_updated(math.inf)
    transport = OpenAIRealtimeWebRTC(base_url=model.calls_url, ack_timeout_s=5.0)
    connecting = asyncio.ensure_future(transport.connect(initial_session_config=PCM_SESSION))
    await until(lambda: transport.call_id is not None, "the answer")
    await asyncio.sleep(0.3)  # the channel is open and the transport waits for its ack
    await model.drop_connections()
    with pytest.raises(TransportClosed):
        await connecting
    assert transport.status == "disconnected"


async def test_change_peer_connection_can_replace_the_pc(model: LocalModelServer) -> None:
    replacement: list[RTCPeerConnection] = []

    async def swap(pc: RTCPeerConnection) -> RTCPeerConnection:
        mine = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        mine.addTrack(PacedTrack(Playout(), lambda _p: None))
        replacement.append(mine)
        return mine

    transport = OpenAIRealtimeWebRTC(base_url=model.calls_url, change_peer_connection=swap)
    await transport.connect(initial_session_config=PCM_SESSION)
    try:
        assert transport.pc is replacement[0] and transport.status == "connected"
    finally:
        await transport.close()


async def test_a_refused_offer_is_a_typed_error_with_the_servers_message() -> None:
    ice.install(("127.0.0.1",))
    settings = LocalModelSettings(port=0, api_key=Secret("sk-right"))
    async with LocalModelServer(settings, ice_addresses=("127.0.0.1",)) as server:
        transport = OpenAIRealtimeWebRTC(base_url=server.calls_url)
        with pytest.raises(ProviderError) as refused:
            await transport.connect(api_key="sk-wrong")
        assert "401" in str(refused.value) and not refused.value.retryable
        assert transport.status == "disconnected"


async def test_a_phone_call_whose_session_talks_webrtc_to_the_model(wire: WireValidator) -> None:
    """CALLRAY_MODEL_TRANSPORT=webrtc: a Twilio caller (μ-law) hears the greeting that came as
    Opus on the model's track, and the call's audio reaches the model over our track."""
    async with running_gateway(wire, model_transport="webrtc") as (base, host):
        caller = SignedCaller(base)
        await caller.dial()
        await until(lambda: caller.received_audio >= 8 * 500, "half a second of greeting")
        session = host.calls[caller.call_sid]
        assert isinstance(session.transport, OpenAIRealtimeWebRTC)
        assert session.transport.call_id is not None
        heard_caller: list[object] = []
        session.transport.on("input_audio_buffer.speech_started", heard_caller.append)
        t = np.arange(8 * 800) / 8000
        caller.speak(ulaw_encode((np.sin(2 * np.pi * 300 * t) * 0.3 * 32767).astype(np.int16)))
        await until(lambda: bool(heard_caller), "the model's VAD hearing the caller")
        await caller.hang_up()
        await until(lambda: caller.call_sid not in host.calls, "the call ended")
