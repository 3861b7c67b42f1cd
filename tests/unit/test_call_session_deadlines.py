"""CallSession's two deadlines, in virtual time: the hang-up/transfer grace (the agent's last words
play first, 10 s at most) and the barge-in cut wait (the ingress's heard point, or our tracker's
after 0.5 s). The model is an in-memory socket; nothing sleeps."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping
from typing import Any

import pytest

from services.config import ModelSettings, Secret
from services.media.vocabulary import (
    CallEnded,
    CallSpec,
    ClearPlayback,
    Command,
    Hangup,
    PlaybackCut,
    Played,
    Transfer,
)
from services.realtime.agent import RealtimeAgent
from services.realtime.tools import InProcessToolRunner
from services.runtime.call_session import (
    CONTROL_GRACE_S,
    PLAYBACK_CUT_WAIT_S,
    CallSession,
)
from services.runtime.events import ListEventSink
from tests.realtime_helpers import audio_delta, response_created, response_done
from tests.virtual_time import FakeClock


class ModelSocket:
    """The model's end as an in-memory socket: what the session sends is kept, what the test
    feeds is what the session receives."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self._inbox: asyncio.Queue[str] = asyncio.Queue()

    async def send(self, message: str) -> None:
        self.sent.append(json.loads(message))

    async def recv(self) -> str:
        return await self._inbox.get()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        pass

    def truncates(self) -> list[tuple[str, int]]:
        return [
            (e["item_id"], e["audio_end_ms"])
            for e in self.sent
            if e["type"] == "conversation.item.truncate"
        ]

    async def feed(self, *events: dict[str, Any]) -> None:
        for event in events:
            self._inbox.put_nowait(json.dumps(event))
        await _settle()


async def _settle() -> None:
    # The transport's reader and writer are tasks: let them run (no time passes).
    for _ in range(10):
        await asyncio.sleep(0)


class Call:
    def __init__(self, clock: FakeClock) -> None:
        self.socket = ModelSocket()
        self.commands: list[Command] = []
        self.ended: list[str] = []

        async def create_websocket(_url: str, _headers: Mapping[str, str]) -> ModelSocket:
            return self.socket

        self.session = CallSession(
            CallSpec("CA1", transport="twilio", audio_format="audio/pcmu", greet=False),
            RealtimeAgent(name="agent", instructions="Help."),
            model=ModelSettings(Secret(""), None, "gpt-realtime"),
            model_url="ws://model.invalid/v1/realtime",
            tool_runner=InProcessToolRunner(),
            out=self.commands.append,
            events=ListEventSink(),
            on_end=lambda _call, reason: self.ended.append(reason),
            clock=clock,
            timers=clock,
            create_websocket=create_websocket,
        )

    def of(self, kind: type) -> list[Command]:
        return [c for c in self.commands if isinstance(c, kind)]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def _playing(clock: FakeClock, heard_ms: int) -> Call:
    """A call whose model sent 400 ms of audio for ``it_1``, of which ``heard_ms`` is reported
    played, when the caller starts speaking."""
    call = Call(clock)
    await call.session.start()
    audio = base64.b64encode(b"\xff" * 3200).decode()  # 400 ms of 8 kHz mu-law
    await call.socket.feed(response_created(), audio_delta("it_1", audio))
    call.session.push(Played("it_1", 0, heard_ms))
    await call.socket.feed(
        {
            "type": "input_audio_buffer.speech_started",
            "event_id": "e",
            "audio_start_ms": 0,
            "item_id": "in_1",
        }
    )
    return call


async def test_barge_in_waits_for_the_ingress_heard_point(clock: FakeClock) -> None:
    call = await _playing(clock, heard_ms=100)
    assert call.of(ClearPlayback), "playback stops at once"
    assert call.socket.truncates() == [], "the truncate waits for what the caller heard"
    clock.advance(0.2)
    # The ingress saw more played than the tracker had been told when it sent the clear.
    call.session.push(PlaybackCut((("it_1", 0, 240),)))
    await _settle()
    assert call.socket.truncates() == [("it_1", 240)]
    clock.advance(PLAYBACK_CUT_WAIT_S)  # the fallback was cancelled: no second truncate
    await _settle()
    assert call.socket.truncates() == [("it_1", 240)]


async def test_barge_in_without_an_answer_truncates_at_the_tracker_after_the_wait(
    clock: FakeClock,
) -> None:
    call = await _playing(clock, heard_ms=100)
    clock.advance(PLAYBACK_CUT_WAIT_S - 0.01)
    await _settle()
    assert call.socket.truncates() == []
    clock.advance(0.01)
    await _settle()
    assert call.socket.truncates() == [("it_1", 100)]


async def test_hang_up_waits_for_the_goodbye_to_finish(clock: FakeClock) -> None:
    call = Call(clock)
    await call.session.start()
    await call.socket.feed(response_created())
    call.session.hang_up()  # as the hang-up tool does, from the tool's thread or loop
    await _settle()
    clock.advance(CONTROL_GRACE_S - 1)
    await _settle()
    assert call.of(Hangup) == [] and call.ended == []
    await call.socket.feed(response_done())  # the goodbye has been said
    assert call.of(Hangup) == [Hangup("CA1", "agent_hangup")]
    assert call.ended == ["agent_hangup"]
    assert call.of(CallEnded) == [CallEnded("CA1", "agent_hangup")]


async def test_transfer_happens_after_the_grace_when_the_model_never_finishes(
    clock: FakeClock,
) -> None:
    call = Call(clock)
    await call.session.start()
    await call.socket.feed(response_created())
    call.session.transfer("tel:+15550100")
    await _settle()
    clock.advance(CONTROL_GRACE_S - 0.01)
    await _settle()
    assert call.of(Transfer) == []
    clock.advance(0.01)
    await _settle()
    assert call.of(Transfer) == [Transfer("CA1", "tel:+15550100")]
    assert call.ended == ["transferred"]
