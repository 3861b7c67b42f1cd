"""A small synchronous event emitter, the Python shape of the SDK's ``on``/``off``/``emit``.

Handlers run in the order they were added. A handler may be a coroutine function: its coroutine
is scheduled as a task on the running loop. A handler that raises is logged and does not stop the
others, so one bad listener cannot break a call.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

Handler = Callable[..., Any]


class EventEmitter:
    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def on(self, event: str, handler: Handler) -> Handler:
        """Call ``handler(*args)`` on every ``event``; returns the handler (usable as decorator)."""
        self._handlers.setdefault(event, []).append(handler)
        return handler

    def off(self, event: str, handler: Handler) -> None:
        handlers = self._handlers.get(event)
        if handlers and handler in handlers:
            handlers.remove(handler)

    def once(self, event: str, handler: Handler) -> Handler:
        def wrapper(*args: Any) -> Any:
            self.off(event, wrapper)
            return handler(*args)

        return self.on(event, wrapper)

    def listener_count(self, event: str) -> int:
        return len(self._handlers.get(event, ()))

    def emit(self, event: str, *args: Any) -> None:
        handlers = self._handlers.get(event)
        if not handlers:
            return
        for handler in tuple(handlers):
            try:
                result = handler(*args)
            except Exception:
                logger.exception("listener for %r failed", event)
                continue
            if inspect.isawaitable(result):
                self._track(result, event)

    def _track(self, awaitable: Any, event: str) -> None:
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                logger.error("async listener for %r failed", event, exc_info=t.exception())

        task.add_done_callback(done)

    async def wait_for(self, event: str) -> tuple[Any, ...]:
        """Wait for the next ``event`` and return its arguments (wrap in ``asyncio.timeout``)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Any, ...]] = loop.create_future()

        def handler(*args: Any) -> None:
            if not future.done():
                future.set_result(args)

        self.on(event, handler)
        try:
            return await future
        finally:
            self.off(event, handler)
