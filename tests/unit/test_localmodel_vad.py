"""The energy VAD and the input buffer that frames audio for it: exact event times."""

from __future__ import annotations

import numpy as np
import pytest

from services.localmodel.audio import PCM, PCMU, AudioFormat, encode
from services.localmodel.input_buffer import InputAudioBuffer
from services.localmodel.vad import (
    EnergyVad,
    SpeechStarted,
    SpeechStopped,
    vad_from_turn_detection,
)

RATE = 24000


def tone(ms: int, amp: float = 0.3, rate: int = RATE) -> np.ndarray:
    t = np.arange(rate * ms // 1000) / rate
    return (np.sin(2 * np.pi * 220 * t) * amp * 32767).astype(np.int16)


def silence(ms: int, rate: int = RATE) -> np.ndarray:
    return np.zeros(rate * ms // 1000, np.int16)


def feed(vad: EnergyVad, signal: np.ndarray, frame_ms: int = 10) -> list[tuple[object, int]]:
    """Feed ``signal`` in frames; returns (event, end of the frame that produced it)."""
    step = RATE * frame_ms // 1000
    events = []
    for i, start in enumerate(range(0, len(signal), step)):
        for event in vad.feed(signal[start : start + step], i * frame_ms, frame_ms):
            events.append((event, (i + 1) * frame_ms))
    return events


def test_turn_times_include_padding_and_silence() -> None:
    vad = EnergyVad(threshold=0.5, prefix_padding_ms=300, silence_duration_ms=500)
    signal = np.concatenate([silence(1000), tone(700), silence(1000)])
    assert feed(vad, signal) == [
        (SpeechStarted(audio_start_ms=700), 1010),  # detected in the frame at 1000 ms
        (SpeechStopped(audio_end_ms=2200), 2200),  # speech ended at 1700, + 500 ms silence
    ]


def test_start_is_clamped_to_zero_and_short_gaps_do_not_end_the_turn() -> None:
    vad = EnergyVad(prefix_padding_ms=300, silence_duration_ms=200)
    signal = np.concatenate([silence(100), tone(300), silence(190), tone(300), silence(400)])
    assert feed(vad, signal) == [
        (SpeechStarted(audio_start_ms=0), 110),
        (SpeechStopped(audio_end_ms=1090), 1090),  # 890 + 200
    ]


@pytest.mark.parametrize(
    ("threshold", "amp", "speech"),
    [
        (0.5, 0.08, True),  # RMS 0.057 >= 0.05
        (0.5, 0.06, False),  # RMS 0.042 < 0.05
        (1.0, 0.15, True),  # RMS 0.106 >= 0.10
        (1.0, 0.13, False),  # RMS 0.092 < 0.10
        (0.1, 0.02, True),  # RMS 0.014 >= 0.01
    ],
)
def test_threshold_maps_to_rms_tenth_of_full_scale(
    threshold: float, amp: float, speech: bool
) -> None:
    vad = EnergyVad(threshold=threshold)
    events = feed(vad, tone(100, amp=amp))
    assert bool(events) is speech


def test_reset_forgets_a_turn() -> None:
    vad = EnergyVad(silence_duration_ms=100)
    assert feed(vad, tone(50))
    vad.reset()
    assert feed(vad, silence(500)) == []


def test_turn_detection_mapping() -> None:
    assert vad_from_turn_detection(None) is None
    server = vad_from_turn_detection(
        {
            "type": "server_vad",
            "threshold": 0.3,
            "prefix_padding_ms": 100,
            "silence_duration_ms": 700,
        }
    )
    assert server is not None
    assert (server.level, server.prefix_padding_ms, server.silence_duration_ms) == (
        pytest.approx(0.03),
        100,
        700,
    )
    for eagerness, silence_ms in [("low", 1000), ("medium", 600), ("auto", 600), ("high", 300)]:
        vad = vad_from_turn_detection({"type": "semantic_vad", "eagerness": eagerness})
        assert vad is not None
        assert vad.silence_duration_ms == silence_ms


@pytest.mark.parametrize("fmt", [PCM, PCMU])
@pytest.mark.parametrize("chunk_bytes", [1, 333, 960, 48_000])
def test_buffer_events_do_not_depend_on_append_sizes(fmt: AudioFormat, chunk_bytes: int) -> None:
    rate = fmt.rate
    audio = encode(
        np.concatenate([silence(500, rate), tone(600, rate=rate), silence(800, rate)]), fmt
    )
    buffer = InputAudioBuffer(fmt, EnergyVad(prefix_padding_ms=300, silence_duration_ms=500))
    if fmt is PCM and chunk_bytes == 1:
        chunk_bytes = 3  # odd sizes split samples; the buffer must still frame correctly
    events = []
    for i in range(0, len(audio), chunk_bytes):
        events += [e for e, _ in buffer.append(audio[i : i + chunk_bytes])]
    assert events == [SpeechStarted(200), SpeechStopped(1600)]
    assert buffer.clock_ms == pytest.approx(1900)


def test_buffer_take_uses_the_session_clock() -> None:
    buffer = InputAudioBuffer(PCM, None)
    buffer.append(bytes(48 * 1000))  # 0..1000 ms
    assert len(buffer.take()) == 48 * 1000
    buffer.append(bytes(48 * 1000))  # 1000..2000 ms on the session clock
    turn = buffer.take(1200, 1700)
    assert len(turn) == 48 * 500
    assert buffer.duration_ms == pytest.approx(300)  # 1700..2000 remain
    buffer.clear()
    assert buffer.duration_ms == 0
    assert buffer.clock_ms == pytest.approx(2000)  # clearing never rewinds the clock


def test_buffer_format_change_keeps_audio() -> None:
    buffer = InputAudioBuffer(PCM, None)
    buffer.append(bytes(48 * 200))
    buffer.set_format(PCMU)
    assert buffer.duration_ms == pytest.approx(200)


def test_idle_vad_keeps_only_what_a_turn_can_reach_back_to() -> None:
    # A phone line: a long silence, then a turn. The silence must not pile up in the buffer,
    # yet the turn keeps its full prefix padding.
    buffer = InputAudioBuffer(PCM, EnergyVad(prefix_padding_ms=300, silence_duration_ms=500))
    audio = encode(np.concatenate([silence(5000), tone(500), silence(600)]), PCM)
    events, longest = [], 0.0
    for i in range(0, len(audio), 960):  # 20 ms appends
        events += [e for e, _ in buffer.append(audio[i : i + 960])]
        longest = max(longest, buffer.duration_ms)
        if events and isinstance(events[-1], SpeechStopped):
            break
    assert events == [SpeechStarted(4700), SpeechStopped(6000)]
    assert longest < 2500  # not 6 seconds
    assert len(buffer.take(4700, 6000)) == PCM.bytes_for_ms(1300)
