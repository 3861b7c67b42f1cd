"""The WebSocket adapter that runs one :class:`RealtimeEngine` per connection.

Clients connect to ``ws://host:port/v1/realtime?model=...`` (or ``?call_id=...``) exactly as to
OpenAI, e.g. ``AsyncOpenAI(api_key="x", base_url="http://host:port/v1").realtime.connect(...)``
(reference/realtime-protocol.md, section 1). Other paths get HTTP 404 at the handshake; when
``settings.api_key`` is set, a wrong or missing bearer (header, or the browser subprotocol
``openai-insecure-api-key.<key>``) gets 401.

Each connection has one task: it waits for the next client frame, the engine's next deadline or
a finished speech rendering, feeds the engine, and sends what the engine emitted (as the engine
serialised it). It reads the socket itself: a reader task and a queue between them would cost two
task switches on every 20 ms frame of a call. Nothing one connection does (bad input, an
exception) reaches another: the engine turns bad input into ``error`` events, and the handler of
each connection catches its own failures.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Callable, Sequence
from http import HTTPStatus
from types import TracebackType
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from services.config import LocalModelSettings
from services.errors import ConfigError, UserError

from .engine import Mode, RealtimeEngine
from .scenario import Scenario, load_scenario
from .speech import SpeechSynthesizer

__all__ = ["LocalModelServer", "Observer", "serve_forever"]

log = logging.getLogger(__name__)

Observer = Callable[[str, dict[str, Any]], None]
PATH: Final = "/v1/realtime"
DEFAULT_MODEL: Final = "gpt-realtime"
# The socket accepts messages 4x over our own limit, so an oversize event is answered with an
# `error` event rather than a close (the engine checks `max_message_bytes`).
WS_SIZE_FACTOR: Final = 4


def _check_settings(settings: LocalModelSettings) -> Mode:
    if settings.mode not in ("echo", "scripted"):
        raise ConfigError(f"local model mode must be 'echo' or 'scripted', got {settings.mode!r}")
    if settings.speed < 1:
        raise ConfigError(f"local model speed must be >= 1 (real time), got {settings.speed}")
    if not 10 <= settings.chunk_ms <= 1000 or settings.chunk_ms % 10:
        raise ConfigError(f"chunk_ms must be a multiple of 10 in 10..1000, got {settings.chunk_ms}")
    if settings.max_message_bytes < 1024:
        raise ConfigError(f"max_message_bytes is too small: {settings.max_message_bytes}")
    return "echo" if settings.mode == "echo" else "scripted"


def _select_subprotocol(
    connection: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    # Browsers cannot set headers: they offer "realtime" plus a key subprotocol (section 1), and
    # fail unless one is selected. Other clients offer none and must not be refused for it.
    return Subprotocol("realtime") if "realtime" in offered else None


class LocalModelServer:
    """Our OpenAI-Realtime-compatible (GA) model server on one host and port."""

    def __init__(
        self,
        settings: LocalModelSettings,
        *,
        observer: Observer | None = None,
        speech: SpeechSynthesizer | None = None,
        scenario: Scenario | None = None,
    ) -> None:
        self.settings = settings
        self._mode = _check_settings(settings)
        self._observer = observer
        self._speech = speech or SpeechSynthesizer.default()
        self._scenario = scenario or load_scenario(settings.scenario)
        self._server: Server | None = None
        self._port = settings.port

    def use_scenario(self, scenario: Scenario) -> None:
        """Play ``scenario`` in sessions connecting from now on (those open keep theirs)."""
        self._scenario = scenario

    async def drop_connections(self, code: int = 1011, reason: str = "server error") -> int:
        """Close every open session with ``code`` (a fault for tests: 1011 is what a server in
        trouble sends); the server keeps listening. Returns how many were closed."""
        connections = list(self._server.connections) if self._server is not None else []
        await asyncio.gather(*(c.close(code, reason) for c in connections))
        return len(connections)

    # ----- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            raise UserError("the local model server is already started")
        self._server = await serve(
            self._handle,
            self.settings.host,
            self.settings.port,
            process_request=self._check_request,
            select_subprotocol=_select_subprotocol,
            max_size=self.settings.max_message_bytes * WS_SIZE_FACTOR,
            compression=None,  # audio does not compress; deflate would only cost CPU
        )
        self._port = next(iter(self._server.sockets)).getsockname()[1]
        log.info("local model listening on %s (mode %s)", self.url, self._mode)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        await self._speech.close()

    async def __aenter__(self) -> LocalModelServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The bound port (the real one when settings asked for port 0)."""
        return self._port

    @property
    def url(self) -> str:
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"ws://{host}:{self.port}{PATH}"

    # ----- handshake ----------------------------------------------------------------------

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path.rstrip("/") != PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, f"Not found: use {PATH}\n")
        key = self.settings.api_key.value
        if not key:
            return None
        candidates = [request.headers.get("Authorization", "")]
        for header in request.headers.get_all("Sec-WebSocket-Protocol"):
            for protocol in header.split(","):
                key_part = protocol.strip().removeprefix("openai-insecure-api-key.")
                candidates.append(f"Bearer {key_part}")
        expected = f"Bearer {key}".encode()
        if any(hmac.compare_digest(c.strip().encode(), expected) for c in candidates):
            return None
        return connection.respond(HTTPStatus.UNAUTHORIZED, "Incorrect API key provided.\n")

    # ----- one connection -----------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        assert connection.request is not None
        query = parse_qs(urlsplit(connection.request.path).query)
        call_id = query.get("call_id", [None])[0]
        engine = RealtimeEngine(
            mode=self._mode,
            scenario=self._scenario,
            speech=self._speech,
            model=query.get("model", [DEFAULT_MODEL])[0] or DEFAULT_MODEL,
            speed=self.settings.speed,
            chunk_ms=self.settings.chunk_ms,
            max_message_bytes=self.settings.max_message_bytes,
            unix_time=int(time.time()),
            # This server creates every session at connect; it knows no calls to attach to.
            unknown_call_id=call_id,
        )
        wakeup = _Wakeup()
        renders: set[asyncio.Task[None]] = set()
        drop_after = self.settings.drop_after_events
        received = 0
        try:
            await self._flush(connection, engine)
            while True:
                frame = await wakeup.next_frame(connection, engine.next_deadline(), bool(renders))
                now = loop.time()
                if frame is not None:
                    received += 1
                    if received == drop_after:
                        await connection.close(1011, f"fault: dropped after {drop_after} events")
                        return
                    obj = engine.receive_frame(frame, now)
                    if obj is not None:
                        self._observe("client", obj)
                else:
                    engine.tick(now)
                for text, voice in engine.speech_requests():
                    task = asyncio.create_task(self._render(text, voice, wakeup))
                    renders.add(task)
                    task.add_done_callback(renders.discard)
                await self._flush(connection, engine)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("local model: connection handler failed; closing this connection")
            await connection.close(1011, "internal error")
        finally:
            for task in list(renders):
                task.cancel()

    async def _render(self, text: str, voice: str, wakeup: _Wakeup) -> None:
        await self._speech.render(text, voice)
        wakeup.set()

    async def _flush(self, connection: ServerConnection, engine: RealtimeEngine) -> None:
        for text in engine.take_frames():
            if self._observer is not None:
                self._observe("server", json.loads(text))  # what the client will parse
            await connection.send(text)

    def _observe(self, direction: str, event: dict[str, Any]) -> None:
        if self._observer is None:
            return
        try:
            self._observer(direction, event)
        except Exception:
            log.exception("local model: observer failed on a %s event", direction)


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
            # Interrupt the wait now; cancelling recv() loses no frame (websockets documents it).
            timeout.reschedule(asyncio.get_running_loop().time())

    async def next_frame(
        self, connection: ServerConnection, deadline: float | None, rendering: bool
    ) -> str | bytes | None:
        """The next frame, or ``None`` for a tick. Raises ``ConnectionClosed`` at the end."""
        if self._pending:
            self._pending = False
            return None
        if deadline is None and not rendering:
            return await connection.recv()  # the usual case (an echo has no pacing): no timer
        try:
            async with asyncio.timeout_at(deadline) as self._timeout:
                return await connection.recv()
        except TimeoutError:
            self._pending = False
            return None
        finally:
            self._timeout = None


async def serve_forever(
    settings: LocalModelSettings,
    *,
    on_ready: Callable[[LocalModelServer], None] | None = None,
    observer: Observer | None = None,
) -> None:
    """Run a server until cancelled; prints nothing (``on_ready`` gets the started server)."""
    async with LocalModelServer(settings, observer=observer) as server:
        if on_ready is not None:
            on_ready(server)
        await asyncio.Future()
