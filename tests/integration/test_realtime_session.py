"""RealtimeSession and OpenAIRealtimeWebSocket against our local model server, on loopback.

Every event either side sends is validated against the openai package's models (the ``wire``
fixture is the server's observer).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.config import LocalModelSettings
from services.localmodel.server import LocalModelServer
from services.realtime.agent import RealtimeAgent
from services.realtime.guardrails import GuardrailResult, OutputGuardrail
from services.realtime.items import FunctionCallItem, MessageItem
from services.realtime.playback import PlaybackTracker
from services.realtime.session import RealtimeSession, guardrail_feedback
from services.realtime.tools import ToolContext, function_tool
from services.realtime.transports.websocket import OpenAIRealtimeWebSocket
from services.telephony.g711 import ulaw_encode
from tests.conftest import TIMEOUT_FACTOR
from tests.wire import WireValidator

pytestmark = pytest.mark.integration

PCMU = {"type": "audio/pcmu"}
PHONE_CONFIG = {
    "audio": {
        "input": {
            "format": PCMU,
            "transcription": {"model": "gpt-4o-mini-transcribe"},
            "turn_detection": {
                "type": "server_vad",
                "silence_duration_ms": 300,
                "create_response": True,
                "interrupt_response": True,
            },
        },
        "output": {"format": PCMU},
    }
}
WAIT = 10 * TIMEOUT_FACTOR


def tone_ulaw(ms: int, amplitude: float = 0.3) -> bytes:
    t = np.arange(ms * 8) / 8000.0
    return ulaw_encode((np.sin(2 * np.pi * 440 * t) * amplitude * 32767).astype(np.int16))


def silence_ulaw(ms: int) -> bytes:
    return b"\xff" * (ms * 8)


StartModel = Callable[..., Awaitable[LocalModelServer]]


@pytest.fixture
async def start_model(wire: WireValidator, tmp_path: Path) -> AsyncIterator[StartModel]:
    servers: list[LocalModelServer] = []

    async def start(steps: list[dict[str, Any]] | None = None, **options: Any) -> LocalModelServer:
        scenario = None
        if steps is not None:
            scenario = tmp_path / f"scenario{len(servers)}.json"
            scenario.write_text(json.dumps({"steps": steps}))
        settings = LocalModelSettings(
            port=0,
            scenario=str(scenario) if scenario else None,
            **{"speed": 20.0, **options},
        )
        server = LocalModelServer(settings, observer=wire)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


async def until(predicate: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(WAIT):
        while not predicate():
            await asyncio.sleep(0.01)


def client_events(wire_log: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in wire_log if e["type"] == kind]


class Recorder:
    """Collects session events by name."""

    def __init__(self, session: RealtimeSession, names: list[str]) -> None:
        self.events: dict[str, list[tuple[Any, ...]]] = {n: [] for n in names}
        for name in names:
            session.on(name, lambda *args, _n=name: self.events[_n].append(args))

    def __getitem__(self, name: str) -> list[tuple[Any, ...]]:
        return self.events[name]


@pytest.fixture
def seen_by_server(wire: WireValidator) -> list[dict[str, Any]]:
    """Client events as the server received them."""
    return wire.client_log


@function_tool
def lookup_order(order_id: str) -> dict[str, str]:
    """Look up an order."""
    return {"status": f"order {order_id} has shipped"}


async def test_audio_turn_reaches_history_with_transcripts(start_model: StartModel) -> None:
    server = await start_model([{"user": "Where is my order?", "say": "It shipped today."}])
    session = RealtimeSession(
        RealtimeAgent(name="Support", instructions="Be brief."), config=PHONE_CONFIG
    )
    rec = Recorder(
        session,
        ["agent_start", "agent_end", "audio", "audio_start", "audio_stopped", "history_added"],
    )
    started = []
    session.transport.on("input_audio_buffer.speech_started", started.append)
    await session.connect(api_key="test", url=server.url)
    session.send_audio(tone_ulaw(600) + silence_ulaw(800))
    await until(lambda: len(rec["agent_end"]) == 1, "the first answer")
    assert started[0].audio_start_ms == 0
    assert rec["audio_start"] and rec["audio_stopped"] and rec["agent_start"]
    assert all(a[0].data for a in rec["audio"])
    history = session.history
    assert [type(i).__name__ for i in history] == ["MessageItem", "MessageItem"]
    user, assistant = history
    assert isinstance(user, MessageItem) and user.role == "user"
    await until(lambda: user.text == "Where is my order?", "the input transcript")
    assert isinstance(assistant, MessageItem) and assistant.role == "assistant"
    assert assistant.text == "It shipped today."
    assert rec["agent_end"][0][1] == "It shipped today."
    await session.close()


GREETING = "This long greeting is going to be interrupted by the caller halfway through."


async def test_barge_in_truncates_at_the_tracked_playback_point(
    start_model: StartModel, seen_by_server: list[dict[str, Any]]
) -> None:
    server = await start_model([{"say": GREETING}], speed=1.0)
    tracker = PlaybackTracker(bytes_per_ms=8)
    session = RealtimeSession(RealtimeAgent(name="A"), config=PHONE_CONFIG, playback=tracker)
    rec = Recorder(session, ["audio", "audio_interrupted"])
    truncated: list[Any] = []
    retrieved: list[Any] = []
    session.transport.on("conversation.item.truncated", truncated.append)
    session.transport.on("conversation.item.retrieved", retrieved.append)
    await session.connect(api_key="test", url=server.url)
    session.transport.request_response()
    await until(lambda: sum(len(a[0].data) for a in rec["audio"]) >= 8 * 400, "400 ms of audio")
    item_id = rec["audio"][0][0].item_id
    tracker.on_play_ms(item_id, 0, 320)  # the listener heard 320 ms
    session.send_audio(tone_ulaw(400))
    await until(lambda: bool(truncated), "the truncation")
    assert rec["audio_interrupted"]
    sent = client_events(seen_by_server, "conversation.item.truncate")
    assert sent == [
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 320,
        }
    ]
    assert truncated[0].audio_end_ms == 320
    # The server cancelled (interrupt_response), so we did not cancel a second time.
    assert client_events(seen_by_server, "response.cancel") == []
    # The item is fetched again and history mirrors the transcript of what was heard.
    await until(lambda: bool(retrieved), "the item fetched again")
    heard = retrieved[0].item["content"][0]["transcript"]
    assert heard and GREETING.startswith(heard) and len(heard) < len(GREETING)
    item = next(i for i in session.history if i.item_id == item_id)
    assert item.text == heard
    await session.close()


async def test_tool_round_trip(start_model: StartModel) -> None:
    server = await start_model(
        [
            {
                "tool": {"name": "lookup_order", "arguments": {"order_id": "A1"}},
                "then": "Good news: {output}.",
            }
        ]
    )
    session = RealtimeSession(RealtimeAgent(name="A", tools=[lookup_order]))
    rec = Recorder(session, ["tool_start", "tool_end", "agent_end"])
    await session.connect(api_key="test", url=server.url)
    session.send_message("Where is order A1?")
    await until(lambda: len(rec["agent_end"]) == 2, "the answer after the tool")
    _agent, tool, result, call = rec["tool_end"][0]
    assert tool is lookup_order and result.outcome == "ok" and call.name == "lookup_order"
    assert rec["agent_end"][1][1] == "Good news: order A1 has shipped."
    calls = [i for i in session.history if isinstance(i, FunctionCallItem)]
    assert calls[0].output == result.output
    await session.close()


async def test_handoff_switches_instructions_and_tools(start_model: StartModel) -> None:
    billing = RealtimeAgent(
        name="Billing", instructions="You handle billing.", tools=[lookup_order]
    )
    front = RealtimeAgent(name="Front desk", instructions="Route callers.", handoffs=[billing])
    server = await start_model(
        [{"tool": {"name": "transfer_to_billing", "arguments": {}}, "then": "Billing here."}]
    )
    session = RealtimeSession(front)
    rec = Recorder(session, ["handoff", "agent_end"])
    await session.connect(api_key="test", url=server.url)
    session.send_message("I have a billing question.")
    await until(lambda: len(rec["agent_end"]) == 2, "the billing agent's answer")
    assert rec["handoff"] == [(front, billing)]
    assert session.current_agent is billing
    config = session.transport.session_config  # type: ignore[attr-defined]
    assert config["instructions"] == "You handle billing."
    assert [t["name"] for t in config["tools"]] == ["lookup_order"]
    assert rec["agent_end"][1][1] == "Billing here."
    await session.close()


async def test_guardrail_trip_interrupts_and_asks_again(
    start_model: StartModel, seen_by_server: list[dict[str, Any]]
) -> None:
    def no_secrets(ctx: Any, agent: Any, text: str) -> GuardrailResult:
        return GuardrailResult("password" in text, {"word": "password"})

    agent = RealtimeAgent(name="A", output_guardrails=[OutputGuardrail("no_secrets", no_secrets)])
    server = await start_model(
        [
            {"say": "The admin password is swordfish, and I should not have said that."},
            {"say": "Sorry."},
        ],
        speed=1.0,
    )
    session = RealtimeSession(agent, guardrail_debounce_chars=10)
    rec = Recorder(session, ["guardrail_tripped", "audio_interrupted", "agent_end"])
    await session.connect(api_key="test", url=server.url)
    session.transport.request_response()
    await until(lambda: bool(rec["guardrail_tripped"]), "the trip")
    tripped = rec["guardrail_tripped"][0][1]
    assert tripped.guardrail == "no_secrets" and tripped.result.output_info == {"word": "password"}
    await until(lambda: len(rec["agent_end"]) == 2, "the second answer")
    assert rec["audio_interrupted"]
    assert (
        rec["agent_end"][0][1]
        != "The admin password is swordfish, and I should not have said that."
    )
    feedback = [
        e
        for e in client_events(seen_by_server, "conversation.item.create")
        if e["item"].get("role") == "user"
    ]
    assert feedback[0]["item"]["content"][0]["text"] == guardrail_feedback("no_secrets")
    assert rec["agent_end"][1][1] == "Sorry."
    await session.close()


@function_tool(needs_approval=True)
async def refund(ctx: ToolContext, amount: int) -> str:
    """Refund money to the caller."""
    return f"refunded {amount}"


@pytest.mark.parametrize("approve", [True, False])
async def test_tool_needing_approval(start_model: StartModel, approve: bool) -> None:
    server = await start_model(
        [{"tool": {"name": "refund", "arguments": {"amount": 20}}, "then": "Result: {output}"}]
    )
    session = RealtimeSession(RealtimeAgent(name="A", tools=[refund]))
    rec = Recorder(session, ["tool_approval_requested", "tool_end", "agent_end"])
    await session.connect(api_key="test", url=server.url)
    session.send_message("Refund me.")
    await until(lambda: bool(rec["tool_approval_requested"]), "the approval request")
    assert rec["tool_end"] == []
    call = rec["tool_approval_requested"][0][2]
    await asyncio.sleep(0.1)  # nothing runs while waiting for approval
    assert rec["tool_end"] == [] and len(rec["agent_end"]) == 1
    if approve:
        session.approve(call.call_id)
    else:
        session.reject(call.call_id)
    await until(lambda: len(rec["agent_end"]) == 2, "the answer after the decision")
    expected = (
        "Result: refunded 20" if approve else "Result: The user did not approve this tool call."
    )
    assert rec["agent_end"][1][1] == expected
    assert bool(rec["tool_end"]) is approve
    await session.close()


async def test_raw_events_and_send_event(start_model: StartModel) -> None:
    server = await start_model([{"say": "One."}, {"say": "Two."}])
    session = RealtimeSession(RealtimeAgent(name="A"))
    raw: list[dict[str, Any]] = []
    transport_events: list[dict[str, Any]] = []
    session.transport.on("*", raw.append)
    session.on("transport_event", transport_events.append)
    await session.connect(api_key="test", url=server.url)
    session.transport.send_event(
        {
            "type": "response.create",
            "response": {"output_modalities": ["text"], "instructions": "x"},
        }
    )
    await until(lambda: any(e["type"] == "response.done" for e in raw), "the response")
    types = [e["type"] for e in raw]
    assert types[0] == "session.created" and "session.updated" in types
    assert "response.output_text.done" in types and "response.output_audio.delta" not in types
    assert transport_events == raw
    await session.close()


async def test_thin_client_echo(start_model: StartModel) -> None:
    server = await start_model(mode="echo")
    client = OpenAIRealtimeWebSocket()
    audio: list[bytes] = []
    client.on("audio", lambda a: audio.append(a.data))
    await client.connect(
        api_key="test",
        url=server.url,
        model="gpt-realtime",
        initial_session_config={
            "instructions": "echo",
            "audio": {
                "input": {"format": PCMU, "turn_detection": None},
                "output": {"format": PCMU},
            },
        },
    )
    assert client.status == "connected"
    frames = [bytes([n]) * 160 for n in range(1, 11)]
    for frame in frames:
        client.send_audio(frame)
    await until(lambda: len(b"".join(audio)) >= 1600, "the echo")
    assert b"".join(audio) == b"".join(frames)
    await client.close()
    assert client.status == "disconnected"


async def test_create_websocket_hook_and_skip_open(start_model: StartModel) -> None:
    from websockets.asyncio.client import connect

    server = await start_model([{"say": "Hi."}])
    made: list[tuple[str, dict[str, str]]] = []

    class Opening:
        """A socket from a custom connector that reports its own opening."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner
            self.waited = False

        async def wait_open(self) -> None:
            self.waited = True

        async def send(self, message: str) -> None:
            await self.inner.send(message)

        async def recv(self) -> str | bytes:
            return await self.inner.recv()

        async def close(self, code: int = 1000, reason: str = "") -> None:
            await self.inner.close(code, reason)

    async def factory(url: str, headers: Any) -> Opening:
        made.append((url, dict(headers)))
        return Opening(await connect(url, additional_headers=dict(headers)))

    transport = OpenAIRealtimeWebSocket(create_websocket=factory)
    await transport.connect(api_key="sk-test", url=server.url, model="gpt-realtime-2.1")
    url, headers = made[0]
    assert url == f"{server.url}?model=gpt-realtime-2.1"
    assert headers["Authorization"] == "Bearer sk-test"
    assert transport.socket.waited  # type: ignore[union-attr]
    await transport.close()

    class NeverOpens(Opening):
        async def wait_open(self) -> None:
            await asyncio.Event().wait()

    async def connector(url: str, headers: Any) -> NeverOpens:
        return NeverOpens(await connect(url, additional_headers=dict(headers)))

    skipping = OpenAIRealtimeWebSocket(create_websocket=connector, skip_open_event_listeners=True)
    async with asyncio.timeout(WAIT):
        await skipping.connect(api_key="sk-test", url=server.url)
    created = await skipping.wait_for("session.created")
    assert created[0].session["type"] == "realtime"
    await skipping.close()


async def test_connect_needs_no_ack_and_bad_server_frames_do_not_break_the_call(
    wire: WireValidator,
) -> None:
    """A server that never acknowledges and sends garbage: connect() still resolves once the
    update is sent, each bad frame is an ``error`` event, and good events keep flowing."""
    from websockets.asyncio.server import serve

    received: list[dict[str, Any]] = []
    good = {
        "type": "response.output_audio.delta",
        "event_id": "e1",
        "response_id": "r",
        "item_id": "i",
        "output_index": 0,
        "content_index": 0,
        "delta": "AAEC",
    }

    async def handler(ws: Any) -> None:
        async for message in ws:
            received.append(json.loads(message))
            wire("client", received[-1])
            if len(received) == 1:
                await ws.send("{not json")
                await ws.send(b"\x00\x01")
                await ws.send(json.dumps({"type": "response.output_audio.delta", "event_id": "e"}))
                await ws.send(json.dumps({**good, "delta": "***not base64***"}))
                await ws.send(json.dumps({"type": "response.future_thing", "event_id": "e"}))
                await ws.send(json.dumps(good))

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        session = RealtimeSession(RealtimeAgent(name="A", instructions="Hi"))
        rec = Recorder(session, ["error", "audio", "transport_event"])
        async with asyncio.timeout(WAIT):
            await session.connect(url=f"ws://127.0.0.1:{port}/v1/realtime")
        await until(lambda: bool(received), "the initial update at the server")
        assert received[0]["type"] == "session.update"
        assert received[0]["session"]["instructions"] == "Hi"
        await until(lambda: bool(rec["audio"]), "the good audio event")
        assert rec["audio"][0][0].data == b"\x00\x01\x02"
        problems = [str(e[0].error) for e in rec["error"]]
        assert len(problems) == 4, problems
        assert "malformed JSON" in problems[0] and "binary" in problems[1]
        assert "response_id" in problems[2] and "base64" in problems[3]
        assert [e[0]["type"] for e in rec["transport_event"]][-2:] == [
            "response.future_thing",
            "response.output_audio.delta",
        ]
        await session.close()


async def test_invalid_session_update_is_an_error_and_the_session_goes_on(
    start_model: StartModel, wire: WireValidator
) -> None:
    wire.tolerate("client", "session.update")  # the point of the test is an invalid one
    server = await start_model([{"say": "Still here."}])
    session = RealtimeSession(RealtimeAgent(name="A"))
    rec = Recorder(session, ["error", "agent_end"])
    await session.connect(api_key="test", url=server.url)
    session.transport.send_event(
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"format": "pcm16"}}},
        }
    )
    await until(lambda: bool(rec["error"]), "the error")
    error = rec["error"][0][0].error
    assert error.param == "session.audio.input.format" and error.retryable is False
    session.send_message("hello?")
    await until(lambda: bool(rec["agent_end"]), "the answer")
    assert rec["agent_end"][0][1] == "Still here."
    await session.close()
