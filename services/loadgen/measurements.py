"""What one simulated call measures: echo latency and loss per frame, barge-in, counters.

Definitions (they are what the report's numbers mean):

* **Echo latency** of frame *n*: the time its tag (:mod:`.frame_tags`) arrives in model audio minus
  the time frame *n* was sent. Arrival, not playout: playback buffering is reported separately.
* **Duplicate**: a frame echoed again. **Reordered**: a frame echoed after a later one was.
* **Flushed** vs **lost**: a ``clear`` lets the ingress drop audio it still held (reference
  §1.3; STYLE's "what an interruption flushes"), so a frame never echoed counts as *flushed* if
  it was sent before the last ``clear`` arrived, and as *lost* only otherwise. A frame dropped
  for another reason before a clear is thus counted as flushed: the two cannot be told apart.
* **Barge-in clear latency**: first loud speech frame sent → first ``clear`` received after it.
* **Stale audio**: model audio that reaches the caller after that ``clear`` but belongs to before
  the barge-in, i.e. audio the interruption should have stopped. In echo mode it is exact: bytes
  that carry the echo of a frame sent before the first speech frame, whenever they arrive. With a
  talking model there are no tags, so it is all audio received after the clear until the
  caller's speech burst ends (a new answer cannot rightly start while the caller still speaks).
"""

from __future__ import annotations

import dataclasses
from array import array

__all__ = ["BargeIn", "CallStats", "EchoLedger"]


class EchoLedger:
    """Send times of tagged frames (index = sequence number) and their echoes."""

    __slots__ = (
        "_highest",
        "_seen",
        "_sent_at",
        "duplicates",
        "echoed",
        "flush_boundary",
        "latencies_ms",
        "reordered",
        "unknown",
    )

    def __init__(self) -> None:
        self._sent_at = array("d")
        self._seen = bytearray()
        self._highest = -1
        self.latencies_ms = array("d")
        self.echoed = 0
        self.duplicates = 0
        self.reordered = 0
        self.unknown = 0  # a tag for a frame never sent: corrupted audio or a false match
        self.flush_boundary = 0  # frames below this were sent before the last clear arrived

    @property
    def sent(self) -> int:
        return len(self._sent_at)

    def on_sent(self, sequence: int, now: float) -> None:
        if sequence != len(self._sent_at):
            raise ValueError(f"frame {sequence} sent out of order (expected {self.sent})")
        self._sent_at.append(now)
        self._seen.append(0)

    def on_echo(self, sequence: int, now: float) -> None:
        if sequence >= len(self._sent_at):
            self.unknown += 1
            return
        if self._seen[sequence]:
            self.duplicates += 1
            return
        self._seen[sequence] = 1
        self.echoed += 1
        self.latencies_ms.append((now - self._sent_at[sequence]) * 1000)
        if sequence < self._highest:
            self.reordered += 1
        self._highest = max(self._highest, sequence)

    def on_clear(self) -> None:
        self.flush_boundary = self.sent

    def outstanding(self) -> int:
        """Frames not echoed yet that a clear cannot excuse."""
        return self._seen[self.flush_boundary :].count(0)

    def flushed(self) -> int:
        return self._seen[: self.flush_boundary].count(0)

    def lost(self) -> int:
        return self.outstanding()


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
