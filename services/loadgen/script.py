"""What one simulated caller does (any provider): how long it calls, its voice, when it barges
in, whether it tags frames for the echo model. Sans-I/O."""

from __future__ import annotations

import dataclasses
import math
import random

from services.loadgen.audio import FRAME_BYTES, FRAME_MS
from services.loadgen.options import LoadOptions

__all__ = ["CallerScript"]

_FRAME_S = FRAME_MS / 1000


@dataclasses.dataclass(frozen=True, slots=True)
class CallerScript:
    """What one caller does; ``speech`` is its voice as 8 kHz μ-law (looped as needed)."""

    duration_s: float
    speech: bytes
    opening_ms: int = 0
    barge_in_after_s: float | None = None
    barge_in_ms: int = 600
    echo: bool = True
    drain_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.duration_s > 0 or self.drain_s < 0:
            raise ValueError("duration_s must be positive and drain_s not negative")
        if len(self.speech) < FRAME_BYTES:
            raise ValueError(f"speech must hold at least one {FRAME_MS} ms frame")

    @property
    def frames(self) -> int:
        return math.ceil(self.duration_s / _FRAME_S - 1e-9)

    @classmethod
    def for_call(cls, options: LoadOptions, index: int, speech: bytes) -> CallerScript:
        """Caller ``index``'s script in a load: every 1/rate-th caller barges in, at a time
        drawn from the options' window by a generator seeded with the run's seed and the
        index, so a run can be repeated call for call."""
        barge_after = None
        if options.barges_in(index):
            low, high = options.barge_in_window()
            barge_after = random.Random(options.seed * 1_000_003 + index).uniform(low, high)
        return cls(
            duration_s=options.duration_s,
            speech=speech,
            opening_ms=options.opening_ms,
            barge_in_after_s=barge_after,
            barge_in_ms=options.barge_in_ms,
            echo=options.echo,
            drain_s=options.drain_s,
        )
