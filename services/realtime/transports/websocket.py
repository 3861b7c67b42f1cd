"""``OpenAIRealtimeWebSocket``: the session ↔ model transport over a WebSocket.

As the seed says, :meth:`connect` resolves once the socket is open and the initial
``session.update`` has been *sent*; the matching ``session.updated`` may come later. Audio arrives
as ``audio`` events in the session's output format and :meth:`send_audio` sends raw bytes in the
input format. ``create_websocket`` supplies your own socket (any object with async ``send``,
``recv`` and ``close``, like the Cloudflare transport's fetch upgrade), and
``skip_open_event_listeners`` lets such a connector declare the socket connected itself instead of
the transport awaiting its optional ``wait_open()``.

Writes go through one writer task so that the public send methods are synchronous, cheap and keep
their order, as in the seed's API.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from services.config import DEFAULT_MODEL, OPENAI_REALTIME_URL
from services.errors import NotConnected, TransportClosed, TransportError, UserError
from services.realtime.playback import PlaybackSource
from services.realtime.transports.base import TransportErrorEvent
from services.realtime.transports.openai_base import OpenAIRealtimeBase
from services.realtime.wire import JSON

logger = logging.getLogger(__name__)

USER_AGENT = "callray/0.1 (Python)"


class WebSocketLike(Protocol):
    """The socket surface the transport uses; ``websockets``' client connection fits it."""

    async def send(self, message: str) -> None: ...

    async def recv(self) -> str | bytes: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


WebSocketFactory = Callable[[str, Mapping[str, str]], Awaitable[WebSocketLike]]


def realtime_url(base: str | None, *, model: str | None, call_id: str | None) -> str:
    """The URL for a new session (``?model=``) or for attaching to a call (``?call_id=``).

    A query the caller already put on ``base`` wins; ``model`` and ``call_id`` are never both sent
    (the API attaches by call id without a model, reference §1).
    """
    if model and call_id:
        raise UserError("give either model or call_id, not both")
    parts = urlsplit(base or OPENAI_REALTIME_URL)
    query = dict(parse_qsl(parts.query))
    if "model" not in query and "call_id" not in query:
        if call_id:
            query["call_id"] = call_id
        else:
            query["model"] = model or DEFAULT_MODEL
    return urlunsplit(parts._replace(query=urlencode(query)))


async def _default_websocket(url: str, headers: Mapping[str, str]) -> WebSocketLike:
    from websockets.asyncio.client import connect

    # Audio events are large: no message size limit, as the openai package does.
    socket = await connect(
        url, additional_headers=dict(headers), max_size=None, user_agent_header=USER_AGENT
    )
    return socket


class OpenAIRealtimeWebSocket(OpenAIRealtimeBase):
    def __init__(
        self,
        *,
        url: str | None = None,
        model: str | None = None,
        create_websocket: WebSocketFactory | None = None,
        skip_open_event_listeners: bool = False,
        playback: PlaybackSource | None = None,
    ) -> None:
        super().__init__(playback=playback)
        self._url = url
        self._model = model
        self._create_websocket = create_websocket or _default_websocket
        self._skip_open = skip_open_event_listeners
        self._socket: WebSocketLike | None = None
        self._outbox: deque[str] = deque()
        self._wakeup = asyncio.Event()
        self._written = asyncio.Event()  # pulsed each time the outbox has been emptied
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def socket(self) -> WebSocketLike | None:
        return self._socket

    async def connect(
        self,
        *,
        api_key: str | None = None,
        model: str | None = None,
        url: str | None = None,
        call_id: str | None = None,
        initial_session_config: JSON | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if self._status in ("connected", "connecting"):
            raise UserError("transport is already connected")
        target = realtime_url(
            url or self._url,
            model=None if call_id else (model or self._model),
            call_id=call_id,
        )
        all_headers = {"User-Agent": USER_AGENT, **(headers or {})}
        if api_key:
            all_headers["Authorization"] = f"Bearer {api_key}"
        self._closing = False
        self._start_connection()
        self._set_status("connecting")
        try:
            socket = await self._create_websocket(target, all_headers)
            if not self._skip_open:
                wait_open = getattr(socket, "wait_open", None)
                if wait_open is not None:
                    await wait_open()
        except Exception as exc:
            self._set_status("disconnected")
            raise TransportError(
                f"could not connect to the model at {_safe(target)}: {exc}"
            ) from exc
        self._socket = socket
        self._set_status("connected")
        self._reader = asyncio.create_task(self._read_loop(socket), name="realtime-ws-reader")
        if initial_session_config is not None:
            # Sent before connect() returns, and before anything queued later.
            self._note_output_format(initial_session_config)
            text = json.dumps(
                {
                    "type": "session.update",
                    "session": {"type": "realtime", **initial_session_config},
                }
            )
            await socket.send(text)
        self._writer = asyncio.create_task(self._write_loop(socket), name="realtime-ws-writer")

    def _send_text(self, text: str) -> None:
        if self._socket is None or self._status != "connected":
            raise NotConnected("the Realtime transport is not connected")
        self._outbox.append(text)
        self._wakeup.set()

    async def flush(self) -> None:
        """Wait until every event sent so far has been written to the socket."""
        while self._outbox and self._writer is not None and not self._writer.done():
            await self._written.wait()

    async def _write_loop(self, socket: WebSocketLike) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._outbox:
                    await socket.send(self._outbox[0])
                    self._outbox.popleft()
                self._written.set()
                self._written.clear()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._lost(exc)

    async def _read_loop(self, socket: WebSocketLike) -> None:
        try:
            while True:
                message = await socket.recv()
                self.receive_text(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._lost(exc)

    def _lost(self, exc: BaseException) -> None:
        if self._closing or self._status == "disconnected":
            return
        code = getattr(getattr(exc, "rcvd", None), "code", None)
        reason = getattr(getattr(exc, "rcvd", None), "reason", "") or ""
        if code != 1000:
            logger.warning("model connection lost: %s", exc)
            self.emit(
                "error",
                TransportErrorEvent(
                    TransportClosed(f"model connection lost: {exc}", code=code, reason=reason)
                ),
            )
        self._socket = None
        self._outbox.clear()
        self._set_status("disconnected")
        for task in (self._reader, self._writer):
            if task is not None and task is not asyncio.current_task():
                task.cancel()

    async def close(self) -> None:
        if self._socket is None:
            self._set_status("disconnected")
            return
        self._closing = True
        self._set_status("disconnecting")
        socket, self._socket = self._socket, None
        try:
            await asyncio.wait_for(self._drain_outbox(socket), timeout=2.0)
        except (TimeoutError, Exception):
            pass
        for task in (self._writer, self._reader):
            if task is not None:
                task.cancel()
        try:
            await socket.close()
        except Exception:
            logger.debug("socket close failed", exc_info=True)
        self._outbox.clear()
        self._set_status("disconnected")

    async def _drain_outbox(self, socket: WebSocketLike) -> None:
        # The writer pops an event only once it is written, so waiting for an empty outbox
        # means everything queued before close() reached the socket.
        await self.flush()


def _safe(url: str) -> str:
    """The URL without its query (which may hold ids), for error messages."""
    return urlunsplit(urlsplit(url)._replace(query=""))


__all__ = ["OpenAIRealtimeWebSocket", "WebSocketLike", "realtime_url"]
