"""Virtual time for tests: a clock to read and to schedule deadlines on, moved by hand.

Code under test takes a ``clock`` (``() -> float``) and, where it sets deadlines, ``timers``
(:class:`services.aio.Timers`); one :class:`FakeClock` serves as both, so a 10 s grace period is
tested by ``advance(10)`` instead of a sleep.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any


class FakeClock:
    """A virtual clock: read it as a ``clock``, schedule on it as ``timers``
    (:class:`services.aio.Timers`); :meth:`advance` runs what falls due, in time order."""

    def __init__(self, now: float = 1_795_507_200.0) -> None:
        self.now = now
        self._due: list[tuple[float, int, _VirtualTimer]] = []
        self._seq = 0

    def __call__(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Any:
        timer = _VirtualTimer(callback, args)
        self._seq += 1
        heapq.heappush(self._due, (self.now + max(0.0, delay), self._seq, timer))
        return timer

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while self._due and self._due[0][0] <= end:
            at, _, timer = heapq.heappop(self._due)
            self.now = max(self.now, at)
            if not timer.cancelled:
                timer.callback(*timer.args)
        self.now = end


class _VirtualTimer:
    def __init__(self, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
