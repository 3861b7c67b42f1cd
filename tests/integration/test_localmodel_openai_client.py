"""The local model server on a real socket, driven by the official ``openai`` realtime client.

Every event either side sends goes through the ``wire`` validator (the openai pydantic models);
the raw-socket tests of bad input validate only what the server sends.
"""

from __future__ import annotations

import asyncio
import base64
import json
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from openai import AsyncOpenAI
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from services.config import LocalModelSettings, Secret
from services.localmodel.audio import PCM, PCMU, AudioFormat, decode, encode
from services.localmodel.conversation import Conversation
from services.localmodel.scenario import parse_scenario
from services.localmodel.server import LocalModelServer
from services.localmodel.speech import SpeechSynthesizer
from tests.conftest import TIMEOUT_FACTOR
from tests.wire import WireValidator

pytestmark = pytest.mark.integration

SCENARIO = parse_scenario(
    {"steps": [{"say": "Hello."}, {"say": "Bye now."}], "fallback": {"say": "Anything else?"}}
)
SETTINGS = LocalModelSettings(host="127.0.0.1", port=0, speed=20.0, max_message_bytes=64 * 1024)
WAIT = 5 * TIMEOUT_FACTOR

StartServer = Callable[..., Awaitable[LocalModelServer]]


@pytest.fixture
async def start_server(wire: WireValidator) -> AsyncIterator[StartServer]:
    servers: list[LocalModelServer] = []

    async def start(observer: Any = wire, **overrides: Any) -> LocalModelServer:
        server = LocalModelServer(
            replace(SETTINGS, **overrides),
            observer=observer,
            speech=SpeechSynthesizer(None),
            scenario=SCENARIO,
        )
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def server(start_server: StartServer) -> LocalModelServer:
    return await start_server()


def client_for(server: LocalModelServer, api_key: str = "test") -> AsyncOpenAI:
    return AsyncOpenAI(api_key=api_key, base_url=f"http://127.0.0.1:{server.port}/v1")


async def until(conn: Any, kind: str) -> list[Any]:
    """Events from the official client up to and including the first of type ``kind``."""
    events = []
    async with asyncio.timeout(WAIT):
        while True:
            event = await conn.recv()
            events.append(event)
            if event.type == kind:
                return events


def tone(ms: int, fmt: AudioFormat) -> bytes:
    t = np.arange(fmt.rate * ms // 1000) / fmt.rate
    return encode((np.sin(2 * np.pi * 220 * t) * 0.3 * 32767).astype(np.int16), fmt)


def silence(ms: int, fmt: AudioFormat) -> bytes:
    return encode(np.zeros(fmt.rate * ms // 1000, np.int16), fmt)


async def append_all(conn: Any, audio: bytes, fmt: AudioFormat, chunk_ms: int = 20) -> None:
    step = fmt.bytes_for_ms(chunk_ms)
    for i in range(0, len(audio), step):
        await conn.input_audio_buffer.append(audio=base64.b64encode(audio[i : i + step]).decode())


def of_type(events: list[Any], kind: str) -> list[Any]:
    return [e for e in events if e.type == kind]


@pytest.mark.parametrize("fmt", [PCM, PCMU], ids=["pcm", "pcmu"])
async def test_voice_turn(server: LocalModelServer, fmt: AudioFormat) -> None:
    async with client_for(server) as client, client.realtime.connect(model="gpt-realtime") as conn:
        assert (await conn.recv()).type == "session.created"
        wire_format = fmt.to_wire()
        await conn.session.update(
            session={
                "type": "realtime",
                "audio": {
                    "input": {"format": wire_format, "transcription": {"model": "whisper-1"}},
                    "output": {"format": wire_format},
                },
            }
        )
        updated = (await until(conn, "session.updated"))[-1]
        assert updated.session.audio.input.format.type == fmt.type
        await append_all(conn, silence(300, fmt) + tone(600, fmt) + silence(800, fmt), fmt)
        events = await until(conn, "response.done")

    started = of_type(events, "input_audio_buffer.speech_started")[0]
    stopped = of_type(events, "input_audio_buffer.speech_stopped")[0]
    committed = of_type(events, "input_audio_buffer.committed")[0]
    assert (started.audio_start_ms, stopped.audio_end_ms) == (0, 1400)
    assert started.item_id == stopped.item_id == committed.item_id
    transcription = of_type(events, "conversation.item.input_audio_transcription.completed")
    assert transcription[0].item_id == committed.item_id
    audio = b"".join(
        base64.b64decode(e.delta) for e in of_type(events, "response.output_audio.delta")
    )
    assert len(decode(audio, fmt)) == fmt.rate * 640 // 1000  # "Hello." in tone speech
    transcript = "".join(e.delta for e in of_type(events, "response.output_audio_transcript.delta"))
    assert transcript == "Hello."
    done = events[-1].response
    assert done.status == "completed"
    assert done.output[0].content[0].transcript == "Hello."


async def test_text_turn(server: LocalModelServer) -> None:
    async with client_for(server) as client, client.realtime.connect(model="gpt-realtime") as conn:
        await until(conn, "session.created")
        await conn.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Hi"}],
            }
        )
        await conn.response.create(response={"output_modalities": ["text"]})
        events = await until(conn, "response.done")
    assert of_type(events, "conversation.item.added")[0].item.role == "user"
    assert of_type(events, "response.output_text.done")[0].text == "Hello."
    assert events[-1].response.output_modalities == ["text"]


async def test_cancel(start_server: StartServer) -> None:
    server = await start_server(speed=1.0)  # real time, so the cancel lands mid-response
    async with client_for(server) as client, client.realtime.connect(model="gpt-realtime") as conn:
        await until(conn, "session.created")
        await conn.response.create()
        await until(conn, "response.output_audio.delta")
        await conn.response.cancel()
        events = await until(conn, "response.done")
    done = events[-1].response
    assert done.status == "cancelled"
    assert done.status_details.reason == "client_cancelled"
    assert done.output[0].status == "incomplete"


async def test_truncate(server: LocalModelServer) -> None:
    async with client_for(server) as client, client.realtime.connect(model="gpt-realtime") as conn:
        await until(conn, "session.created")
        await conn.response.create()
        item_id = (await until(conn, "response.done"))[-1].response.output[0].id
        await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=200)
        truncated = (await until(conn, "conversation.item.truncated"))[-1]
        assert (truncated.item_id, truncated.audio_end_ms) == (item_id, 200)
        await conn.conversation.item.retrieve(item_id=item_id)
        item = (await until(conn, "conversation.item.retrieved"))[-1].item
        assert len(base64.b64decode(item.content[0].audio)) == 200 * PCM.bytes_per_ms
        await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=900)
        error = (await until(conn, "error"))[-1].error
        assert error.message == "Audio content of 200ms is already shorter than 900ms"


async def test_echo_mode_and_parallel_connections(start_server: StartServer) -> None:
    server = await start_server(mode="echo")

    async def one_call(n: int) -> bytes:
        async with client_for(server) as client, client.realtime.connect(model="gpt-realtime") as c:
            await until(c, "session.created")
            await append_all(c, tone(300 + 20 * n, PCM), PCM)
            await c.input_audio_buffer.commit()
            events = await until(c, "response.done")
            return b"".join(
                base64.b64decode(e.delta) for e in of_type(events, "response.output_audio.delta")
            )

    echoed = await asyncio.gather(*(one_call(n) for n in range(5)))
    assert [len(audio) for audio in echoed] == [len(tone(300 + 20 * n, PCM)) for n in range(5)]
    assert echoed[0] == tone(300, PCM)  # pcm in, pcm out: byte for byte


async def test_slow_speech_is_rendered_off_the_loop(wire: WireValidator, tmp_path: Path) -> None:
    # A stand-in for espeak-ng: one second of 22.05 kHz audio, after a pause.
    espeak = tmp_path / "espeak-ng"
    espeak.write_text(
        f"#!{sys.executable}\n"
        "import io, sys, time, wave\n"
        "time.sleep(0.2)\n"
        "out = io.BytesIO(); w = wave.open(out, 'wb')\n"
        "w.setnchannels(1); w.setsampwidth(2); w.setframerate(22050)\n"
        "w.writeframes(b'\\x00\\x10' * 22050); w.close()\n"
        "sys.stdout.buffer.write(out.getvalue())\n"
    )
    espeak.chmod(espeak.stat().st_mode | stat.S_IEXEC)
    server = LocalModelServer(
        SETTINGS, observer=wire, speech=SpeechSynthesizer(str(espeak)), scenario=SCENARIO
    )
    async with server, client_for(server) as client:
        async with client.realtime.connect(model="gpt-realtime") as conn:
            await until(conn, "session.created")
            await conn.response.create()
            await until(conn, "response.content_part.added")
            # The engine never waits on the synthesizer: while espeak-ng runs (0.2 s), the
            # connection keeps answering, so this reply comes before any audio.
            await conn.input_audio_buffer.clear()
            events = await until(conn, "response.done")
    kinds = [e.type for e in events]
    assert kinds.index("input_audio_buffer.cleared") < kinds.index("response.output_audio.delta")
    audio = b"".join(
        base64.b64decode(e.delta) for e in of_type(events, "response.output_audio.delta")
    )
    assert len(audio) == 24000 * 2  # resampled to 24 kHz
    assert events[-1].response.status == "completed"


# ----- handshake ---------------------------------------------------------------------------


async def test_other_paths_are_404(server: LocalModelServer) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"ws://127.0.0.1:{server.port}/v1/other"):
            pass
    assert info.value.response.status_code == 404


async def test_api_key_is_required_when_configured(start_server: StartServer) -> None:
    server = await start_server(api_key=Secret("sekret"))
    with pytest.raises(InvalidStatus) as info:
        async with connect(server.url, additional_headers={"Authorization": "Bearer wrong"}):
            pass
    assert info.value.response.status_code == 401
    async with client_for(server, "sekret") as client, client.realtime.connect(model="x") as conn:
        assert (await conn.recv()).type == "session.created"
    # Browsers cannot set headers; they send the key as a subprotocol.
    protocols = ["realtime", "openai-insecure-api-key.sekret"]
    async with connect(server.url, subprotocols=protocols) as ws:
        assert ws.subprotocol == "realtime"
        assert json.loads(await ws.recv())["type"] == "session.created"


# ----- bad input over a raw socket ---------------------------------------------------------


@pytest.fixture
async def raw_server(start_server: StartServer, wire: WireValidator) -> LocalModelServer:
    def server_events_only(direction: str, event: dict[str, Any]) -> None:
        if direction == "server":
            wire(direction, event)

    return await start_server(observer=server_events_only)


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(WAIT):
        event: dict[str, Any] = json.loads(await ws.recv())
        return event


async def assert_alive(ws: ClientConnection) -> None:
    await ws.send(json.dumps({"type": "input_audio_buffer.clear", "event_id": "alive"}))
    assert (await recv_json(ws))["type"] == "input_audio_buffer.cleared"


BAD_INPUT: list[tuple[str | bytes, str, str | None]] = [
    ("{not json", "invalid_json", None),
    ('"just a string"', "invalid_event", None),
    ('{"event_id": "e1"}', "missing_required_parameter", "type"),
    ('{"type": "session.frobnicate", "event_id": "e2"}', "invalid_value", "type"),
    ('{"type": "conversation.item.retrieve", "event_id": "e3"}', "missing_required_parameter",
     "item_id"),
    ('{"type": "conversation.item.truncate", "item_id": "i", "content_index": "0",'
     ' "audio_end_ms": 10}', "invalid_type", "content_index"),
    ('{"type": "input_audio_buffer.append", "audio": "not base64!"}', "invalid_value", "audio"),
    ('{"type": "session.update", "session": {"type": "realtime", "voice": "ash"}}',
     "unknown_parameter", "session.voice"),
    (b"\x00binary", "binary_frame_unsupported", None),
    (json.dumps({"type": "input_audio_buffer.append", "audio": "A" * 100_000}),
     "message_too_large", None),
]  # fmt: skip


@pytest.mark.parametrize(("frame", "code", "param"), BAD_INPUT)
async def test_bad_input_is_answered_and_harms_no_one(
    raw_server: LocalModelServer, frame: str | bytes, code: str, param: str | None
) -> None:
    async with connect(raw_server.url) as bad, connect(raw_server.url) as good:
        assert (await recv_json(bad))["type"] == "session.created"
        assert (await recv_json(good))["type"] == "session.created"
        await bad.send(frame)
        error = await recv_json(bad)
        assert error["type"] == "error"
        assert (error["error"]["code"], error["error"]["param"]) == (code, param)
        # The client's event_id is echoed whenever the frame was a JSON object carrying one.
        sent = json.loads(frame) if code not in ("invalid_json", "binary_frame_unsupported") else {}
        expected_id = sent.get("event_id") if isinstance(sent, dict) else None
        assert error["error"]["event_id"] == expected_id
        await assert_alive(bad)
        await assert_alive(good)


async def test_unknown_call_id_has_no_session(raw_server: LocalModelServer) -> None:
    async with connect(f"{raw_server.url}?call_id=rtc_unknown") as ws:
        first = await recv_json(ws)
        assert first["error"]["code"] == "call_id_not_found"
        for _ in range(2):
            await ws.send(json.dumps({"type": "response.create", "event_id": "r"}))
            error = await recv_json(ws)
            assert (error["error"]["code"], error["error"]["event_id"]) == (
                "session_not_found",
                "r",
            )


async def test_internal_error_stays_on_its_event(
    raw_server: LocalModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Conversation, *args: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(Conversation, "truncate", broken)
    async with connect(raw_server.url) as a, connect(raw_server.url) as b:
        await recv_json(a)
        await recv_json(b)
        truncate = {"type": "conversation.item.truncate", "item_id": "i", "content_index": 0,
                    "audio_end_ms": 1}  # fmt: skip
        await a.send(json.dumps(truncate))
        assert (await recv_json(a))["error"]["type"] == "server_error"
        await assert_alive(a)
        await assert_alive(b)
