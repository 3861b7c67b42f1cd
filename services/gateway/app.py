"""The gateway: every ingress adapter's routes, health and metrics, on one aiohttp app and port.

The provider-neutral part of an ingress is :class:`~services.gateway.ingress_core.IngressCore`;
each provider is one adapter on it (:mod:`.twilio_ingress` today). ``GET /metrics`` serves the
node; ``GET /healthz`` is liveness (the process answers: 200 while it runs); ``GET /readyz`` is
readiness, for a load balancer deciding where new calls go: 200 only when the gateway is not
draining and every check given to it passes (the actor adds: the router answers and the cluster
has room), 503 with the reasons otherwise. Once :meth:`Gateway.drain` is called (the node is
stopping) new calls are turned away (Twilio's webhook answers busy TwiML) and calls in progress
go on. :meth:`Gateway.listen` serves it with a guard on connections that never send a whole
request (:mod:`.connection_guard`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from services.config import GatewaySettings, MediaSettings
from services.gateway.call_feed import CallFeed
from services.gateway.connection_guard import guard_connections
from services.gateway.direct_calls import DirectCalls, ModelAccess
from services.gateway.ingress_core import IngressCore, RouterPort
from services.gateway.openai_sip import OpenAISip
from services.gateway.sip_ingress import SipIngress
from services.gateway.token_ledger import LocalTokenLedger, TokenLedger
from services.gateway.twilio_ingress import TwilioIngress
from services.gateway.webrtc_ingress import WebRTCIngress
from services.media.channel_client import Locate
from services.observability import metrics
from services.telephony.stream_tokens import StreamTokens

CALL_PAGE = Path(__file__).with_name("static") / "call.html"


class Gateway:
    def __init__(
        self,
        *,
        ingress_id: str,
        settings: GatewaySettings,
        router: RouterPort,
        locate_channel: Callable[[Any], Locate],
        tokens: StreamTokens,
        ledger: TokenLedger | None = None,
        media: MediaSettings | None = None,
        ready_checks: list[Callable[[], Awaitable[str | None]]] | None = None,
        # The cluster's call-event stream (a tail of it), for the call page's transcript.
        call_events: Callable[[], AsyncIterator[Any]] | None = None,
        # The model's REST API: browsers may then call the model directly (direct_calls.py).
        model_access: ModelAccess | None = None,
    ) -> None:
        self.ingress_id = ingress_id
        self.settings = settings
        self.draining = False
        # Each returns why the node cannot take new calls now, or None.
        self._ready_checks = ready_checks or []
        # Without the cluster's Redis (one gateway, tests) the same rules hold in memory.
        ledger = ledger or LocalTokenLedger()
        self.core = IngressCore(
            ingress_id=ingress_id,
            router=router,
            locate_channel=locate_channel,
            ledger=ledger,
            media=media,
        )
        self._runner: web.AppRunner | None = None
        self._guard: asyncio.Task[None] | None = None
        self.twilio = TwilioIngress(
            self.core, settings, tokens, ledger, media=media, draining=lambda: self.draining
        )
        self.feed = CallFeed(call_events) if call_events is not None else None
        self.webrtc = WebRTCIngress(
            self.core, settings, tokens, draining=lambda: self.draining, feed=self.feed
        )
        self.direct = (
            DirectCalls(
                self.core,
                tokens,
                model_access,
                offers_per_source_s=settings.webrtc.offers_per_source_s,
                body_timeout_s=settings.request_timeout_s,
            )
            if model_access is not None
            else None
        )
        # Calls OpenAI's SIP connector answers (openai_sip.py): with the model's REST API and
        # the secret its webhooks are signed with.
        self.openai_sip = (
            OpenAISip(
                self.core,
                ledger,
                model_access,
                settings.openai_webhook_secret,
                draining=lambda: self.draining,
                body_timeout_s=settings.request_timeout_s,
            )
            if model_access is not None and settings.openai_webhook_secret
            else None
        )

        # PBXs and trunks over SIP/UDP (sip_ingress.py); digest nonces are signed with the
        # stream secret, which every ingress of a cluster shares.
        self.sip = (
            SipIngress(
                self.core,
                settings.sip,
                secret=settings.stream_secret.value.encode() or None,
                draining=lambda: self.draining,
            )
            if settings.sip.port is not None
            else None
        )

    async def listen(self, host: str, port: int) -> int:
        """Serve on ``host:port`` (0: a free port) with the connection guard; returns the port."""
        # An idle keep-alive connection is closed after 75 s (aiohttp's default is an hour).
        self._runner = web.AppRunner(self.app(), access_log=None, keepalive_timeout=75.0)
        await self._runner.setup()
        assert self._runner.server is not None
        self._guard = asyncio.create_task(guard_connections(self._runner.server, self.settings))
        await self.webrtc.warm_up()
        await web.TCPSite(self._runner, host, port).start()
        if self.sip is not None:
            await self.sip.start()
        return int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self.sip is not None:
            await self.sip.stop()
        if self._guard is not None:
            self._guard.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        self.twilio.routes(app)
        self.webrtc.routes(app)
        if self.direct is not None:
            self.direct.routes(app)
        if self.openai_sip is not None:
            self.openai_sip.routes(app)
        app.router.add_get("/", self.page)
        app.router.add_get("/call", self.page)
        app.router.add_get("/healthz", self.health)
        app.router.add_get("/readyz", self.ready)
        app.router.add_get("/metrics", self.metrics)
        app.on_cleanup.append(self._cleanup)
        return app

    async def page(self, _request: web.Request) -> web.FileResponse:
        """The call page: a browser calls the agent over WebRTC (no CDN, no build step)."""
        return web.FileResponse(CALL_PAGE, headers={"Cache-Control": "no-cache"})

    async def _cleanup(self, _app: web.Application) -> None:
        if self.feed is not None:
            await self.feed.close()
        await self.webrtc.close()
        if self.direct is not None:
            await self.direct.close()
        if self.openai_sip is not None:
            await self.openai_sip.close()
        await self.core.close()
        await self.twilio.close()

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "calls": len(self.core.calls)})

    def drain(self) -> None:
        """Take no new calls from now on (readiness fails at once); calls in progress go on."""
        self.draining = True

    async def ready(self, _request: web.Request) -> web.Response:
        reasons = ["draining"] if self.draining else []
        for check in self._ready_checks:
            try:
                reason = await check()
            except Exception as exc:
                reason = f"check failed: {type(exc).__name__}"
            if reason:
                reasons.append(reason)
        body = {"ready": not reasons, "reasons": reasons, "calls": len(self.core.calls)}
        return web.json_response(body, status=503 if reasons else 200)

    async def metrics(self, _request: web.Request) -> web.Response:
        body, content_type = metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})
