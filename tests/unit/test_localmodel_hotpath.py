"""The local model's per-frame fast paths give exactly what the general paths give.

Frame energy from wire bytes against ``rms_fraction`` of decoded samples, VAD events against the
frame-by-frame reference, the append fast path against ``json.loads`` + ``parse_client_event``,
and the serialised frames against ``json.dumps`` of the events.
"""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

import numpy as np
import pytest

from services.localmodel.audio import PCM, PCMA, PCMU, AudioFormat, decode, encode
from services.localmodel.client_events import (
    AudioAppend,
    parse_append_frame,
    parse_client_event,
)
from services.localmodel.energy import frame_rms
from services.localmodel.engine import RealtimeEngine
from services.localmodel.input_buffer import FRAME_MS, InputAudioBuffer
from services.localmodel.outbox import AudioPart
from services.localmodel.speech import SpeechSynthesizer
from services.localmodel.vad import EnergyVad, SpeechStarted, VadEvent, rms_fraction
from tests.wire import WireValidator

FORMATS = [PCMU, PCMA, PCM]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def random_audio(rng: np.random.Generator, fmt: AudioFormat, frames: int) -> bytes:
    """Frames of all loudness levels, from near-silence to full scale, in ``fmt``."""
    n = fmt.bytes_for_ms(FRAME_MS) // fmt.sample_bytes
    pieces = []
    for _ in range(frames):
        level = 10 ** rng.uniform(-4, 0)
        samples = rng.standard_normal(n) * level * 32768
        pieces.append(encode(np.clip(samples, -32768, 32767).astype(np.int16), fmt))
    return b"".join(pieces)


@pytest.mark.parametrize("fmt", FORMATS)
def test_frame_energy_equals_the_rms_of_decoded_samples(fmt: AudioFormat) -> None:
    rng = np.random.default_rng(1)
    frame_bytes = fmt.bytes_for_ms(FRAME_MS)
    extremes = [bytes(range(256))[: frame_bytes // 2] * 2, b"\x00" * frame_bytes]
    if fmt is PCM:
        extremes.append(np.full(frame_bytes // 2, -32768, "<i2").tobytes())
    else:
        extremes += [b"\x80" * frame_bytes, b"\xff" * frame_bytes]
    data = random_audio(rng, fmt, 2000) + b"".join(extremes)
    reference = [
        rms_fraction(decode(data[i : i + frame_bytes], fmt))
        for i in range(0, len(data), frame_bytes)
    ]
    fast = frame_rms(data, fmt, frame_bytes)
    assert fast == pytest.approx(reference, rel=1e-12, abs=0)
    assert fast == reference  # in fact bit for bit (energy.py says why)
    assert frame_rms(b"", fmt, frame_bytes) == []


def reference_events(fmt: AudioFormat, audio: bytes, vad: EnergyVad) -> list[VadEvent]:
    """The VAD fed decoded 10 ms frames one at a time, as the input buffer used to."""
    frame_bytes = fmt.bytes_for_ms(FRAME_MS)
    events: list[VadEvent] = []
    for i, start in enumerate(range(0, len(audio) - frame_bytes + 1, frame_bytes)):
        events += vad.feed(decode(audio[start : start + frame_bytes], fmt), i * FRAME_MS, FRAME_MS)
    return events


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("chunk_ms", [20, 30, 7])
def test_buffer_vad_decisions_match_the_frame_by_frame_reference(
    fmt: AudioFormat, chunk_ms: int
) -> None:
    rng = np.random.default_rng(2)
    # Levels that hover around the default threshold, so many frames are close calls.
    n = fmt.bytes_for_ms(FRAME_MS) // fmt.sample_bytes
    levels = 0.05 * np.sqrt(2) * rng.uniform(0.9, 1.1, 3000) * (rng.random(3000) < 0.5)
    t = np.arange(n) / fmt.rate
    audio = b"".join(
        encode((np.sin(2 * np.pi * 440 * t) * level * 32767).astype(np.int16), fmt)
        for level in levels
    )
    expected = reference_events(fmt, audio, EnergyVad(silence_duration_ms=100))
    buffer = InputAudioBuffer(fmt, EnergyVad(silence_duration_ms=100))
    step = fmt.bytes_for_ms(chunk_ms) or 1
    got = [e for i in range(0, len(audio), step) for e, _ in buffer.append(audio[i : i + step])]
    assert got == expected
    assert sum(isinstance(e, SpeechStarted) for e in got) > 10


AUDIO = b64(bytes(range(160)))
APPEND_FRAMES = [
    '{"type":"input_audio_buffer.append","audio":"' + AUDIO + '"}',
    json.dumps({"type": "input_audio_buffer.append", "audio": AUDIO}),
    json.dumps({"type": "input_audio_buffer.append", "audio": ""}),
]
OTHER_FRAMES = [
    json.dumps({"type": "input_audio_buffer.append", "event_id": "e1", "audio": AUDIO}),
    json.dumps({"audio": AUDIO, "type": "input_audio_buffer.append"}),
    '{"type":"input_audio_buffer.append","audio":"}',  # not JSON
    '{"type":"input_audio_buffer.append","audio":"AAAA"',  # not JSON
    '{"type":"input_audio_buffer.append","audio":"AAAA"} ',
    '{"type":"input_audio_buffer.append","audio":"AAAA","x":"y"}',  # an unknown parameter
    '{"type":"input_audio_buffer.append","audio":"AAA"}',  # bad padding
    '{"type":"input_audio_buffer.append","audio":"AA==AA"}',
    '{"type":"input_audio_buffer.append","audio":"\\u0041AAA"}',  # an escape: general path
    '{"type":"input_audio_buffer.append","audio":"AAAA\\n"}',
    '{"type":"input_audio_buffer.append","audio":"\u00e9"}',
    '{"type":"input_audio_buffer.commit"}',
]


@pytest.mark.parametrize("frame", APPEND_FRAMES)
def test_append_fast_path_parses_as_the_general_path(frame: str) -> None:
    parsed = parse_append_frame(frame)
    assert parsed is not None
    obj, event = parsed
    assert obj == json.loads(frame)
    assert event == parse_client_event(obj, input_format=PCMU, new_id=str)
    assert isinstance(event, AudioAppend)


@pytest.mark.parametrize("frame", OTHER_FRAMES)
def test_other_frames_take_the_general_path(frame: str) -> None:
    assert parse_append_frame(frame) is None


def twin_engines(monkeypatch: pytest.MonkeyPatch) -> tuple[RealtimeEngine, RealtimeEngine]:
    """Two echo engines that make the same ids, with a phone leg's session."""
    monkeypatch.setattr(secrets, "token_hex", lambda nbytes=None: "0123abcd")
    engines = []
    for _ in range(2):
        engine = RealtimeEngine(mode="echo", speech=SpeechSynthesizer(None))
        session = {
            "type": "realtime",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcmu"},
                    "turn_detection": {"type": "server_vad"},
                },
                "output": {"format": {"type": "audio/pcmu"}},
            },
        }
        engine.receive({"type": "session.update", "session": session}, 0.0)
        engines.append(engine)
    return engines[0], engines[1]


def test_frames_are_json_dumps_of_the_events(
    monkeypatch: pytest.MonkeyPatch, wire: WireValidator
) -> None:
    as_frames, as_events = twin_engines(monkeypatch)
    quiet, loud = b"\xff" * 160, encode(np.full(160, 8000, np.int16), PCMU)
    sent: list[str] = []
    now = 0.0
    for step in range(400):  # speech, then silence, twice: two turns, three echo responses
        chunk = loud if step % 200 < 30 else quiet
        frame = '{"type":"input_audio_buffer.append","audio":"' + b64(chunk) + '"}'
        for engine in (as_frames, as_events):
            engine.receive_frame(frame, now)
        texts = as_frames.take_frames()
        assert texts == [json.dumps(event) for event in as_events.take_events()]
        sent += texts
        now += 0.02
    kinds = [json.loads(text)["type"] for text in sent]
    assert kinds.count("response.output_audio.delta") == 400
    assert kinds.count("input_audio_buffer.speech_stopped") == 2
    for text in sent:
        wire("server", json.loads(text))


def test_audio_part_renders_any_ids_as_json_dumps_would() -> None:
    part = AudioPart('resp_"quoted"\\', "item_\u00e9\n", 3, 1)
    event: dict[str, Any] = part.delta_event("event_1", "AAAA")
    assert part.delta_text("event_1", "AAAA") == json.dumps(event)
    assert list(event) == [
        "type",
        "event_id",
        "response_id",
        "item_id",
        "output_index",
        "content_index",
        "delta",
    ]
