"""The engine's interface for a media track (WebRTC): audio appended from the track, a session
configured before ``session.created``, and truncation at what the track played."""

from __future__ import annotations

import base64

import pytest

from services.localmodel.audio import PCM, PCMU, AudioConverter
from services.localmodel.engine import RealtimeEngine
from services.localmodel.validation import InvalidRequest
from tests.unit.test_localmodel_engine import Harness, of_type, silence, tone
from tests.wire import WireValidator


def test_track_audio_is_appended_in_the_sessions_input_format(wire: WireValidator) -> None:
    h = Harness(wire, mode="echo")
    h.update(audio={"input": {"format": {"type": "audio/pcmu"}}})
    pcm = silence(100) + tone(200)  # what the track reader hands over: 24 kHz PCM16
    step = PCM.bytes_for_ms(20)
    frames = [pcm[i : i + step] for i in range(0, len(pcm), step)]
    out = []
    for frame in frames:
        h.engine.append_audio(frame, h.now)
        out += h.drain()
    # The echo is each frame converted twice (track → μ-law input → PCM output), in order.
    to_input, to_output = AudioConverter(PCM, PCMU), AudioConverter(PCMU, PCM)
    expected = b"".join(to_output.feed(to_input.feed(frame)) for frame in frames)
    deltas = of_type(out, "response.output_audio.delta")
    assert b"".join(base64.b64decode(d["delta"]) for d in deltas) == expected
    assert len(expected) == PCM.bytes_for_ms(300)
    assert of_type(out, "input_audio_buffer.speech_started")  # the VAD heard it
    assert not of_type(out, "error")


def test_session_configs_are_applied_in_order_before_session_created(wire: WireValidator) -> None:
    key = {"type": "realtime", "instructions": "Be long.", "output_modalities": ["text"]}
    call = {"type": "realtime", "instructions": "Be brief."}
    h = Harness(wire, session_configs=[key, call])
    (created,) = [event for _, event in h.log]
    assert created["type"] == "session.created"
    assert created["session"]["instructions"] == "Be brief."
    assert created["session"]["output_modalities"] == ["text"]


def test_a_session_config_the_engine_refuses_raises(wire: WireValidator) -> None:
    with pytest.raises(InvalidRequest) as info:
        RealtimeEngine(session_configs=[{"type": "realtime", "voice": "ash"}])
    assert info.value.param == "session.voice"


def test_truncate_heard_cuts_a_finished_item_and_refuses_quietly(wire: WireValidator) -> None:
    h = Harness(wire)
    h.send({"type": "response.create"})
    events = h.run()
    item_id = of_type(events, "response.done")[0]["response"]["output"][0]["id"]
    assert not h.engine.truncate_heard("item_unknown", 0, 100)
    assert h.engine.truncate_heard(item_id, 0, 100)
    stored = h.engine.conversation.get(item_id)
    assert len(stored.audio[0]) == PCM.bytes_for_ms(100)
    assert not h.drain()  # no event: the server did it, not the client
