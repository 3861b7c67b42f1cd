"""The local model's SIP call registry in virtual time: what the SIP front is told, in which
state each call ends, and the engine side of an accepted call (μ-law in and out, DTMF)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.localmodel.engine import RealtimeEngine
from services.localmodel.session_io import SessionIO
from services.localmodel.sip_calls import (
    Answer,
    Bye,
    CallNotFound,
    FrontCommand,
    Refer,
    Reject,
    SipCalls,
    TimedOut,
)
from services.localmodel.sip_session import FRAME_BYTES, SipSession
from services.localmodel.speech import SpeechSynthesizer
from services.telephony.g711 import ulaw_encode
from tests.virtual_time import FakeClock

INVITE = [
    ("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1"),
    ("From", "<sip:+14155550100@carrier.example>;tag=a"),
    ("Proxy-Authorization", 'Digest username="trunk"'),
    ("To", "<sip:+18005550100@example.com>"),
]


def io() -> SessionIO:
    return SessionIO(SpeechSynthesizer(None), None)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def front(clock: FakeClock) -> tuple[SipCalls, list[FrontCommand]]:
    calls = SipCalls(session_io=io, timers=clock)
    told: list[FrontCommand] = []
    calls.add_listener(told.append)
    return calls, told


async def test_a_call_not_accepted_in_10_s_times_out_and_cannot_be_accepted_then(
    front: tuple[SipCalls, list[FrontCommand]], clock: FakeClock
) -> None:
    calls, told = front
    call_id = calls.incoming(INVITE)
    assert call_id.startswith("rtc_") and calls.state(call_id) == "pending"
    assert [n for n, _ in calls.calls[call_id].sip_headers] == ["Via", "From", "To"]
    clock.advance(9.99)
    assert told == [] and calls.state(call_id) == "pending"
    clock.advance(0.02)
    assert told == [TimedOut(call_id)] and calls.state(call_id) == "timed_out"
    with pytest.raises(CallNotFound):
        calls.accept(call_id, RealtimeEngine(mode="echo"))


async def test_accept_answers_once_and_stops_the_deadline(
    front: tuple[SipCalls, list[FrontCommand]], clock: FakeClock
) -> None:
    calls, told = front
    call_id = calls.incoming(INVITE)
    session = calls.accept(call_id, RealtimeEngine(mode="echo"))
    assert told == [Answer(call_id, session)] and calls.session(call_id) is session
    clock.advance(60)
    assert calls.state(call_id) == "accepted"  # no timeout after the accept
    with pytest.raises(CallNotFound):
        calls.accept(call_id, RealtimeEngine(mode="echo"))  # the first accept wins
    with pytest.raises(CallNotFound):
        calls.reject(call_id)
    calls.refer(call_id, "tel:+14155550123")
    calls.hangup(call_id)
    assert told[1:] == [Refer(call_id, "tel:+14155550123"), Bye(call_id)]
    assert calls.state(call_id) == "ended" and session.end_reason == "hung up"
    with pytest.raises(CallNotFound):
        calls.hangup(call_id)


async def test_cancel_reject_and_bye_end_calls_in_their_own_states(
    front: tuple[SipCalls, list[FrontCommand]],
) -> None:
    calls, told = front
    cancelled, rejected, declined, live = (calls.incoming(INVITE) for _ in range(4))
    calls.cancelled(cancelled)
    calls.reject(rejected, 486)
    calls.hangup(declined)  # a pending call hung up at the model is declined
    session = calls.accept(live, RealtimeEngine(mode="echo"))
    calls.caller_hung_up(live)
    assert [calls.state(c) for c in (cancelled, rejected, declined, live)] == [
        "cancelled",
        "rejected",
        "rejected",
        "ended",
    ]
    assert told == [Reject(rejected, 486), Reject(declined, 603), Answer(live, session)]
    assert session.end_reason == "caller hung up"
    for call_id in (cancelled, live):
        with pytest.raises(CallNotFound):
            calls.accept(call_id, RealtimeEngine(mode="echo"))


class Sideband:
    def __init__(self) -> None:
        self.events: list[dict[str, object]] = []
        self.closed = False

    def send(self, text: str) -> None:
        self.events.append(json.loads(text))

    def close(self) -> None:
        self.closed = True


def tone(ms: int) -> bytes:
    t = np.arange(ms * 8) / 8000.0
    return ulaw_encode((np.sin(2 * np.pi * 440 * t) * 0.4 * 32767).astype(np.int16))


async def test_the_session_echoes_mulaw_every_20_ms_and_reports_dtmf(clock: FakeClock) -> None:
    config = {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}}}}
    engine = RealtimeEngine(mode="echo", session_configs=[config])
    session = SipSession("rtc_1", engine, io(), clock=clock, timers=clock, unix_clock=lambda: 7.0)
    sideband = Sideband()
    session.add_listener(sideband)
    frames: list[bytes] = []
    session.start_audio(frames.append)
    assert frames == [b"\xff" * FRAME_BYTES]  # silence while the model is quiet
    for _ in range(25):
        session.caller_audio(tone(20))
        clock.advance(0.02)
    assert len(frames) == 26 and all(len(f) == FRAME_BYTES for f in frames)
    assert any(f != b"\xff" * FRAME_BYTES for f in frames)  # the echo came back
    session.dtmf("5")
    session.dtmf("x")  # not a key: ignored
    dtmf = [e for e in sideband.events if e["type"] == "input_audio_buffer.dtmf_event_received"]
    assert dtmf == [
        {"type": "input_audio_buffer.dtmf_event_received", "event": "5", "received_at": 7}
    ]
    assert "output_audio_buffer.started" in [e["type"] for e in sideband.events]
    session.end("hung up")
    assert sideband.closed
    clock.advance(1.0)
    assert len(frames) == 26  # no audio after the end
