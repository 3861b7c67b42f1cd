"""``IngressActor``: a Ray actor that owns the gateway's listening socket (Twilio webhook and
media streams, health, metrics) and streams media to session hosts in batches."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator

from actors import _ray
from services.config import GatewaySettings, MediaSettings, ModelSettings
from services.errors import ActorGone
from services.gateway.app import Gateway
from services.gateway.direct_calls import model_access
from services.gateway.token_ledger import RedisTokenLedger
from services.observability import logs
from services.redis_client import connect as connect_redis
from services.telephony.stream_tokens import StreamTokens
from services.toolbus.call_events import CallEvent, tail_events

logger = logging.getLogger(__name__)


class IngressActor:
    def __init__(
        self,
        ingress_id: str,
        settings: GatewaySettings,
        *,
        redis_url: str | None = None,
        media: MediaSettings | None = None,
        model: ModelSettings | None = None,
        model_url: str | None = None,
        agent_spec: str | None = None,
    ) -> None:
        logs.configure_from_env()  # this actor's process: its entry point
        secret = settings.stream_secret.value.encode() or secrets.token_bytes(32)
        # Ingresses share the secret, so a token replayed to a sibling verifies there; the ledger
        # in the cluster's Redis makes it single-use across all of them.
        self._ledger = RedisTokenLedger(redis_url) if redis_url else None
        self._router = _ray.get_router()
        self.gateway = Gateway(
            ingress_id=ingress_id,
            settings=settings,
            router=_ray.RouterClient(self._router),
            locate_channel=lambda handle: lambda: _ray.call(handle, "channel"),
            tokens=StreamTokens(secret, settings.stream_token_ttl_s),
            ledger=self._ledger,
            media=media,
            ready_checks=[self._router_has_room],
            call_events=self._tail_events if redis_url else None,
            model_access=(
                model_access(model, model_url, agent_spec, settings.webrtc.ek_ttl_s)
                if model is not None and model_url
                else None
            ),
        )
        self._redis_url = redis_url
        self._settings = settings
        self.port = 0

    async def start(self) -> int:
        """Listen; returns the bound port (``port`` 0 picks a free one)."""
        await self._warm_up()
        self.port = await self.gateway.listen(self._settings.host, self._settings.port)
        logger.info("gateway listening on %s:%d", self._settings.host, self.port)
        return self.port

    async def _warm_up(self) -> None:
        """Take the session hosts' handles once before the first call. The first host handle
        this process deserializes costs Ray ~80 ms (measured: the first offer's admission took
        138 ms against 13 ms for the next), which would otherwise land on the first caller."""
        try:
            await _ray.call(self._router, "host_handles", limit_s=10.0)
        except ActorGone:
            logger.warning("the router did not answer the warm-up; the first call pays for it")

    async def _tail_events(self) -> AsyncIterator[CallEvent]:
        """The call-event stream from now on (for the call page's transcript)."""
        assert self._redis_url is not None
        redis = connect_redis(self._redis_url)
        try:
            async for event in tail_events(redis):
                yield event
        finally:
            await redis.aclose()

    async def _router_has_room(self) -> str | None:
        """Readiness: the router answers within a second and the cluster has a free seat."""
        try:
            status = await _ray.call(self._router, "status", limit_s=1.0)
        except ActorGone:
            return "router unreachable"
        if status["calls"] >= status["cluster_capacity"]:
            return "cluster at capacity"
        return None

    def drain(self) -> int:
        """The node is stopping: no new calls (readiness fails, webhooks answer busy); the calls
        in progress go on. Returns how many there are."""
        self.gateway.drain()
        return len(self.gateway.core.calls)

    def ping(self) -> int:
        return self.port

    def pid(self) -> int:
        return _ray.own_pid()

    async def stop(self) -> None:
        try:
            await self.gateway.stop()
        finally:
            # After the runner: streams still opening finish their claim first.
            if self._ledger is not None:
                await self._ledger.close()
