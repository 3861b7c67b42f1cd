"""One Realtime session over a WebSocket: the engine fed from the socket, its events sent back.

Each connection has one task: it waits for the next client frame, the engine's next deadline or
a finished speech rendering, feeds the engine, and sends what the engine emitted (as the engine
serialised it). It reads the socket itself: a reader task and a queue between them would cost two
task switches on every 20 ms frame of a call. Nothing one connection does (bad input, an
exception) reaches another: the engine turns bad input into ``error`` events, and this handler
catches its own failures.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import Final

from aiohttp import WSMsgType, web

from .engine import RealtimeEngine
from .session_io import SESSION_UPDATED, SessionIO

__all__ = ["run_websocket"]

log = logging.getLogger(__name__)

_DATA: Final = (WSMsgType.TEXT, WSMsgType.BINARY)
# How a session.updated frame starts: the engine serialises with json.dumps, type first.
_SESSION_UPDATED_HEAD: Final = json.dumps({"type": SESSION_UPDATED})[:-1]


class _Closed(Exception):
    """The client closed the socket, or it broke."""


async def run_websocket(
    ws: web.WebSocketResponse, engine: RealtimeEngine, io: SessionIO, drop_after: int
) -> None:
    """Serve one prepared WebSocket until it closes. ``drop_after`` > 0 closes it with 1011
    after that many client frames (a fault for tests)."""
    loop = asyncio.get_running_loop()
    wakeup = _Wakeup()
    received = 0
    try:
        await _flush(ws, engine, io)
        while True:
            frame = await wakeup.next_frame(ws, engine.next_deadline(), io.rendering)
            now = loop.time()
            if frame is not None:
                received += 1
                if received == drop_after:
                    await ws.close(
                        code=1011, message=f"fault: dropped after {drop_after} events".encode()
                    )
                    return
                obj = engine.receive_frame(frame, now)
                if obj is not None and io.observer is not None:
                    io.observe("client", obj)
            else:
                engine.tick(now)
            io.start_renders(engine, wakeup.set)
            await _flush(ws, engine, io)
    except (_Closed, ConnectionResetError):
        pass
    except Exception:
        log.exception("local model: connection handler failed; closing this connection")
        await ws.close(code=1011, message=b"internal error")
    finally:
        io.close()


async def _flush(ws: web.WebSocketResponse, engine: RealtimeEngine, io: SessionIO) -> None:
    frames = engine.take_frames()
    if io.observer is None and not io.session_updated_delay_s:
        for text in frames:  # the usual case, on every 20 ms of a call
            await ws.send_str(text)
        return
    for text in frames:
        if text.startswith(_SESSION_UPDATED_HEAD) and io.hold_session_updated(
            functools.partial(_send_late_soon, ws, io, text)
        ):
            continue
        io.observe("server", json.loads(text))  # what the client will parse
        await ws.send_str(text)


def _send_late_soon(ws: web.WebSocketResponse, io: SessionIO, text: str) -> None:
    io.spawn(_send_late(ws, io, text))


async def _send_late(ws: web.WebSocketResponse, io: SessionIO, text: str) -> None:
    if ws.closed:
        return
    io.observe("server", json.loads(text))
    try:
        await ws.send_str(text)
    except ConnectionResetError:
        pass


class _Wakeup:
    """How a connection's task waits: for the next client frame, or until the engine is due a
    tick (its deadline passed, or a speech rendering finished and :meth:`set` was called)."""

    def __init__(self) -> None:
        self._pending = False
        self._timeout: asyncio.Timeout | None = None

    def set(self) -> None:
        self._pending = True
        timeout = self._timeout
        if timeout is not None and not timeout.expired():
            # Interrupt the wait now; a cancelled receive() loses no frame: aiohttp's reader
            # keeps it queued for the next one.
            timeout.reschedule(asyncio.get_running_loop().time())

    async def next_frame(
        self, ws: web.WebSocketResponse, deadline: float | None, rendering: bool
    ) -> str | bytes | None:
        """The next frame, or ``None`` for a tick. Raises :class:`_Closed` at the end."""
        if self._pending:
            self._pending = False
            return None
        if deadline is None and not rendering:
            msg = await ws.receive()  # the usual case (an echo has no pacing): no timer
        else:
            try:
                async with asyncio.timeout_at(deadline) as self._timeout:
                    msg = await ws.receive()
            except TimeoutError:
                self._pending = False
                return None
            finally:
                self._timeout = None
        # aiohttp answers pings and does the close handshake inside receive(); what is left is
        # data, or the end (CLOSE, CLOSING, CLOSED, ERROR: a broken or oversized frame).
        if msg.type in _DATA:
            data: str | bytes = msg.data
            return data
        raise _Closed
