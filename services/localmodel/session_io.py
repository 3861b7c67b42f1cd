"""What every session adapter (WebSocket or WebRTC) shares around its engine.

:class:`SessionIO` holds the per-session pieces that are not the transport: the speech
renderings the engine asked for (each wakes the adapter when done, so it ticks the engine), the
observer that sees every event as the client will parse it, and the test fault that holds back
``session.updated`` (:meth:`SessionIO.hold_session_updated`).

That fault exists to test a client's fallback: AJS's WebRTC ``connect()`` waits 5 s for the
``session.updated`` that answers its first ``session.update``, then resolves anyway
(reference/realtime-protocol.md, section 9.3). Only that event is held; the events after it go
out in their usual time, as from a server that lost or delayed one acknowledgement.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Coroutine
from typing import Any, Final

from .engine import RealtimeEngine
from .speech import SpeechSynthesizer

__all__ = ["SESSION_UPDATED", "Observer", "SessionIO"]

log = logging.getLogger(__name__)

Observer = Callable[[str, dict[str, Any]], None]
SESSION_UPDATED: Final = "session.updated"


class SessionIO:
    def __init__(
        self,
        speech: SpeechSynthesizer,
        observer: Observer | None,
        *,
        session_updated_delay_s: float = 0.0,
    ) -> None:
        self.speech = speech
        self.observer = observer
        # 0: sent at once; math.inf: never sent; else sent that many seconds late.
        self.session_updated_delay_s = session_updated_delay_s
        self._renders: set[asyncio.Task[None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._held: list[asyncio.TimerHandle] = []

    @property
    def rendering(self) -> bool:
        return bool(self._renders)

    def start_renders(self, engine: RealtimeEngine, done: Callable[[], None]) -> None:
        """Render the speech ``engine`` asks for, off the loop; ``done`` after each one."""
        for text, voice in engine.speech_requests():
            task = asyncio.create_task(self._render(text, voice, done))
            self._renders.add(task)
            task.add_done_callback(self._renders.discard)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` for the session (cancelled by :meth:`close`)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _render(self, text: str, voice: str, done: Callable[[], None]) -> None:
        await self.speech.render(text, voice)
        done()

    def observe(self, direction: str, event: dict[str, Any]) -> None:
        if self.observer is None:
            return
        try:
            self.observer(direction, event)
        except Exception:
            log.exception("local model: observer failed on a %s event", direction)

    def hold_session_updated(self, send: Callable[[], object]) -> bool:
        """Whether to hold a ``session.updated`` back; if so ``send`` runs when it is due."""
        delay = self.session_updated_delay_s
        if delay <= 0:
            return False
        if math.isinf(delay):
            log.info("local model: fault: session.updated not sent")
            return True
        self._held.append(asyncio.get_running_loop().call_later(delay, send))
        return True

    def close(self) -> None:
        """Stop the renderings and forget held events (the session is over)."""
        for task in [*self._renders, *self._tasks]:
            task.cancel()
        for handle in self._held:
            handle.cancel()
        self._held.clear()
