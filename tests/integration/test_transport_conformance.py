"""The transport conformance suite: what every Realtime transport does, run over each of them
(WebSocket and WebRTC) against the local model on loopback.

A transport connects with an initial session config and is connected when ``connect()``
returns; raw events reach ``*`` listeners and typed events their own; ``send_event`` and the
thin-client methods drive the model (a text turn gets a response); audio sent in the session's
format comes back in it (echo mode); ``interrupt`` stops the model's audio; ``mute`` drops ours;
``close`` ends the connection and says so in ``connection_change``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest

from services.config import LocalModelSettings
from services.localmodel.server import LocalModelServer
from services.realtime.transports.base import TransportAudio
from services.realtime.transports.webrtc import OpenAIRealtimeWebRTC
from services.realtime.transports.websocket import OpenAIRealtimeWebSocket
from services.webrtc import ice
from tests.conftest import TIMEOUT_FACTOR

pytestmark = pytest.mark.integration

WAIT = 10 * TIMEOUT_FACTOR
TRANSPORTS = ["websocket", "webrtc"]
PCM_SESSION = {
    "audio": {
        "input": {"format": {"type": "audio/pcm", "rate": 24000}},
        "output": {"format": {"type": "audio/pcm", "rate": 24000}},
    }
}


def make(kind: str, model: LocalModelServer) -> OpenAIRealtimeWebSocket | OpenAIRealtimeWebRTC:
    if kind == "websocket":
        return OpenAIRealtimeWebSocket(url=model.url)
    return OpenAIRealtimeWebRTC(base_url=model.calls_url)


async def until(predicate: Callable[[], object], what: str) -> None:
    try:
        async with asyncio.timeout(WAIT):
            while not predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def tone(ms: int) -> bytes:
    t = np.arange(ms * 24) / 24000
    return (np.sin(2 * np.pi * 440 * t) * 0.3 * 32767).astype("<i2").tobytes()


def loud(chunks: list[TransportAudio]) -> int:
    return sum(1 for a in chunks if a.data and np.abs(np.frombuffer(a.data, "<i2")).max() > 500)


@contextlib.asynccontextmanager
async def opened(
    kind: str, mode: str = "scripted"
) -> AsyncIterator[tuple[Any, LocalModelServer, list[dict[str, Any]]]]:
    ice.install(("127.0.0.1",))
    settings = LocalModelSettings(port=0, speed=4.0, mode=mode)
    async with LocalModelServer(settings, ice_addresses=("127.0.0.1",)) as model:
        transport = make(kind, model)
        raw: list[dict[str, Any]] = []
        transport.on("*", raw.append)
        await transport.connect(initial_session_config=PCM_SESSION)
        try:
            yield transport, model, raw
        finally:
            await transport.close()


@pytest.fixture(params=TRANSPORTS)
async def connected(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[Any, LocalModelServer, list[dict[str, Any]]]]:
    async with opened(request.param) as running:
        yield running


@pytest.fixture(params=TRANSPORTS)
async def echoing(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[Any, LocalModelServer, list[dict[str, Any]]]]:
    async with opened(request.param, "echo") as running:
        yield running


async def test_connect_sends_the_config_and_raw_events_reach_star_listeners(
    connected: tuple[Any, LocalModelServer, list[dict[str, Any]]],
) -> None:
    transport, _model, raw = connected
    assert transport.status == "connected"
    await until(lambda: any(e["type"] == "session.updated" for e in raw), "session.updated")
    updated = next(e for e in raw if e["type"] == "session.updated")
    assert updated["session"]["audio"]["output"]["format"]["type"] == "audio/pcm"


async def test_a_text_turn_gets_a_response_through_send_event(
    connected: tuple[Any, LocalModelServer, list[dict[str, Any]]],
) -> None:
    transport, _model, raw = connected
    done: list[Any] = []
    transport.on("turn_done", done.append)
    transport.send_event(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Hello"}],
            },
        }
    )
    transport.send_event({"type": "response.create"})
    await until(lambda: bool(done), "the response's end")
    assert any(e["type"] == "conversation.item.added" for e in raw)


async def test_audio_in_the_sessions_format_comes_back_and_mute_drops_ours(
    echoing: tuple[Any, LocalModelServer, list[dict[str, Any]]],
) -> None:
    transport, _model, _raw = echoing
    heard: list[TransportAudio] = []
    transport.on("audio", heard.append)
    for _ in range(30):
        transport.send_audio(tone(20))
        await asyncio.sleep(0.02)
    await until(lambda: loud(heard) >= 5, "the echo of our audio")
    assert all(len(a.data) % 2 == 0 and a.item_id for a in heard)
    await asyncio.sleep(1.0)  # the echo of what was sent runs out
    transport.mute(True)
    before = loud(heard)
    for _ in range(30):
        transport.send_audio(tone(20))
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)
    assert loud(heard) - before <= 2, "muted audio was not sent"


async def test_interrupt_stops_the_models_audio(
    connected: tuple[Any, LocalModelServer, list[dict[str, Any]]],
) -> None:
    transport, _model, _raw = connected
    heard: list[TransportAudio] = []
    interrupted: list[object] = []
    transport.on("audio", heard.append)
    transport.on("audio_interrupted", lambda: interrupted.append(True))
    transport.request_response()  # the scripted greeting: seconds of audio
    await until(lambda: loud(heard) >= 5, "the greeting")
    transport.interrupt()
    assert interrupted
    # Over a WebSocket the rest of the response may already be here, received faster than
    # real time; what matters is that no new audio is made: cancelled, or cleared.
    await asyncio.sleep(0.3)
    settled = loud(heard)
    await asyncio.sleep(0.7)
    assert loud(heard) - settled <= 2


async def test_close_ends_the_connection_and_says_so(
    connected: tuple[Any, LocalModelServer, list[dict[str, Any]]],
) -> None:
    transport, _model, _raw = connected
    changes: list[str] = []
    transport.on("connection_change", changes.append)
    await transport.close()
    assert transport.status == "disconnected" and changes[-1] == "disconnected"
