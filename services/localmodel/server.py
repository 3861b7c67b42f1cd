"""The HTTP front of the local model: one aiohttp app on one host and port, as OpenAI's API.

* ``GET /v1/realtime?model=...`` (WebSocket): one :class:`RealtimeEngine` per connection
  (:mod:`.ws_session`). Clients connect exactly as to OpenAI, e.g.
  ``AsyncOpenAI(api_key="x", base_url="http://host:port/v1").realtime.connect(...)``
  (reference/realtime-protocol.md, section 1). Browsers that offer the subprotocol
  ``realtime`` get it.
* ``POST /v1/realtime/calls`` (WebRTC signalling, :mod:`.webrtc_calls`): one engine per peer
  connection, events on its ``oai-events`` channel and audio on its tracks
  (:mod:`.webrtc_session`). On loopback, pass ``ice_addresses=("127.0.0.1",)``: aioice never
  gathers 127.0.0.1 by itself (reference/webrtc-sip.md §2.2).
* ``GET /v1/realtime?call_id=rtc_...`` (WebSocket) attaches a sideband to a live WebRTC session
  (:mod:`.sideband`); an unknown ``call_id`` gets a connection with no session, as OpenAI's.
* ``POST /v1/realtime/client_secrets`` mints ephemeral ``ek_`` keys (:mod:`.client_secrets`).
* SIP calls, as OpenAI's SIP connector holds them (:mod:`.sip_calls`): the SIP front creates
  pending calls (announced by signed webhooks, ``settings.webhook_url``), and
  ``POST /v1/realtime/calls/{call_id}/accept|reject|refer|hangup`` controls them
  (:mod:`.sip_calls_api`); an accepted call's sidebands attach by ``?call_id=`` as WebRTC's do.
  With ``sip`` settings, the SIP front (:mod:`.sip_front`) takes INVITEs and RTP on a UDP port
  and drives those calls; without, tests drive the registry by hand.

Other paths get 404; when ``settings.api_key`` is set, a request without it (or an ephemeral
key minted from it) gets 401 (:mod:`.auth`).

Why aiohttp: the ``websockets`` server parses only GET, and WebRTC signalling is a POST on the
same port. aiohttp serves both from one app, and its WebSocket path costs no more per 20 ms
frame than ``websockets``' did (bench/localmodel_hotpath.py; the figures are in
bench/results/localmodel_hotpath.json).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Final

from aiohttp import web

from services.aio import Timers
from services.config import LocalModelSettings
from services.errors import ConfigError, UserError
from services.webrtc import ice

from .auth import Grant, KeyRing, bearer_candidates
from .client_secrets import ClientSecrets
from .engine import Mode, RealtimeEngine
from .scenario import Scenario, load_scenario
from .session_io import Observer, SessionIO
from .sideband import SidebandSession, run_sideband
from .sip_calls import SipCalls
from .sip_calls_api import SipCallsApi
from .sip_front import SipFront, SipFrontSettings
from .speech import SpeechSynthesizer
from .webhook_sender import WebhookSender
from .webrtc_calls import CALLS_PATH, WebRTCCalls
from .ws_session import run_websocket

__all__ = ["LocalModelServer", "Observer", "serve_forever"]

log = logging.getLogger(__name__)

PATH: Final = "/v1/realtime"
DEFAULT_MODEL: Final = "gpt-realtime"
# The socket accepts messages 4x over our own limit, so an oversize event is answered with an
# `error` event rather than a close (the engine checks `max_message_bytes`).
WS_SIZE_FACTOR: Final = 4
# How long stop() lets a client answer our close before dropping its connection.
CLOSE_TIMEOUT_S: Final = 5.0
# An SDP offer is a few KB; a session config with tools a few more.
MAX_BODY_BYTES: Final = 256 * 1024


def _check_settings(settings: LocalModelSettings) -> Mode:
    if settings.mode not in ("echo", "scripted"):
        raise ConfigError(f"local model mode must be 'echo' or 'scripted', got {settings.mode!r}")
    if settings.speed < 1:
        raise ConfigError(f"local model speed must be >= 1 (real time), got {settings.speed}")
    if not 10 <= settings.chunk_ms <= 1000 or settings.chunk_ms % 10:
        raise ConfigError(f"chunk_ms must be a multiple of 10 in 10..1000, got {settings.chunk_ms}")
    if settings.max_message_bytes < 1024:
        raise ConfigError(f"max_message_bytes is too small: {settings.max_message_bytes}")
    if settings.webhook_url and not settings.webhook_secret:
        raise ConfigError("a webhook URL needs a webhook secret (whsec_...) to sign with")
    return "echo" if settings.mode == "echo" else "scripted"


class LocalModelServer:
    """Our OpenAI-Realtime-compatible (GA) model server on one host and port."""

    def __init__(
        self,
        settings: LocalModelSettings,
        *,
        observer: Observer | None = None,
        speech: SpeechSynthesizer | None = None,
        scenario: Scenario | None = None,
        ice_addresses: tuple[str, ...] | None = None,
        clock: Callable[[], float] = time.time,
        timers: Timers | None = None,
        sip: SipFrontSettings | None = None,
    ) -> None:
        """``sip``: where the SIP front listens (None: no SIP front).
        ``ice_addresses``: where WebRTC sessions gather host candidates (process-wide, see
        :func:`services.webrtc.ice.install`; None: ``settings.ice_addresses``); empty leaves
        aioice's own choice alone.
        ``clock`` (unix seconds) times ephemeral keys; ``timers`` (the loop when None) times
        a SIP call's accept deadline and its webhook's retries."""
        self.settings = settings
        self._mode = _check_settings(settings)
        self._observer = observer
        self._speech = speech or SpeechSynthesizer.default()
        self._scenario = scenario or load_scenario(settings.scenario)
        self._keys = KeyRing(settings.api_key.value)
        self._clock = clock
        self._session_updated_delay_s = 0.0
        self._sockets: set[web.WebSocketResponse] = set()
        if ice_addresses is None:
            ice_addresses = settings.ice_addresses
        self._ice_addresses = ice_addresses
        self.calls = WebRTCCalls(
            grant=self._grant,
            engine=self._engine,
            session_io=self._session_io,
            ice_addresses=ice_addresses,
        )
        self._secrets = ClientSecrets(
            self._keys, grant=self._grant, engine=self._engine, clock=clock
        )
        webhook = (
            WebhookSender(settings.webhook_url, settings.webhook_secret, timers=timers)
            if settings.webhook_url
            else None
        )
        self.sip = SipCalls(
            session_io=self._session_io,
            webhook=webhook,
            accept_timeout_s=settings.sip_accept_timeout_s,
            timers=timers,
        )
        self._sip_api = SipCallsApi(self.sip, grant=self._grant, engine=self._engine)
        self.sip_front = SipFront(self.sip, sip) if sip is not None else None
        self._runner: web.AppRunner | None = None
        self._port = settings.port

    # ----- knobs for tests ----------------------------------------------------------------

    def use_scenario(self, scenario: Scenario) -> None:
        """Play ``scenario`` in sessions connecting from now on (those open keep theirs)."""
        self._scenario = scenario

    def delay_session_updated(self, seconds: float) -> None:
        """A fault for sessions starting from now on: send each ``session.updated`` ``seconds``
        late (``math.inf``: never; 0: at once, the default). Other events are not held."""
        if seconds < 0 or math.isnan(seconds):
            raise UserError(f"a delay must be >= 0 seconds, got {seconds}")
        self._session_updated_delay_s = seconds

    async def drop_connections(self, code: int = 1011, reason: str = "server error") -> int:
        """Close every open session with ``code`` (a fault for tests: 1011 is what a server in
        trouble sends; WebRTC sessions have no code, their peer connection closes); the server
        keeps listening. Returns how many were closed."""
        sockets = list(self._sockets)
        await asyncio.gather(*(ws.close(code=code, message=reason.encode()) for ws in sockets))
        return len(sockets) + await self.calls.close_all(reason)

    # ----- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._runner is not None:
            raise UserError("the local model server is already started")
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_get(PATH, self._websocket)
        app.router.add_get(PATH + "/", self._websocket)
        # Before the WebRTC routes: the two share the hangup path (sip_calls_api.py).
        self._sip_api.add_routes(app.router, other_hangup=self.calls.hangup)
        self.calls.add_routes(app.router)
        self._secrets.add_routes(app.router)
        if self._ice_addresses:
            ice.install(self._ice_addresses)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=CLOSE_TIMEOUT_S)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.settings.host, self.settings.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]
        if self.sip_front is not None:
            try:
                await self.sip_front.start()
            except BaseException:
                await self.stop()
                raise
        log.info("local model listening on %s (mode %s)", self.url, self._mode)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        # As a server going away does: 1001 to every session, then the port closes.
        await self.drop_connections(1001, "server shutting down")
        await self.sip.close()  # the front is told to end each call (BYE, 503)
        if self.sip_front is not None:
            await self.sip_front.stop()
        await runner.cleanup()
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
    def sip_port(self) -> int | None:
        """The SIP front's bound UDP port; None without a SIP front."""
        return self.sip_front.port if self.sip_front is not None else None

    @property
    def url(self) -> str:
        return f"ws://{self._host_port}{PATH}"

    @property
    def calls_url(self) -> str:
        """Where WebRTC offers go (``POST``)."""
        return f"http://{self._host_port}{CALLS_PATH}"

    @property
    def _host_port(self) -> str:
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{self.port}"

    # ----- shared by the paths --------------------------------------------------------------

    def _grant(self, request: web.Request, *, subprotocols: bool = False) -> Grant | None:
        offered = request.headers.getall("Sec-WebSocket-Protocol", []) if subprotocols else []
        keys = bearer_candidates(request.headers.get("Authorization", ""), offered)
        return self._keys.grant(keys, self._clock())

    def _engine(
        self,
        model: str | None,
        session_configs: Sequence[dict[str, Any]] = (),
        *,
        call_id: str | None = None,
    ) -> RealtimeEngine:
        """A new session; InvalidRequest if ``session_configs`` (applied in order) are refused.
        A config's model is the session's (a session's model never changes after it starts)."""
        for config in session_configs:
            if isinstance(config.get("model"), str):
                model = config["model"]
        return RealtimeEngine(
            mode=self._mode,
            scenario=self._scenario,
            speech=self._speech,
            model=model or DEFAULT_MODEL,
            speed=self.settings.speed,
            chunk_ms=self.settings.chunk_ms,
            max_message_bytes=self.settings.max_message_bytes,
            unix_time=int(time.time()),
            unknown_call_id=call_id,
            session_configs=session_configs,
        )

    def _session_io(self) -> SessionIO:
        return SessionIO(
            self._speech,
            self._observer,
            session_updated_delay_s=self._session_updated_delay_s,
        )

    # ----- the WebSocket path -------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        grant = self._grant(request, subprotocols=True)
        if grant is None:
            return web.Response(status=401, text="Incorrect API key provided.\n")
        ws = web.WebSocketResponse(
            # Browsers cannot set headers: they offer "realtime" plus a key subprotocol
            # (section 1), and fail unless one is selected. Other clients offer none.
            protocols=("realtime",),
            max_msg_size=self.settings.max_message_bytes * WS_SIZE_FACTOR,
            compress=False,  # audio does not compress; deflate would only cost CPU
            timeout=CLOSE_TIMEOUT_S,
        )
        await ws.prepare(request)
        call_id = request.query.get("call_id")
        call: SidebandSession | None = None
        if call_id:
            call = self.calls.sessions.get(call_id) or self.sip.session(call_id)
        self._sockets.add(ws)
        try:
            if call is not None:
                await run_sideband(ws, call)
            else:
                configs = [grant.session] if grant.session else []
                # With a call_id this server does not know, the engine has no session.
                engine = self._engine(request.query.get("model"), configs, call_id=call_id)
                await run_websocket(ws, engine, self._session_io(), self.settings.drop_after_events)
        finally:
            self._sockets.discard(ws)
        return ws


async def serve_forever(
    settings: LocalModelSettings,
    *,
    on_ready: Callable[[LocalModelServer], None] | None = None,
    observer: Observer | None = None,
    sip: SipFrontSettings | None = None,
) -> None:
    """Run a server until cancelled; prints nothing (``on_ready`` gets the started server)."""
    async with LocalModelServer(settings, observer=observer, sip=sip) as server:
        if on_ready is not None:
            on_ready(server)
        await asyncio.Future()
