"""A sans-I/O voice activity detector on signal energy, standing in for the API's server VAD.

Feed PCM frames (10 ms is the intended size) with their position on the session's audio clock:
the milliseconds of all audio appended to the input buffer during the session, which is the clock
of ``audio_start_ms``/``audio_end_ms`` (reference/realtime-protocol.md, section 4.2).

Threshold mapping: a frame is speech when its RMS is at least ``threshold * 0.1`` of full scale.
The API's default 0.5 therefore means RMS ≥ 0.05 FS (about -26 dBFS, 1,638 on int16), which normal
speech clears and line noise does not; 1.0 means -20 dBFS, 0.1 means -40 dBFS.

Events (their times are exact multiples of the frame positions, so tests can assert them):
- speech started at the first speech frame:
  ``audio_start_ms = max(0, frame_start - prefix_padding_ms)``;
- speech stopped once ``silence_duration_ms`` of non-speech follows the last speech frame:
  ``audio_end_ms = end of the last speech frame + silence_duration_ms``.

``semantic_vad`` has no threshold or silence settings; it maps onto this detector with
threshold 0.5, prefix 300 ms and a silence that follows eagerness: low 1000 ms, medium and auto
600 ms, high 300 ms. (The API's eagerness caps how long it waits, 8/4/2 s, on top of its judgement
of whether the speaker has finished; a fixed silence is the usable equivalent for an energy VAD.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from .audio import Int16Array

__all__ = ["EnergyVad", "SpeechStarted", "SpeechStopped", "VadEvent", "vad_from_turn_detection"]

FULL_SCALE: Final = 32768.0
RMS_PER_THRESHOLD: Final = 0.1  # fraction of full scale per unit of threshold
SEMANTIC_SILENCE_MS: Final = {"low": 1000, "medium": 600, "auto": 600, "high": 300}


@dataclass(frozen=True)
class SpeechStarted:
    audio_start_ms: int


@dataclass(frozen=True)
class SpeechStopped:
    audio_end_ms: int


VadEvent = SpeechStarted | SpeechStopped


def rms_fraction(frame: Int16Array) -> float:
    """Root mean square of a frame as a fraction of full scale."""
    if len(frame) == 0:
        return 0.0
    samples = frame.astype(np.float64)
    return float(np.sqrt(np.mean(samples * samples)) / FULL_SCALE)


class EnergyVad:
    """Speech/silence state across frames. Pure: no clock of its own, no I/O."""

    def __init__(
        self,
        *,
        threshold: float = 0.5,
        prefix_padding_ms: int = 300,
        silence_duration_ms: int = 500,
    ) -> None:
        self.level = threshold * RMS_PER_THRESHOLD
        self.prefix_padding_ms = prefix_padding_ms
        self.silence_duration_ms = silence_duration_ms
        self.in_speech = False
        self._last_speech_end_ms = 0.0

    def reset(self) -> None:
        """Forget a turn in progress (buffer cleared or committed by the client)."""
        self.in_speech = False

    def feed(self, frame: Int16Array, start_ms: float, duration_ms: float) -> list[VadEvent]:
        """Classify one frame that covers ``[start_ms, start_ms + duration_ms)``."""
        event = self.feed_rms(rms_fraction(frame), start_ms, duration_ms)
        return [] if event is None else [event]

    def feed_rms(self, rms: float, start_ms: float, duration_ms: float) -> VadEvent | None:
        """:meth:`feed` for a frame whose :func:`rms_fraction` is known (the input buffer
        computes it from wire bytes, see energy.py). A frame makes at most one event."""
        end_ms = start_ms + duration_ms
        if rms >= self.level:
            self._last_speech_end_ms = end_ms
            if not self.in_speech:
                self.in_speech = True
                return SpeechStarted(int(max(0.0, start_ms - self.prefix_padding_ms)))
        elif self.in_speech and end_ms - self._last_speech_end_ms >= self.silence_duration_ms:
            self.in_speech = False
            return SpeechStopped(int(self._last_speech_end_ms + self.silence_duration_ms))
        return None


def vad_from_turn_detection(turn_detection: dict[str, Any] | None) -> EnergyVad | None:
    """The detector for a validated ``audio.input.turn_detection`` (``None`` = manual turns)."""
    if turn_detection is None:
        return None
    if turn_detection["type"] == "semantic_vad":
        eagerness = turn_detection.get("eagerness") or "auto"
        return EnergyVad(silence_duration_ms=SEMANTIC_SILENCE_MS[eagerness])
    return EnergyVad(
        threshold=turn_detection["threshold"],
        prefix_padding_ms=turn_detection["prefix_padding_ms"],
        silence_duration_ms=turn_detection["silence_duration_ms"],
    )
