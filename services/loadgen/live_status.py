"""The load test's progress line: call counts, frames sent, the p99 of recent echo latencies, for
callers of any provider (the Twilio and SIP runners share it)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Final, Protocol, TextIO

import numpy as np

from services.loadgen.measurements import CallStats
from services.loadgen.report import CallResult

__all__ = ["LiveStatus"]

_PROGRESS_INTERVAL_S: Final = 0.5
_RECENT_LATENCIES: Final = 5000  # the window behind the live p99


class _Measured(Protocol):
    """A simulated caller of any provider: what the progress line reads of it."""

    @property
    def stats(self) -> CallStats: ...


class LiveStatus:
    """What the progress line shows: call counts, frames, the p99 of recent echo latencies."""

    def __init__(self) -> None:
        self.active = self.done = self.failed = self.rejected = 0
        self.frames_done = 0
        self._callers: dict[_Measured, int] = {}  # -> echo latencies already taken
        self._recent: deque[float] = deque(maxlen=_RECENT_LATENCIES)

    def attach(self, caller: _Measured) -> None:
        self._callers[caller] = 0

    def detach(self, caller: _Measured) -> None:
        self._take_latencies(caller)
        del self._callers[caller]

    def finished(self, result: CallResult) -> None:
        self.done += 1
        self.failed += result.outcome == "failed"
        self.rejected += result.outcome == "rejected"
        self.frames_done += result.frames_sent

    def line(self) -> str:
        frames = self.frames_done
        for caller in self._callers:
            frames += caller.stats.frames_sent
            self._take_latencies(caller)
        p99 = f"{np.percentile(self._recent, 99):.1f} ms" if self._recent else "-"
        return (
            f"calls active {self.active} done {self.done} failed {self.failed} "
            f"rejected {self.rejected} | frames sent {frames} | echo p99 {p99}"
        )

    def _take_latencies(self, caller: _Measured) -> None:
        echo = caller.stats.echo
        if echo is not None:
            self._recent.extend(echo.latencies_ms[self._callers[caller] :])
            self._callers[caller] = len(echo.latencies_ms)

    async def report_until_done(
        self, stream: TextIO, tasks: list[asyncio.Task[CallResult]]
    ) -> None:
        # On a terminal the line is rewritten in place ("\x1b[K" erases the rest of the old
        # one); into a file or pipe each update is a line of its own.
        terminal = stream.isatty()
        while True:
            finished = all(task.done() for task in tasks)
            if terminal:
                stream.write("\r" + self.line() + "\x1b[K" + ("\n" if finished else ""))
            else:
                stream.write(self.line() + "\n")
            stream.flush()
            if finished:
                return
            await asyncio.sleep(_PROGRESS_INTERVAL_S)
