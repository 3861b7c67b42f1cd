"""``POST /v1/realtime/client_secrets``: ephemeral ``ek_`` keys, as OpenAI mints them for
browsers (reference/realtime-protocol.md, section 7.1).

The request (authorised by the API key itself, not by another ephemeral key)::

    {"expires_after": {"anchor": "created_at", "seconds": 600},
     "session": {"type": "realtime", ...}}

``seconds`` must be 10..7200 (default 600); ``session`` (optional) is checked now, by the engine
that would run it, and applies to every session the key starts. The answer is
``{"value": "ek_…", "expires_at": <unix s>, "session": <the session object>}``. The key works
as a bearer on both paths (:mod:`.auth`) until it expires.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Final

from aiohttp import web

from .auth import MAX_EPHEMERAL_S, MIN_EPHEMERAL_S, Grant, KeyRing
from .engine import RealtimeEngine
from .http_replies import error_reply, preflight_reply
from .validation import InvalidRequest

__all__ = ["SECRETS_PATH", "ClientSecrets"]

SECRETS_PATH: Final = "/v1/realtime/client_secrets"
DEFAULT_EPHEMERAL_S: Final = 600

EngineFactory = Callable[[str | None, Sequence[dict[str, Any]]], RealtimeEngine]


class ClientSecrets:
    def __init__(
        self,
        keys: KeyRing,
        *,
        grant: Callable[[web.Request], Grant | None],
        engine: EngineFactory,
        clock: Callable[[], float],
    ) -> None:
        self._keys = keys
        self._grant = grant
        self._engine = engine
        self._clock = clock

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post(SECRETS_PATH, self.create)
        router.add_route("OPTIONS", SECRETS_PATH, self.preflight)

    async def preflight(self, request: web.Request) -> web.Response:
        return preflight_reply(request)

    async def create(self, request: web.Request) -> web.Response:
        grant = self._grant(request)
        if grant is None or not grant.root:
            return error_reply(401, "Incorrect API key provided.", "invalid_api_key")
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise InvalidRequest("The body must be a JSON object.", code="invalid_type")
            seconds = _seconds(body.get("expires_after"))
            session = body.get("session")
            if session is not None and not isinstance(session, dict):
                raise InvalidRequest(
                    "Invalid 'session': expected an object.", code="invalid_type", param="session"
                )
            configs = [session] if session else []
            engine = self._engine(session.get("model") if session else None, configs)
        except InvalidRequest as exc:
            return error_reply(400, str(exc), exc.code, param=exc.param)
        except ValueError:
            return error_reply(400, "The body is not JSON.", "invalid_json")
        now = self._clock()
        value = self._keys.mint(seconds, now, session)
        return web.json_response(
            {"value": value, "expires_at": math.floor(now + seconds), "session": engine.session}
        )


def _seconds(expires_after: Any) -> int:
    if expires_after is None:
        return DEFAULT_EPHEMERAL_S
    if not isinstance(expires_after, dict):
        raise InvalidRequest(
            "Invalid 'expires_after': expected an object.",
            code="invalid_type",
            param="expires_after",
        )
    anchor = expires_after.get("anchor", "created_at")
    if anchor != "created_at":
        raise InvalidRequest(
            f"Invalid 'expires_after.anchor': {str(anchor)[:40]!r}; the only anchor is "
            "'created_at'.",
            code="invalid_value",
            param="expires_after.anchor",
        )
    seconds = expires_after.get("seconds", DEFAULT_EPHEMERAL_S)
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int)
        or not MIN_EPHEMERAL_S <= seconds <= MAX_EPHEMERAL_S
    ):
        raise InvalidRequest(
            f"Invalid 'expires_after.seconds': expected an integer in "
            f"{MIN_EPHEMERAL_S}..{MAX_EPHEMERAL_S}, got {str(seconds)[:40]}.",
            code="invalid_value",
            param="expires_after.seconds",
        )
    return seconds
