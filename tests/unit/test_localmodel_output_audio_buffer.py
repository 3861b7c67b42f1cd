"""The WebRTC output audio buffer, sans-I/O: engine events in, channel events and playout
frames out, time advanced one track frame at a time."""

from __future__ import annotations

import base64
import itertools
from typing import Any

import numpy as np

from services.localmodel.audio import PCM, PCMU, AudioFormat, encode
from services.localmodel.output_audio_buffer import OutputAudioBuffer
from services.media.playout import PCM24K, Playout
from tests.wire import validate_server_event

FRAME_BYTES = PCM24K.frame_bytes
FRAME_MS = PCM24K.frame_ms


class Harness:
    def __init__(self) -> None:
        self.playout = Playout(report_ms=FRAME_MS)
        counter = itertools.count(1)
        self.buffer = OutputAudioBuffer(self.playout, lambda kind: f"{kind}_{next(counter)}")
        self.sent: list[dict[str, Any]] = []
        self.frames: list[bytes] = []

    def route(self, event: dict[str, Any]) -> None:
        event = {"event_id": "event_x", **event}
        self.sent += self.buffer.route(event)

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            pcm, played = self.playout.next_frame()
            self.frames.append(pcm)
            self.sent += self.buffer.played(played)

    def kinds(self) -> list[str]:
        return [e["type"] for e in self.sent]

    def respond(self, response_id: str, fmt: AudioFormat, audio: bytes, item_id: str) -> None:
        """response.created, its audio as deltas of 20 ms, output_audio.done."""
        self.route(_created(response_id, fmt))
        step = fmt.bytes_for_ms(20)
        for i in range(0, len(audio), step):
            self.route(_delta(response_id, item_id, audio[i : i + step]))
        self.route(
            {
                "type": "response.output_audio.done",
                "response_id": response_id,
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
            }
        )


def _created(response_id: str, fmt: AudioFormat) -> dict[str, Any]:
    audio = {"output": {"format": fmt.to_wire(), "voice": "marin"}}
    return {"type": "response.created", "response": {"id": response_id, "audio": audio}}


def _delta(response_id: str, item_id: str, audio: bytes) -> dict[str, Any]:
    return {
        "type": "response.output_audio.delta",
        "response_id": response_id,
        "item_id": item_id,
        "output_index": 0,
        "content_index": 0,
        "delta": base64.b64encode(audio).decode(),
    }


def _done(response_id: str, status: str = "completed", reason: str | None = None) -> dict[str, Any]:
    details = {"type": status, "reason": reason} if reason else None
    response = {"id": response_id, "status": status, "status_details": details}
    return {"type": "response.done", "response": response}


def _tone(ms: int, fmt: AudioFormat) -> bytes:
    t = np.arange(fmt.rate * ms // 1000) / fmt.rate
    return encode((np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16), fmt)


def test_deltas_go_to_the_track_and_started_stopped_bracket_the_playback() -> None:
    h = Harness()
    h.respond("resp_1", PCM, _tone(100, PCM), "item_1")
    assert h.kinds() == ["response.created", "response.output_audio.done"]  # no deltas
    h.tick()
    assert h.kinds()[-1] == "output_audio_buffer.started"  # with the first frame played
    h.tick(4)
    assert "output_audio_buffer.stopped" not in h.kinds()  # played out, but not done yet
    h.route(_done("resp_1"))
    assert h.kinds()[-2:] == ["response.done", "output_audio_buffer.stopped"]
    assert b"".join(h.frames) == _tone(100, PCM)
    for event in h.sent[-1:] + [e for e in h.sent if e["type"].startswith("output_audio_b")]:
        validate_server_event(event)
        assert event["response_id"] == "resp_1"


def test_stopped_waits_for_the_track_when_the_response_is_done_first() -> None:
    h = Harness()
    h.respond("resp_1", PCM, _tone(60, PCM), "item_1")
    h.route(_done("resp_1"))
    h.tick(2)
    assert h.kinds().count("output_audio_buffer.stopped") == 0
    h.tick()
    assert h.kinds()[-1] == "output_audio_buffer.stopped"
    h.tick(3)  # silence after: nothing more
    assert h.kinds().count("output_audio_buffer.stopped") == 1
    assert h.frames[-1] == bytes(FRAME_BYTES)


def test_g711_output_is_converted_to_the_tracks_pcm() -> None:
    h = Harness()
    h.respond("resp_1", PCMU, _tone(40, PCMU), "item_1")
    h.route(_done("resp_1"))
    h.tick(3)
    assert h.kinds()[-1] == "output_audio_buffer.stopped"
    assert all(len(f) == FRAME_BYTES for f in h.frames)
    assert np.abs(np.frombuffer(h.frames[0], "<i2")).max() > 4000  # the tone, at 24 kHz


def test_a_response_behind_another_starts_when_its_audio_plays() -> None:
    h = Harness()
    h.respond("resp_1", PCM, _tone(40, PCM), "item_1")
    h.route(_done("resp_1"))
    h.respond("resp_2", PCM, _tone(40, PCM), "item_2")
    h.route(_done("resp_2"))
    h.tick(4)
    shown = [(e["type"], e["response_id"]) for e in h.sent if e["type"].startswith("output_")]
    assert shown == [
        ("output_audio_buffer.started", "resp_1"),
        ("output_audio_buffer.stopped", "resp_1"),
        ("output_audio_buffer.started", "resp_2"),
        ("output_audio_buffer.stopped", "resp_2"),
    ]


def test_clear_empties_the_track_and_says_what_was_heard() -> None:
    h = Harness()
    h.respond("resp_1", PCM, _tone(200, PCM), "item_1")
    h.tick(3)
    events, heard = h.buffer.clear()
    assert [e["type"] for e in events] == ["output_audio_buffer.cleared"]
    assert events[0]["response_id"] == "resp_1"
    assert heard == [("item_1", 0, 60)]
    h.route(_delta("resp_1", "item_1", _tone(20, PCM)))  # the response goes on: dropped
    h.tick(2)
    assert h.frames[-2:] == [bytes(FRAME_BYTES)] * 2
    h.route(_done("resp_1"))
    assert "output_audio_buffer.stopped" not in h.kinds()
    assert h.buffer.clear() == ([], [])  # nothing queued: nothing to say


def test_a_barge_in_clears_the_interrupted_response() -> None:
    h = Harness()
    h.respond("resp_1", PCM, _tone(200, PCM), "item_1")
    h.tick(2)
    h.route(_done("resp_1", "cancelled", "turn_detected"))
    assert h.kinds()[-2:] == ["response.done", "output_audio_buffer.cleared"]
    h.tick()
    assert h.frames[-1] == bytes(FRAME_BYTES)


def test_a_response_without_audio_has_no_buffer_events() -> None:
    h = Harness()
    h.route(_created("resp_1", PCM))
    h.route(_done("resp_1"))
    h.tick(2)
    assert h.kinds() == ["response.created", "response.done"]
