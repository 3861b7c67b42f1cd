"""Running our own event loops: on uvloop when it is installed (a dependency on Linux).

uvloop runs the loop, the transports and their writes in C: writes made in one loop iteration
leave in one ``writev``, which halves the syscalls of a Twilio media frame and its mark. Ray
already runs async actors' loops on uvloop when it is importable (``ray/_private/async_compat``);
this does the same for the processes we start ourselves (the local model, the load generator).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    """Where deadlines are scheduled: the running event loop in production, a virtual clock in
    tests (``tests/realtime_helpers.py``'s ``FakeClock``), so timeouts are tested without
    sleeping (STYLE.md, "Time is injected")."""

    def call_later(
        self, delay: float, callback: Callable[..., object], *args: Any
    ) -> Cancellable: ...


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # not on this platform: the standard loop works, only slower
        return asyncio.run(main)
    return uvloop.run(main)


def _wake(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


async def sleep(timers: Timers, seconds: float) -> None:
    """``asyncio.sleep`` on ``timers``: a real sleep on the loop, an ``advance`` in tests."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    handle = timers.call_later(seconds, _wake, done)
    try:
        await done
    finally:
        handle.cancel()
