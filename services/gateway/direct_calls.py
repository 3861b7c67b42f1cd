"""Browser → model directly, with a key we mint; a session of ours attaches to run the tools.

The browser's audio then never passes through callray (the model's own WebRTC terminates it),
and our API key never reaches the browser:

* ``POST /webrtc/client-secret`` (``Authorization: Bearer <call token>``, from
  ``/webrtc/token``; single-use) → ``{"value": "ek_…", "expires_at", "attach_token",
  "calls_url"}``: an ephemeral key minted with the model's ``/realtime/client_secrets`` (its
  session is the agent's initial config; it lives ``CALLRAY_EK_TTL_S``), a single-use token to
  attach with, and where to POST the offer;
* the page offers to ``calls_url`` with the ``ek_`` key and reads the ``call_id`` from the
  answer's ``Location``;
* ``POST /webrtc/attach`` (``{"call_id"}``, ``Authorization: Bearer <attach token>``) → ``201``:
  the router places a session that attaches to that call by ``?call_id=`` over a WebSocket
  sideband (``CallSpec.attach``), runs its tools and writes its call events; ``503`` when busy.

A hang-up the session decides (the agent's ``hang_up`` tool, a drain's goodbye) goes to the
model's ``/realtime/calls/{id}/hangup``; the browser's hang-up closes the sideband, which ends
the session.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from services.agents.registry import load_agents
from services.config import ModelSettings, Secret
from services.errors import StreamTokenError
from services.gateway.front_door import SourceRate
from services.gateway.ingress_core import Busy, IngressCore, Refused
from services.gateway.refusals import Refusals
from services.http_body import BodyTooLarge, read_bounded
from services.media.vocabulary import AudioDone, CallSpec, Hangup, PlayAudio, PlaybackCut, Transfer
from services.realtime.session_config import build_initial_config
from services.realtime.transports.sip import rest_base
from services.telephony.stream_tokens import StreamTokens

logger = logging.getLogger(__name__)

ATTACH_PREFIX = "attach_"
MAX_BODY = 4096


@dataclass(frozen=True)
class ModelAccess:
    """How the ingress reaches the model's REST API (``https://api.openai.com/v1``, or the
    local model's ``http://host:port/v1``) and what a minted key's session is."""

    rest_base: str
    api_key: Secret
    session_config: Callable[[], dict[str, Any]]
    ek_ttl_s: float = 60.0


class DirectLeg:
    """An attached call's side at the ingress: no media; call control through the model."""

    def __init__(self, call_id: str, on_end: Callable[[DirectLeg], None]) -> None:
        self.call_id = call_id
        self._on_end = on_end
        self.ended: str | None = None

    def play(self, command: PlayAudio) -> None:
        pass  # the model plays to the browser itself

    def audio_done(self, command: AudioDone) -> None:
        pass

    def interrupt(self) -> PlaybackCut:
        return PlaybackCut(())  # the model truncates on its own WebRTC

    def control(self, command: Hangup | Transfer) -> None:
        if isinstance(command, Transfer):
            logger.warning(
                "a browser call cannot be transferred; hanging up instead",
                extra={"call_id": self.call_id},
            )
        self.end(command.reason if isinstance(command, Hangup) else "transfer_unsupported")

    def end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
            self._on_end(self)


class DirectCalls:
    def __init__(
        self,
        core: IngressCore,
        tokens: StreamTokens,
        access: ModelAccess,
        *,
        offers_per_source_s: float = 5.0,
        body_timeout_s: float = 10.0,
    ) -> None:
        self._core = core
        self._tokens = tokens
        self._access = access
        self._body_timeout_s = body_timeout_s
        self._rate = SourceRate(rate=offers_per_source_s, burst=2 * offers_per_source_s)
        self._refuse = Refusals(logger, what="a direct browser call", prefix="direct")
        self._http: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.legs: dict[str, DirectLeg] = {}

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/webrtc/client-secret", self.client_secret)
        app.router.add_post("/webrtc/attach", self.attach)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)
        if self._http is not None:
            await self._http.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self._http

    def _headers(self) -> dict[str, str]:
        key = self._access.api_key.value
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _redeem(self, request: web.Request, prefix: str) -> str | None:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        owner = StreamTokens.call_of(token) if token else None
        if not owner or not owner.startswith(prefix):
            return None
        try:
            self._tokens.redeem(token, owner)
        except StreamTokenError:
            return None
        return owner

    # ----- the key -------------------------------------------------------------------------------

    async def client_secret(self, request: web.Request) -> web.Response:
        if not self._rate.allow(request.remote or "?", time.monotonic()):
            return self._refuse(request, 429, "rate", "too many requests")
        if self._redeem(request, "rtc_") is None:
            return self._refuse(request, 401, "token", "a valid call token is required")
        body = {
            "expires_after": {"anchor": "created_at", "seconds": int(self._access.ek_ttl_s)},
            "session": {"type": "realtime", **self._access.session_config()},
        }
        url = f"{self._access.rest_base}/realtime/client_secrets"
        try:
            async with self._client().post(url, json=body, headers=self._headers()) as reply:
                answer = await reply.json(content_type=None)
                if reply.status != 200 or not isinstance(answer, dict):
                    logger.error(
                        "the model refused to mint a key: %s %s", reply.status, str(answer)[:200]
                    )
                    return web.json_response({"error": "could not get a key"}, status=502)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            logger.error("the model could not be asked for a key: %s", exc)
            return web.json_response({"error": "could not get a key"}, status=502)
        attach_token = self._tokens.issue(ATTACH_PREFIX + secrets.token_hex(12))
        # Only the key and where to use it: never our key, never the session object.
        return web.json_response(
            {
                "value": answer.get("value"),
                "expires_at": answer.get("expires_at"),
                "attach_token": attach_token,
                "calls_url": f"{self._access.rest_base}/realtime/calls",
            }
        )

    # ----- attaching -----------------------------------------------------------------------------

    async def attach(self, request: web.Request) -> web.Response:
        if self._redeem(request, ATTACH_PREFIX) is None:
            return self._refuse(request, 401, "token", "a valid attach token is required")
        try:
            async with asyncio.timeout(self._body_timeout_s):
                payload = json.loads(await read_bounded(request, MAX_BODY))
            call_id = payload["call_id"]
            if not isinstance(call_id, str) or not call_id.startswith("rtc_") or len(call_id) > 64:
                raise ValueError("not a call id")
        except TimeoutError:
            return self._refuse(request, 408, "slow", "the body did not arrive in time")
        except BodyTooLarge:
            return self._refuse(request, 413, "too_large", "the body is too large")
        except (ValueError, KeyError, TypeError, RecursionError):
            return self._refuse(request, 400, "bad_body", 'the body must be {"call_id": "rtc_…"}')
        leg = DirectLeg(call_id, self._ended)
        spec = CallSpec(call_id, transport="webrtc-direct", audio_format="audio/pcm", attach=True)
        opened = await self._core.open(spec, leg)
        if isinstance(opened, Refused):
            return self._refuse(request, 409, "refused", opened.reason)
        if isinstance(opened, Busy):
            self._hang_up_later(call_id)  # nobody will serve that browser: end its call
            return self._refuse(request, 503, "busy", "busy")
        self.legs[call_id] = leg
        return web.json_response({"call_id": call_id}, status=201)

    def _ended(self, leg: DirectLeg) -> None:
        """The session ended the call (or it was refused): release it here and end the
        browser's call at the model too (a 404 there means the browser hung up first)."""
        if self.legs.get(leg.call_id) is leg:
            del self.legs[leg.call_id]
        self._core.release(leg.call_id, leg)
        self._hang_up_later(leg.call_id)

    def _hang_up_later(self, call_id: str) -> None:
        task = asyncio.ensure_future(self._hang_up(call_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hang_up(self, call_id: str) -> None:
        url = f"{self._access.rest_base}/realtime/calls/{call_id}/hangup"
        try:
            async with self._client().post(url, headers=self._headers()) as reply:
                if reply.status // 100 != 2 and reply.status != 404:
                    logger.warning("hanging up %s at the model: %s", call_id, reply.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("could not hang up %s at the model: %s", call_id, exc)


def model_access(
    model: ModelSettings, model_url: str, agent_spec: str | None, ek_ttl_s: float
) -> ModelAccess:
    """What an ingress needs to mint keys for the default agent and hang up at the model."""
    agent = load_agents(agent_spec).get(None)

    def session() -> dict[str, Any]:
        return build_initial_config(agent, model=model.model)

    return ModelAccess(rest_base(model_url), model.api_key, session, ek_ttl_s)
