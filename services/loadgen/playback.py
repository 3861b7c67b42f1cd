"""Twilio's playback buffer, simulated on a 20 ms tick: what the caller hears, and mark echoes.

Twilio buffers the app's ``media`` and plays it in order, echoes a ``mark`` once the audio queued
before it has finished playing (at once if nothing is buffered), and on ``clear`` drops the whole
buffer and echoes every pending mark at once (reference/telephony.md §1.3).

The simulation plays like a sound card with a 20 ms period: each :meth:`TwilioPlaybackBuffer.tick`
starts the next 160 bytes (20 ms of 8 kHz μ-law), which have finished playing by the following
tick. A mark is therefore echoed at the first tick by which all audio before it has *finished*,
so an echo may come up to one period after the exact instant (e.g. a 10 ms tail ends mid-period).
Only byte counts are kept: the content of the audio does not matter for what is heard when.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from services.loadgen.audio import FRAME_BYTES

__all__ = ["BYTES_PER_MS", "TwilioPlaybackBuffer"]

BYTES_PER_MS: Final = 8


class TwilioPlaybackBuffer:
    """Byte positions are counted from the start of the call over all audio ever buffered.

    ``_finished`` <= ``_started`` <= ``_buffered``: audio up to ``_finished`` has been heard in
    full, up to ``_started`` has at least begun, up to ``_buffered`` has arrived.
    """

    def __init__(self) -> None:
        self._buffered = 0
        self._started = 0
        self._finished = 0
        self._marks: deque[tuple[int, str]] = deque()  # (audio position it waits for, name)
        self.played_bytes = 0
        self.cleared_bytes = 0
        self.max_buffered_bytes = 0

    @property
    def pending_bytes(self) -> int:
        """Audio not yet finished playing (buffered or playing now)."""
        return self._buffered - self._finished

    @property
    def pending_marks(self) -> int:
        return len(self._marks)

    @property
    def is_playing(self) -> bool:
        """Whether the caller hears model audio right now (a period started with audio in it)."""
        return self._started > self._finished

    def add_audio(self, nbytes: int) -> None:
        self._buffered += nbytes
        self.max_buffered_bytes = max(self.max_buffered_bytes, self.pending_bytes)

    def add_mark(self, name: str) -> list[str]:
        """Queue ``name`` behind the audio buffered now; returns it at once if all has played."""
        if self._buffered == self._finished:
            return [name]
        self._marks.append((self._buffered, name))
        return []

    def tick(self) -> list[str]:
        """One 20 ms period: the previous period's audio has finished, the next one starts.

        Returns the marks echoed now, in the order they were received.
        """
        finished = self._started
        self.played_bytes += finished - self._finished
        self._finished = finished
        marks = self._marks
        echoed = self._release(finished) if marks and marks[0][0] <= finished else []
        self._started = finished + min(FRAME_BYTES, self._buffered - finished)
        return echoed

    def clear(self) -> list[str]:
        """Drop all audio not yet finished (including the period playing now, which Twilio cuts
        off) and return every pending mark."""
        self.cleared_bytes += self._buffered - self._finished
        self._started = self._buffered = self._finished
        return self._release(None)

    def _release(self, position: int | None) -> list[str]:
        echoed: list[str] = []
        while self._marks and (position is None or self._marks[0][0] <= position):
            echoed.append(self._marks.popleft()[1])
        return echoed
