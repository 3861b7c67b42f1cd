"""CallHost with the local model on loopback: calls, tools, hang-up, isolation. No Ray, no Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from services.agents.registry import load_agents
from services.config import LocalModelSettings, ModelSettings, Secret
from services.errors import CallSetupError
from services.localmodel.server import LocalModelServer
from services.media.vocabulary import (
    CallEnded,
    CallerHungUp,
    CallSpec,
    ClearPlayback,
    Hangup,
    PlayAudio,
    PlaybackCut,
    Played,
)
from services.realtime.tools import InProcessToolRunner
from services.runtime.events import ListEventSink
from services.runtime.host import CallHost
from services.telephony.g711 import ulaw_encode
from tests.conftest import TIMEOUT_FACTOR
from tests.wire import WireValidator

pytestmark = pytest.mark.integration

MODEL = ModelSettings(api_key=Secret(""), url=None, model="gpt-realtime")


def speech(ms: int) -> bytes:
    t = np.arange(ms * 8) / 8000.0
    return ulaw_encode((np.sin(2 * np.pi * 300 * t) * 0.3 * 32767).astype(np.int16))


SILENCE = b"\xff" * 8 * 700


@pytest.fixture
async def model(wire: WireValidator) -> AsyncIterator[LocalModelServer]:
    async with LocalModelServer(LocalModelSettings(port=0, speed=20.0), observer=wire) as server:
        yield server


@pytest.fixture
def events() -> ListEventSink:
    return ListEventSink()


@pytest.fixture
def host(model: LocalModelServer, events: ListEventSink) -> CallHost:
    return CallHost(
        "h1",
        model=MODEL,
        model_url=model.url,
        agents=load_agents(),
        tool_runner=InProcessToolRunner(),
        events=events,
        capacity=10,
    )


async def collect(host: CallHost, until: Any, what: str) -> list[Any]:
    got: list[Any] = []
    async with asyncio.timeout(10 * TIMEOUT_FACTOR):
        while not until(got):
            await asyncio.sleep(0.02)
            got.extend(host.outbox("").take())  # what the channel would push to ingress ""
    return got


async def test_call_greets_runs_a_tool_and_hangs_up(host: CallHost, events: ListEventSink) -> None:
    setup = await host.open_call(CallSpec("c1", transport="test"))
    assert 0 < setup < 5
    out = await collect(host, lambda got: any(isinstance(c, PlayAudio) for c in got), "greeting")
    assert all(c.call_id == "c1" for c in out)
    # The default scenario's second turn calls lookup_order on the demo agent's tool.
    host.feed([("c1", speech(600)), ("c1", SILENCE)])
    async with asyncio.timeout(10 * TIMEOUT_FACTOR):
        while "tool.returned" not in events.kinds("c1"):
            await asyncio.sleep(0.02)
    returned = next(f for k, _, f in events.events if k == "tool.returned")
    assert returned["tool"] == "lookup_order" and returned["outcome"] == "ok"
    assert host.feed([("c1", CallerHungUp())]) == 0
    out = await collect(host, lambda got: any(isinstance(c, CallEnded) for c in got), "end")
    assert CallEnded("c1", "caller_hangup") in out
    assert host.calls == {}
    kinds = events.kinds("c1")
    assert kinds[0] == "call.started" and kinds[-1] == "call.ended"
    assert "transcript" in kinds and "tool.called" in kinds


def truncates(wire: WireValidator) -> list[dict[str, Any]]:
    return [e for e in wire.client_log if e["type"] == "conversation.item.truncate"]


async def test_barge_in_clears_then_truncates_at_what_the_ingress_saw_heard(
    host: CallHost, events: ListEventSink, wire: WireValidator
) -> None:
    await host.open_call(CallSpec("c1"))
    got = await collect(host, lambda got: sum(isinstance(c, PlayAudio) for c in got) > 10, "audio")
    item = next(c.item_id for c in got if isinstance(c, PlayAudio))
    host.feed([("c1", Played(item, 0, 100.0)), ("c1", speech(400))])
    out = await collect(host, lambda got: ClearPlayback("c1") in got, "clear")
    assert ClearPlayback("c1") in out
    assert "interrupted" in events.kinds("c1")
    await asyncio.sleep(0.1)
    assert truncates(wire) == []  # waits for the ingress's figure, fresher than our 100 ms
    host.feed([("c1", PlaybackCut(((item, 0, 140),)))])
    async with asyncio.timeout(5 * TIMEOUT_FACTOR):
        while not truncates(wire):
            await asyncio.sleep(0.01)
    assert [(e["item_id"], e["audio_end_ms"]) for e in truncates(wire)] == [(item, 140)]


async def test_barge_in_truncates_from_its_own_tracker_when_the_ingress_never_answers(
    host: CallHost, wire: WireValidator
) -> None:
    await host.open_call(CallSpec("c1"))
    got = await collect(host, lambda got: sum(isinstance(c, PlayAudio) for c in got) > 10, "audio")
    item = next(c.item_id for c in got if isinstance(c, PlayAudio))
    host.feed([("c1", Played(item, 0, 80.0)), ("c1", speech(400))])
    await collect(host, lambda got: ClearPlayback("c1") in got, "clear")
    async with asyncio.timeout(5 * TIMEOUT_FACTOR):
        while not truncates(wire):
            await asyncio.sleep(0.01)
    assert [(e["item_id"], e["audio_end_ms"]) for e in truncates(wire)] == [(item, 80)]


async def test_unreachable_model_fails_one_call_only(
    host: CallHost, model: LocalModelServer
) -> None:
    await host.open_call(CallSpec("ok"))
    broken = CallHost(
        "h2",
        model=MODEL,
        model_url="ws://127.0.0.1:9/v1/realtime",
        agents=load_agents(),
        tool_runner=InProcessToolRunner(),
        events=ListEventSink(),
    )
    with pytest.raises(CallSetupError) as info:
        await broken.open_call(CallSpec("bad"))
    assert info.value.reason == "model_unreachable" and broken.calls == {}
    with pytest.raises(CallSetupError, match="already open"):
        await host.open_call(CallSpec("ok"))
    assert list(host.calls) == ["ok"]


async def test_hang_up_tool_ends_the_call_after_goodbye(
    model: LocalModelServer, tmp_path: Any
) -> None:
    scenario = tmp_path / "bye.json"
    scenario.write_text(
        '{"steps": [{"tool": {"name": "hang_up", "arguments": {}}, "then": "Goodbye!"}]}'
    )
    async with LocalModelServer(
        LocalModelSettings(port=0, speed=20.0, scenario=str(scenario))
    ) as m:
        host = CallHost(
            "h1",
            model=MODEL,
            model_url=m.url,
            agents=load_agents(),
            tool_runner=InProcessToolRunner(),
            events=ListEventSink(),
        )
        await host.open_call(CallSpec("c1"))
        out = await collect(host, lambda got: any(isinstance(c, CallEnded) for c in got), "end")
    hangup = next(c for c in out if isinstance(c, Hangup))
    assert hangup.reason == "agent_hangup"
    # The goodbye was sent before the hang-up command.
    assert any(isinstance(c, PlayAudio) for c in out[: out.index(hangup)])
    assert out[-1] == CallEnded("c1", "agent_hangup")


@pytest.mark.parametrize("to_model", [True, False])
async def test_dtmf_is_a_call_event_and_reaches_the_model_only_when_the_agent_asks(
    model: LocalModelServer, wire: WireValidator, to_model: bool
) -> None:
    from services.agents.registry import AgentRegistry
    from services.media.vocabulary import Dtmf
    from services.realtime.agent import RealtimeAgent

    events = ListEventSink()
    agent = RealtimeAgent(name="Keys", dtmf_to_model=to_model)
    host = CallHost(
        "h1",
        model=MODEL,
        model_url=model.url,
        agents=AgentRegistry({"Keys": agent}, "Keys"),
        tool_runner=InProcessToolRunner(),
        events=events,
    )
    await host.open_call(CallSpec("c1", greet=False))
    assert host.feed([("c1", Dtmf("7"))]) == 0

    def told() -> bool:
        return any(
            e["type"] == "conversation.item.create"
            and "pressed the key 7" in json.dumps(e.get("item"))
            for e in wire.client_log
        )

    async with asyncio.timeout(10 * TIMEOUT_FACTOR):
        while "dtmf" not in events.kinds("c1") or (to_model and not told()):
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    assert told() is to_model
    assert ("dtmf", "c1", {"digit": "7"}) in events.events
    await host.close_all("test_end")


async def test_caller_audio_is_appended_to_the_model_once_append_ms_has_gathered(
    model: LocalModelServer, wire: WireValidator
) -> None:
    import base64

    host = CallHost(
        "h1",
        model=MODEL,
        model_url=model.url,
        agents=load_agents(),
        tool_runner=InProcessToolRunner(),
        events=ListEventSink(),
        append_ms=60,
    )
    await host.open_call(CallSpec("c1", greet=False))
    frames = [bytes([n]) * 160 for n in range(7)]  # seven 20 ms μ-law frames, told apart
    assert host.feed([("c1", f) for f in frames]) == 0

    def appended() -> list[bytes]:
        return [
            base64.b64decode(e["audio"])
            for e in wire.client_log
            if e["type"] == "input_audio_buffer.append"
        ]

    async with asyncio.timeout(5 * TIMEOUT_FACTOR):
        while len(appended()) < 2:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    # Two appends of 60 ms, in order; the seventh frame waits for the next two.
    assert appended() == [b"".join(frames[0:3]), b"".join(frames[3:6])]
    await host.close_all("test_end")


async def test_an_agent_line_cut_short_is_written_once_with_what_the_caller_heard(
    host: CallHost, events: ListEventSink, wire: WireValidator
) -> None:
    # The model sends the greeting's transcript long before the caller has heard it: the call
    # log must not say the agent said what the caller never heard.
    await host.open_call(CallSpec("c1"))
    got = await collect(host, lambda got: sum(isinstance(c, PlayAudio) for c in got) > 10, "audio")
    item = next(c.item_id for c in got if isinstance(c, PlayAudio))
    assert not [f for k, _c, f in events.events if k == "transcript"]  # held, not yet heard
    host.feed([("c1", Played(item, 0, 100.0)), ("c1", speech(400))])
    await collect(host, lambda got: ClearPlayback("c1") in got, "clear")
    host.feed([("c1", PlaybackCut(((item, 0, 140),)))])

    def lines() -> list[dict[str, Any]]:
        return [f for k, _c, f in events.events if k == "transcript" and f["role"] == "assistant"]

    async with asyncio.timeout(5 * TIMEOUT_FACTOR):
        while not lines():
            await asyncio.sleep(0.01)
    [line] = lines()
    assert line["item_id"] == item and line["text"]
    assert line["interrupted"] is True and line["heard_ms"] == 140
    assert line["audio_ms"] > 140


async def test_a_call_at_its_longest_ends_with_the_agents_goodbye(
    model: LocalModelServer, events: ListEventSink, wire: WireValidator
) -> None:
    capped = CallHost(
        "h1",
        model=MODEL,
        model_url=model.url,
        agents=load_agents(),
        tool_runner=InProcessToolRunner(),
        events=events,
        capacity=10,
        max_call_s=0.5,
    )
    await capped.open_call(CallSpec("c1"))
    got = await collect(capped, lambda got: any(isinstance(c, Hangup) for c in got), "hang-up")
    assert [c.reason for c in got if isinstance(c, Hangup)] == ["max_duration"]
    # The goodbye was asked of the model first (the response marked as ours).
    assert any(
        e["type"] == "response.create"
        and (e.get("response") or {}).get("metadata", {}).get("callray") == "goodbye"
        for e in wire.client_log
    )
    async with asyncio.timeout(5 * TIMEOUT_FACTOR):
        while capped.calls:
            await asyncio.sleep(0.02)
    assert [f["reason"] for k, c, f in events.events if k == "call.ended"] == ["max_duration"]
