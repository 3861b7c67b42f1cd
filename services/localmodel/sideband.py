"""A sideband: a WebSocket attached to a live WebRTC or SIP session with
``/v1/realtime?call_id=``.

As OpenAI's server controls (reference/realtime-protocol.md, section 7.4): the socket sees every
event the session sends from the moment it attaches, as the peer's ``oai-events`` channel does,
and what it sends is handled as if the peer had sent it (``session.update``, tool outputs,
``response.create``, ``output_audio_buffer.clear``). Both parties share one engine. The socket
is closed (1000) when the call ends; closing it leaves the call alone.

Events reach the socket through a queue and a writer task: the session sends synchronously,
from the track's clock as well as from the engine's callers, and a socket send may wait.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from aiohttp import WSMsgType, web

from .engine_session import Listener

__all__ = ["SidebandSession", "run_sideband"]


class SidebandSession(Protocol):
    """A live session a sideband can attach to (a WebRTC call's, a SIP call's)."""

    def add_listener(self, listener: Listener) -> None: ...

    def remove_listener(self, listener: Listener) -> None: ...

    def receive_client(self, message: str | bytes) -> None: ...


class _Sideband:
    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.writer = asyncio.ensure_future(self._write())

    def send(self, text: str) -> None:
        self._queue.put_nowait(text)

    def close(self) -> None:
        self._queue.put_nowait(None)  # after what is queued

    async def _write(self) -> None:
        with contextlib.suppress(ConnectionResetError):
            while (text := await self._queue.get()) is not None:
                await self._ws.send_str(text)
        await self._ws.close(code=1000, message=b"call ended")


async def run_sideband(ws: web.WebSocketResponse, session: SidebandSession) -> None:
    """Serve ``ws`` as a sideband of ``session`` until either ends."""
    sideband = _Sideband(ws)
    session.add_listener(sideband)
    try:
        async for msg in ws:  # ends at the close handshake, from either side
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                session.receive_client(msg.data)
    finally:
        session.remove_listener(sideband)
        sideband.writer.cancel()
