"""The gateway: every ingress adapter's routes, health and metrics, on one aiohttp app and port.

The provider-neutral part of an ingress is :class:`~services.gateway.ingress_core.IngressCore`;
each provider is one adapter on it (:mod:`.twilio_ingress` today). ``GET /healthz`` and
``GET /metrics`` serve the node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from services.config import GatewaySettings, MediaSettings
from services.gateway.ingress_core import IngressCore, RouterPort
from services.gateway.token_ledger import LocalTokenLedger, TokenLedger
from services.gateway.twilio_ingress import TwilioIngress
from services.media.channel_client import Locate
from services.observability import metrics
from services.telephony.stream_tokens import StreamTokens


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
    ) -> None:
        self.ingress_id = ingress_id
        self.settings = settings
        # Without the cluster's Redis (one gateway, tests) the same rules hold in memory.
        ledger = ledger or LocalTokenLedger()
        self.core = IngressCore(
            ingress_id=ingress_id,
            router=router,
            locate_channel=locate_channel,
            ledger=ledger,
            media=media,
        )
        self.twilio = TwilioIngress(self.core, settings, tokens, ledger, media=media)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        self.twilio.routes(app)
        app.router.add_get("/healthz", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _cleanup(self, _app: web.Application) -> None:
        await self.core.close()
        await self.twilio.close()

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "calls": len(self.core.calls)})

    async def metrics(self, _request: web.Request) -> web.Response:
        body, content_type = metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})
