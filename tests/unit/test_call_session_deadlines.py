"""CallSession's deadlines, in virtual time: the hang-up/transfer grace (the agent's last words
play first, 10 s at most), the barge-in cut wait (the ingress's heard point, or our tracker's
after 0.5 s) and the model reconnect (back-off from 250 ms, replay, give up after
``reconnect_s``). The model is an in-memory socket; nothing sleeps."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import random
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
    GOODBYE_GRACE_S,
    PLAYBACK_CUT_WAIT_S,
    CallSession,
    reconnect_delay,
)
from services.runtime.conversations import MemoryConversations
from services.runtime.events import ListEventSink
from tests.realtime_helpers import audio_delta, response_created, response_done
from tests.virtual_time import FakeClock


class Dropped(Exception):
    """The connection broke (what websockets raises as ConnectionClosedError)."""


class ModelSocket:
    """The model's end as an in-memory socket: what the session sends is kept, what the test
    feeds is what the session receives; :meth:`drop` breaks it."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self._inbox: asyncio.Queue[str | Exception] = asyncio.Queue()

    async def send(self, message: str) -> None:
        self.sent.append(json.loads(message))

    async def recv(self) -> str:
        got = await self._inbox.get()
        if isinstance(got, Exception):
            raise got
        return got

    async def drop(self) -> None:
        self._inbox.put_nowait(Dropped("1011 server error"))
        await _settle()

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


async def _run_for(clock: FakeClock, seconds: float, step: float = 0.01) -> None:
    """Let ``seconds`` of virtual time pass in small steps, the tasks running after each."""
    for _ in range(round(seconds / step)):
        clock.advance(step)
        await _settle()


class Call:
    def __init__(
        self,
        clock: FakeClock,
        reconnect_s: float = 10.0,
        spec: CallSpec | None = None,
        conversations: MemoryConversations | None = None,
        agent: RealtimeAgent | None = None,
    ) -> None:
        self.socket = ModelSocket()
        self.sockets = [self.socket]
        self.refuse = False  # the model server is away: connects fail
        self.connects: list[float] = []  # when each connect was tried, on the virtual clock
        self.commands: list[Command] = []
        self.ended: list[str] = []
        self.events = ListEventSink()

        async def create_websocket(_url: str, _headers: Mapping[str, str]) -> ModelSocket:
            self.connects.append(clock())
            if self.refuse:
                raise ConnectionRefusedError("connection refused")
            if len(self.connects) > 1:
                self.socket = ModelSocket()
                self.sockets.append(self.socket)
            return self.socket

        self.session = CallSession(
            spec or CallSpec("CA1", transport="twilio", audio_format="audio/pcmu", greet=False),
            agent or RealtimeAgent(name="agent", instructions="Help."),
            model=ModelSettings(Secret(""), None, "gpt-realtime", reconnect_s=reconnect_s),
            model_url="ws://model.invalid/v1/realtime",
            tool_runner=InProcessToolRunner(),
            out=self.commands.append,
            events=self.events,
            on_end=lambda _call, reason: self.ended.append(reason),
            clock=clock,
            timers=clock,
            create_websocket=create_websocket,
            rng=random.Random(7),
            conversations=conversations,
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


def test_reconnect_back_off_starts_within_250_ms_and_stays_under_2_s() -> None:
    rng = random.Random(1)
    for _ in range(200):
        assert 0.0 < reconnect_delay(0, rng) <= 0.25
        assert all(0.0 < reconnect_delay(n, rng) <= 2.0 for n in range(1, 12))
    assert max(reconnect_delay(1, rng) for _ in range(200)) <= 0.5


async def test_a_dropped_model_connection_reconnects_and_replays(clock: FakeClock) -> None:
    call = await _playing(clock, heard_ms=400)  # the caller heard the whole greeting
    await call.socket.feed(
        {
            "type": "response.output_audio_transcript.delta",
            "event_id": "e",
            "response_id": "resp_1",
            "item_id": "it_1",
            "output_index": 0,
            "content_index": 0,
            "delta": "Hello, how can I help?",
        }
    )
    old = call.socket
    await old.drop()
    assert call.events.kinds()[-1] == "model.disconnected"
    call.session.push_media(b"\xff" * 160)  # in the gap: there is no model to hear it
    clock.advance(0.25)
    await _settle()
    assert len(call.connects) == 2 and call.connects[1] - call.connects[0] <= 0.25
    new = call.socket
    assert new is not old
    assert [e["type"] for e in new.sent] == ["session.update", "conversation.item.create"]
    assert new.sent[1]["item"] == {
        "type": "message",
        "id": "it_1",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "Hello, how can I help?"}],
    }
    assert not any(e["type"] == "input_audio_buffer.append" for e in old.sent + new.sent)
    reconnected = [f for k, _, f in call.events.events if k == "model.reconnected"]
    assert len(reconnected) == 1
    assert reconnected[0]["attempts"] == 1 and reconnected[0]["replayed"] == 1
    assert reconnected[0]["gap_ms"] <= 250
    call.session.push_media(b"\xff" * 160)  # after it, audio flows again
    await _settle()
    assert new.sent[-1]["type"] == "input_audio_buffer.append"
    assert call.ended == []


async def test_a_model_that_stays_away_ends_the_call_after_reconnect_s(clock: FakeClock) -> None:
    call = Call(clock, reconnect_s=3.0)
    await call.session.start()
    call.refuse = True
    await call.socket.drop()
    lost_at = clock()
    await _run_for(clock, 2.95)
    assert call.ended == []
    waits = [b - a for a, b in itertools.pairwise([lost_at, *call.connects[1:]])]
    assert len(waits) >= 3, "retried while the window lasted"
    assert waits[0] <= 0.25 + 0.01 and max(waits) <= 2.0 + 0.01
    await _run_for(clock, 0.1)
    assert call.ended == ["model_unavailable"]
    assert call.of(CallEnded) == [CallEnded("CA1", "model_unavailable")]


def _done_with(metadata: dict[str, str] | None, response_id: str = "resp_2") -> dict[str, Any]:
    done = response_done(response_id)
    if metadata is not None:
        done["response"]["metadata"] = metadata
    return done


async def test_a_stopping_node_has_the_agent_say_goodbye_then_hangs_up(clock: FakeClock) -> None:
    call = Call(clock)
    await call.session.start()
    await call.socket.feed(response_created())  # the agent is mid-sentence
    call.session.say_goodbye("shutdown")
    await _settle()
    sent = [e["type"] for e in call.socket.sent]
    assert "response.cancel" in sent
    await call.socket.feed(response_done(status="cancelled"))  # not the goodbye: no hang-up
    assert call.of(Hangup) == []
    goodbye = [e for e in call.socket.sent if e["type"] == "response.create"][-1]
    assert goodbye["response"]["metadata"] == {"callray": "goodbye"}
    assert "goodbye" in goodbye["response"]["instructions"]
    await call.socket.feed(response_created("resp_2"), _done_with({"callray": "goodbye"}))
    assert call.of(Hangup) == [Hangup("CA1", "shutdown")]
    await _settle()
    assert call.ended == ["shutdown"]


async def test_a_goodbye_the_model_never_finishes_still_ends_the_call(clock: FakeClock) -> None:
    call = Call(clock)
    await call.session.start()
    call.session.say_goodbye("shutdown")
    await _run_for(clock, GOODBYE_GRACE_S - 0.1)
    assert call.of(Hangup) == []
    await _run_for(clock, 0.2)
    assert call.of(Hangup) == [Hangup("CA1", "shutdown")] and call.ended == ["shutdown"]


async def test_a_resumed_call_replays_its_record_and_skips_what_does_not_parse(
    clock: FakeClock,
) -> None:
    store = MemoryConversations()
    await store.claim("CA1")
    good = {
        "type": "message",
        "id": "it_1",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "Hello."}],
    }
    assert await store.save("CA1", 1, [{"type": "message", "role": 7}, good])
    spec = CallSpec("CA1", transport="twilio", greet=False, resumed=True)
    call = Call(clock, spec=spec, conversations=store)
    await call.session.start()
    await _settle()
    created = [e["item"] for e in call.socket.sent if e["type"] == "conversation.item.create"]
    assert created == [good]
    resume = [e for e in call.socket.sent if e["type"] == "response.create"]
    assert resume and resume[0]["response"]["instructions"].startswith("The line dropped")
    assert await store.claim("CA1") == 3  # the resumed session took epoch 2


async def test_a_model_that_stays_away_transfers_where_the_agent_says(clock: FakeClock) -> None:
    agent = RealtimeAgent(name="agent", instructions="Help.", fallback_transfer="tel:+15550100")
    call = Call(clock, reconnect_s=1.0, agent=agent)
    await call.session.start()
    call.refuse = True
    await call.socket.drop()
    await _run_for(clock, 1.1)
    assert call.of(Transfer) == [Transfer("CA1", "tel:+15550100")]
    assert call.ended == ["model_unavailable_transferred"]
