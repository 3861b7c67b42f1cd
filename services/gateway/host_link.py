"""The media hop between an ingress and one session host, batched.

A Ray actor call costs about 1 ms and a 2-core box sustains only ~2,200 of them per second
(reference/feasibility.md §2), while 100 calls make 5,000 frames per second each way. So frames
never cross one by one:

* **in**: frames for every call on the host queue up here; one ``feed`` call carries all of
  them. At most one ``feed`` is in flight per host, whatever arrives meanwhile rides on the next
  one, and feeds are at least ``min_interval_s`` apart: each actor call costs CPU on both sides,
  so this caps them at a few hundred per second per host whatever the load, for a few ms of
  added latency.
* **out**: one long-poll ``pull_output`` per host returns every command produced for this
  ingress's calls since the last poll.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from services.errors import CallrayError
from services.runtime.commands import CallInput, Command

logger = logging.getLogger(__name__)

RETRY_LIMIT = 20  # failed feeds in a row (with retry_s between) before control inputs are dropped


class HostPort(Protocol):
    async def feed(self, batch: Sequence[tuple[str, bytes | CallInput]], sent_at: float) -> Any: ...

    async def pull_output(self, max_wait_s: float, ingress_id: str) -> list[Command]: ...


class HostLink:
    def __init__(
        self,
        port: HostPort,
        *,
        ingress_id: str,
        dispatch: Callable[[Command], None],
        poll_s: float = 0.05,
        min_interval_s: float = 0.002,
        retry_s: float = 0.5,
    ) -> None:
        self._port = port
        self._ingress_id = ingress_id
        self._dispatch = dispatch
        self._poll_s = poll_s
        self._min_interval_s = min_interval_s
        self._retry_s = retry_s
        self._failures = 0
        # Media and control inputs share one ordered queue: a mark acknowledgement per 20 ms frame
        # must not become an actor call of its own (profiled: a third of the ingress's CPU).
        self._frames: list[tuple[str, bytes | CallInput]] = []
        self._have_frames = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.calls: set[str] = set()
        self.batches = 0

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._feed_loop(), name="host-link-feed"),
            asyncio.create_task(self._pull_loop(), name="host-link-pull"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def add_frame(self, call_id: str, payload: bytes) -> None:
        self._frames.append((call_id, payload))
        self._have_frames.set()

    def send(self, call_id: str, message: CallInput) -> None:
        self._frames.append((call_id, message))
        self._have_frames.set()

    async def _feed_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last = 0.0
        while True:
            await self._have_frames.wait()
            wait = last + self._min_interval_s - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            last = loop.time()
            self._have_frames.clear()
            batch, self._frames = self._frames, []
            if not batch:
                continue
            try:
                await self._port.feed(batch, time.time())
                self.batches += 1
                self._failures = 0
            except CallrayError:
                self._failures += 1
                # Audio is only worth its moment: drop it. Control inputs (marks heard, DTMF,
                # hang-ups) change the call's state and go first in the next batch, so a hang-up
                # is not lost to a reconnect; after RETRY_LIMIT failures in a row the host is
                # taken for gone (the router reports its calls ended) and they are dropped too.
                controls = [item for item in batch if not isinstance(item[1], bytes)]
                if controls and self._failures < RETRY_LIMIT:
                    self._frames[:0] = controls
                    self._have_frames.set()
                logger.warning(
                    "session host did not take %d frames (%d control inputs %s)",
                    len(batch),
                    len(controls),
                    "kept for the next batch" if self._failures < RETRY_LIMIT else "dropped",
                )
                await asyncio.sleep(self._retry_s)  # do not spin against a host that is gone

    async def _pull_loop(self) -> None:
        while True:
            try:
                commands = await self._port.pull_output(self._poll_s, self._ingress_id)
            except CallrayError:
                logger.warning("session host output unreachable; retrying")
                await asyncio.sleep(0.5)
                continue
            for command in commands:
                try:
                    self._dispatch(command)
                except Exception:
                    logger.exception("dispatching a command failed")
