"""Warnings about outside input, rate-limited per peer and reason.

A peer that sends garbage can send it fast, and before it has authenticated: one log line per
bad frame would let it fill the disk and bury every other line. :class:`LogLimiter` lets the
first line of each (peer, reason) through, then at most one per ``interval_s``, and that line
says how many like it were suppressed; every suppressed line is counted in
``callray_log_suppressed_total{reason}``. Keys are bounded (the oldest is forgotten), so a
flood from many addresses costs memory for ``max_keys`` of them at most.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from services.observability import metrics

__all__ = ["LogLimiter"]


class LogLimiter:
    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval_s: float = 10.0,
        max_keys: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._max_keys = max_keys
        self._clock = clock
        # (peer, reason) -> [when the next line may go out, lines suppressed since the last]
        self._keys: OrderedDict[tuple[str, str], list[float]] = OrderedDict()

    def warning(self, peer: str, reason: str, message: str, *args: object) -> bool:
        """Log ``message % args`` unless (``peer``, ``reason``) logged within the interval;
        ``reason`` is a short fixed label (it becomes a metric label). True if it was logged."""
        now = self._clock()
        key = (peer, reason)
        state = self._keys.get(key)
        if state is not None and now < state[0]:
            state[1] += 1
            metrics.log_suppressed(reason)
            return False
        suppressed = int(state[1]) if state is not None else 0
        self._keys[key] = [now + self._interval_s, 0.0]
        self._keys.move_to_end(key)
        while len(self._keys) > self._max_keys:
            self._keys.popitem(last=False)
        if suppressed:
            self._logger.warning(
                message + " (%d more like it suppressed)", *args, suppressed, stacklevel=2
            )
        else:
            self._logger.warning(message, *args, stacklevel=2)
        return True
