"""What one simulated call measures: echo latency and loss per frame, barge-in, counters.

Definitions (they are what the report's numbers mean):

* **Echo latency** of frame *n*: the time its tag (:mod:`.frame_tags`) arrives in model audio minus
  the time frame *n* was sent. Arrival, not playout: playback buffering is reported separately.
* **Duplicate**: a frame echoed again. **Reordered**: a frame echoed after a later one was.
* **Flushed** vs **lost**: an interruption legitimately drops audio. The ingress flushes what
  it still held when it sends ``clear`` (reference §1.3), and the session discards the model's
  audio from the barge-in until the model answers anew (callray against its local model in echo
  mode: the echoes stop from the caller's first loud frame until the VAD hears silence). So the
  frames never echoed are grouped into gaps (maximal runs); a gap is *flushed* if a ``clear``
  arrived between the sending of the last echoed frame before it and the arrival of the first
  echo after it (or the end of the call), and *lost* otherwise. A frame dropped for another
  reason inside such a gap is counted as flushed: the two cannot be told apart.
* **Barge-in clear latency**: first loud speech frame sent → first ``clear`` received after it.
* **Stale audio**: model audio that reaches the caller after that ``clear`` but belongs to before
  the barge-in, i.e. audio the interruption should have stopped. In echo mode it is exact: bytes
  that carry the echo of a frame sent before the first speech frame, whenever they arrive. With a
  talking model there are no tags, so it is all audio received after the clear until the
  caller's speech burst ends (a new answer cannot rightly start while the caller still speaks).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from array import array

import numpy as np

__all__ = ["BargeIn", "CallStats", "EchoLedger"]


class EchoLedger:
    """Send and echo times of tagged frames (index = sequence number), and when clears came."""

    __slots__ = (
        "_clears",
        "_highest",
        "_received_at",
        "_sent_at",
        "duplicates",
        "echoed",
        "latencies_ms",
        "reordered",
        "unknown",
    )

    def __init__(self) -> None:
        self._sent_at = array("d")
        self._received_at = array("d")  # NaN until the frame's echo arrives
        self._clears: list[float] = []  # arrival times, ascending
        self._highest = -1
        self.latencies_ms = array("d")
        self.echoed = 0
        self.duplicates = 0
        self.reordered = 0
        self.unknown = 0  # a tag for a frame never sent: corrupted audio or a false match

    @property
    def sent(self) -> int:
        return len(self._sent_at)

    def on_sent(self, sequence: int, now: float) -> None:
        if sequence != len(self._sent_at):
            raise ValueError(f"frame {sequence} sent out of order (expected {self.sent})")
        self._sent_at.append(now)
        self._received_at.append(math.nan)

    def on_echo(self, sequence: int, now: float) -> None:
        if sequence >= len(self._sent_at):
            self.unknown += 1
            return
        if not math.isnan(self._received_at[sequence]):
            self.duplicates += 1
            return
        self._received_at[sequence] = now
        self.echoed += 1
        self.latencies_ms.append((now - self._sent_at[sequence]) * 1000)
        if sequence < self._highest:
            self.reordered += 1
        self._highest = max(self._highest, sequence)

    def on_clear(self, now: float) -> None:
        self._clears.append(now)

    def lost(self) -> int:
        """Frames never echoed in gaps that no clear explains (so far: also frames in flight)."""
        return sum(end - start for start, end in self._gaps() if not self._interrupted(start, end))

    def flushed(self) -> int:
        """Frames never echoed in gaps during which a clear arrived."""
        return sum(end - start for start, end in self._gaps() if self._interrupted(start, end))

    def longest_gap_ms(self) -> float:
        """The longest silence a loss caused: from the sending of the last frame echoed before
        a gap that no clear explains to the arrival of the first echo after it (0 if none; a
        gap still open at the end of the call is not counted: its frames may be in flight).
        Around a fault (a host or model lost) this is the gap the caller heard."""
        longest = 0.0
        for start, end in self._gaps():
            if start == 0 or end >= self.sent or self._interrupted(start, end):
                continue
            longest = max(longest, self._received_at[end] - self._sent_at[start - 1])
        return longest * 1000

    def _gaps(self) -> list[tuple[int, int]]:
        """Maximal runs ``[start, end)`` of frames not echoed."""
        missing = np.isnan(np.frombuffer(self._received_at, dtype=np.float64)).astype(np.int8)
        edges = np.diff(np.concatenate(([0], missing, [0])))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]

    def _interrupted(self, start: int, end: int) -> bool:
        # From when the frame before the gap was sent until the echoes resumed (the end of the
        # call if they never did).
        since = self._sent_at[start - 1] if start > 0 else -math.inf
        until = self._received_at[end] if end < self.sent else math.inf
        index = bisect.bisect_left(self._clears, since)
        return index < len(self._clears) and self._clears[index] <= until


@dataclasses.dataclass
class BargeIn:
    """One planned interruption: the caller speaks up once model audio plays after ``after_s``."""

    after_s: float
    started_at: float | None = None  # when the first speech frame was sent
    first_sequence: int | None = None
    ended_at: float | None = None  # when the last speech frame of the burst was sent
    cleared_at: float | None = None  # first clear received after started_at
    stale_bytes: int = 0

    @property
    def clear_latency_ms(self) -> float | None:
        if self.started_at is None or self.cleared_at is None:
            return None
        return (self.cleared_at - self.started_at) * 1000


@dataclasses.dataclass
class CallStats:
    """Counters of one call's media leg; times are the caller's clock (seconds)."""

    frames_sent: int = 0
    speech_frames_sent: int = 0
    media_received: int = 0
    audio_bytes_received: int = 0
    marks_received: int = 0
    marks_echoed: int = 0
    clears_received: int = 0
    unknown_messages: int = 0
    first_audio_at: float | None = None
    max_tick_lag_ms: float = 0.0
    echo: EchoLedger | None = None
    barge_in: BargeIn | None = None
