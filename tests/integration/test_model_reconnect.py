"""A call's model connection drops (the server closes it with 1011, or dies and comes back): the
session reconnects and replays the conversation, the call goes on; a model that stays away ends
that call alone with ``model_unavailable``. CallHost and the local model on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.agents.registry import load_agents
from services.config import LocalModelSettings
from services.localmodel.server import LocalModelServer
from services.media.vocabulary import AudioDone, CallEnded, CallSpec, PlayAudio, Played
from services.realtime.items import FunctionCallItem, MessageItem
from services.realtime.tools import InProcessToolRunner
from services.runtime.events import ListEventSink
from services.runtime.host import CallHost
from tests.conftest import TIMEOUT_FACTOR
from tests.integration.test_call_host import MODEL, SILENCE, collect, speech
from tests.wire import WireValidator

pytestmark = pytest.mark.integration


@pytest.fixture
async def model(wire: WireValidator) -> AsyncIterator[LocalModelServer]:
    async with LocalModelServer(LocalModelSettings(port=0, speed=20.0), observer=wire) as server:
        yield server


def _host(url: str, events: ListEventSink, reconnect_s: float = 10.0) -> CallHost:
    return CallHost(
        "h1",
        model=dataclasses.replace(MODEL, reconnect_s=reconnect_s),
        model_url=url,
        agents=load_agents(),
        tool_runner=InProcessToolRunner(),
        events=events,
        capacity=10,
    )


async def _until(predicate: Any, what: str, limit_s: float = 10.0) -> None:
    async with asyncio.timeout(limit_s * TIMEOUT_FACTOR):
        while not predicate():
            await asyncio.sleep(0.02)


def _expected_replay(history: list[Any]) -> list[tuple[str, str]]:
    """(type, text or tool name) of each item, as the replay must recreate them, in order."""
    out: list[tuple[str, str]] = []
    for item in history:
        if isinstance(item, MessageItem) and item.text.strip():
            out.append((item.role, item.text))
        elif isinstance(item, FunctionCallItem):
            out.append(("function_call", item.name))
            out.append(("function_call_output", item.output or ""))
    return out


async def _hear_greeting(host: CallHost) -> None:
    """Play the greeting out the way an ingress reports it: every millisecond of it, once the
    model finished it (μ-law, 8 bytes a ms). A caller who speaks before would cut it."""
    got = await collect(host, lambda got: any(isinstance(c, AudioDone) for c in got), "greeting")
    ms: dict[str, float] = {}
    for c in got:
        if isinstance(c, PlayAudio):
            ms[c.item_id] = ms.get(c.item_id, 0.0) + len(c.data) / 8
    host.feed([("c1", Played(item, 0, heard)) for item, heard in ms.items()])


def _created(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for event in events:
        if event["type"] != "conversation.item.create":
            continue
        item = event["item"]
        if item["type"] == "message":
            out.append((item["role"], "".join(p.get("text", "") for p in item["content"])))
        elif item["type"] == "function_call":
            out.append(("function_call", item["name"]))
        else:
            out.append(("function_call_output", item["output"]))
    return out


async def test_a_dropped_model_connection_reconnects_and_replays_the_conversation(
    model: LocalModelServer, wire: WireValidator
) -> None:
    events = ListEventSink()
    host = _host(model.url, events)
    await host.open_call(CallSpec("c1"))
    call = host.calls["c1"]
    # Greeting (heard out, as an ingress reports it), then the scripted caller turn that runs
    # lookup_order and is answered.
    await _hear_greeting(host)
    await _until(lambda: "transcript" in events.kinds("c1"), "greeting transcript")
    host.feed([("c1", speech(600)), ("c1", SILENCE)])
    await _until(
        lambda: (
            events.kinds("c1").count("transcript") >= 3 and "tool.returned" in events.kinds("c1")
        ),
        "the tool turn and its answer",
    )
    await _until(lambda: not call.transport.response_active, "the answer's end")
    expected = _expected_replay(call.session.history)
    assert [kind for kind, _ in expected] == [
        "assistant",
        "user",
        "function_call",
        "function_call_output",
        "assistant",
    ]
    host.outbox("").take()
    seen = len(wire.client_log)

    assert await model.drop_connections(1011, "overloaded") == 1
    await _until(lambda: events.kinds("c1").count("model.reconnected") == 1, "reconnect")

    reconnected = next(f for k, c, f in events.events if k == "model.reconnected" and c == "c1")
    assert reconnected["replayed"] == len(expected)
    assert reconnected["gap_ms"] < 2000
    # The new connection starts with the agent's configuration, then the conversation, by
    # content and in order.
    after = wire.client_log[seen:]
    assert after[0]["type"] == "session.update"
    assert after[0]["session"]["instructions"] == call.session.initial_config()["instructions"]
    assert _created(after) == expected
    assert list(host.calls) == ["c1"]
    assert not any(isinstance(c, CallEnded) for c in host.outbox("").take())

    # The call goes on over the new connection: the caller speaks, the model answers.
    host.feed([("c1", speech(600)), ("c1", SILENCE)])
    got = await collect(host, lambda got: any(isinstance(c, PlayAudio) for c in got), "answer")
    assert any(isinstance(c, PlayAudio) and c.call_id == "c1" for c in got)


async def test_a_model_that_comes_back_within_the_window_gets_the_call_back(
    wire: WireValidator,
) -> None:
    settings = LocalModelSettings(port=0, speed=20.0)
    first = LocalModelServer(settings, observer=wire)
    await first.start()
    port = int(first.url.split(":")[2].split("/")[0])
    events = ListEventSink()
    host = _host(first.url, events)
    await host.open_call(CallSpec("c1"))
    await _until(lambda: "transcript" in events.kinds("c1"), "greeting transcript")
    await first.stop()  # the model process is gone: connections drop, connects are refused
    await asyncio.sleep(1.0)  # several attempts fail meanwhile
    assert list(host.calls) == ["c1"]
    second = LocalModelServer(dataclasses.replace(settings, port=port), observer=wire)
    await second.start()
    try:
        await _until(lambda: "model.reconnected" in events.kinds("c1"), "reconnect")
        reconnected = next(f for k, _, f in events.events if k == "model.reconnected")
        assert reconnected["attempts"] >= 2 and reconnected["replayed"] >= 1
        assert 1000 <= reconnected["gap_ms"] < 4000
        host.feed([("c1", speech(600)), ("c1", SILENCE)])
        await collect(host, lambda got: any(isinstance(c, PlayAudio) for c in got), "answer")
    finally:
        await host.close_all("test_over")
        await second.stop()


async def test_a_model_that_stays_away_ends_that_call_alone(
    model: LocalModelServer, wire: WireValidator
) -> None:
    doomed = LocalModelServer(LocalModelSettings(port=0, speed=20.0), observer=wire)
    await doomed.start()
    events = ListEventSink()
    lonely = _host(doomed.url, events, reconnect_s=0.8)
    healthy = _host(model.url, ListEventSink())
    await lonely.open_call(CallSpec("a"))
    await healthy.open_call(CallSpec("b"))
    await doomed.stop()
    ended = await collect(lonely, lambda got: any(isinstance(c, CallEnded) for c in got), "end")
    assert CallEnded("a", "model_unavailable") in ended
    kinds = events.kinds("a")
    assert "model.disconnected" in kinds and "model.reconnected" not in kinds
    assert kinds[-1] == "call.ended"
    assert lonely.calls == {} and list(healthy.calls) == ["b"]
    assert healthy.calls["b"].transport.status == "connected"
    lonely.feed([("a", b"\xff" * 160)])  # a frame still in flight for the ended call
    assert lonely.stats().unknown_frames == 1


async def test_the_local_models_fault_knob_drops_each_connection_after_n_events(
    wire: WireValidator,
) -> None:
    # Every connection is closed with 1011 after 40 client events: a call streaming audio
    # loses its model about every 0.8 s and must come back each time.
    settings = LocalModelSettings(port=0, speed=20.0, drop_after_events=40)
    async with LocalModelServer(settings, observer=wire) as flaky:
        events = ListEventSink()
        host = _host(flaky.url, events)
        await host.open_call(CallSpec("c1", greet=False))
        frame = b"\xff" * 160
        async with asyncio.timeout(15 * TIMEOUT_FACTOR):
            while events.kinds("c1").count("model.reconnected") < 2:
                host.feed([("c1", frame)])
                await asyncio.sleep(0.02)
        assert list(host.calls) == ["c1"]
        await host.close_all("test_over")
