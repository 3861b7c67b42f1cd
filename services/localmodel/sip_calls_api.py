"""REST call control of the local model's SIP calls, as OpenAI's (reference/realtime-protocol.md
§6.4): ``POST /v1/realtime/calls/{call_id}/accept|reject|refer|hangup``, on the registry of
:mod:`.sip_calls`.

* ``accept``: the body is a session object (``"type": "realtime"`` required), checked as every
  other session path checks one (the engine refuses what ``session.update`` would: 400 with
  OpenAI's error body). The turn-detection fields AJS says the Calls API rejects for SIP
  (``threshold``, ``prefix_padding_ms``, ``silence_duration_ms``, §6.4) are refused the same
  way, so a client that sends them fails here as it would there;
* ``reject``: ``{"status_code": 486}`` (optional; 603 by default), a final status 400..699;
* ``refer``: ``{"target_uri": "tel:+1…"}`` or ``"sip:…"``; nothing that cannot be a
  ``Refer-To`` (whitespace, control characters, another scheme) gets through;
* ``hangup``: no body. A call that is not a SIP call is the WebRTC handler's (the two share the
  path; see :meth:`SipCallsApi.add_routes`).

Each answers 200 with no body, 404 ``call_id_not_found`` for a call that is not (any more) in
the state it needs (a caller who hung up before the accept), 401 without a key.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

from aiohttp import web

from services.http_body import BodyTooLarge, read_bounded

from .auth import Grant
from .engine import RealtimeEngine
from .http_replies import error_reply
from .sip_calls import CallNotFound, SipCalls
from .validation import InvalidRequest

__all__ = ["SipCallsApi"]

CALLS_PATH: Final = "/v1/realtime/calls"
MAX_BODY: Final = 128 * 1024
SIP_UNSUPPORTED_TURN_FIELDS: Final = ("threshold", "prefix_padding_ms", "silence_duration_ms")
MAX_TARGET_CHARS: Final = 256

EngineFactory = Callable[[str | None, Sequence[dict[str, Any]]], RealtimeEngine]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _not_found() -> web.Response:
    return error_reply(404, "No session found for the provided call_id", "call_id_not_found")


class SipCallsApi:
    def __init__(
        self,
        calls: SipCalls,
        *,
        grant: Callable[[web.Request], Grant | None],
        engine: EngineFactory,
    ) -> None:
        self._calls = calls
        self._grant = grant
        self._engine = engine

    def add_routes(self, router: web.UrlDispatcher, *, other_hangup: Handler) -> None:
        """Register before the WebRTC routes: aiohttp serves a path's first route, and the
        hangup path is both's; ``other_hangup`` answers for a call that is not SIP."""
        router.add_post(CALLS_PATH + "/{call_id}/accept", self.accept)
        router.add_post(CALLS_PATH + "/{call_id}/reject", self.reject)
        router.add_post(CALLS_PATH + "/{call_id}/refer", self.refer)

        async def hangup(request: web.Request) -> web.StreamResponse:
            if self._calls.state(request.match_info["call_id"]) is None:
                return await other_hangup(request)
            return await self.hangup(request)

        router.add_post(CALLS_PATH + "/{call_id}/hangup", hangup)

    # ----- the endpoints ----------------------------------------------------------------------

    async def accept(self, request: web.Request) -> web.Response:
        async def act(call_id: str) -> None:
            self._calls.pending(call_id)
            session = await _body(request, required=True)
            if session.get("type") != "realtime":
                raise InvalidRequest(
                    "Missing required parameter: 'type' (must be 'realtime').",
                    code="missing_required_parameter",
                    param="type",
                )
            _check_sip_turn_detection(session)
            model = session.get("model") if isinstance(session.get("model"), str) else None
            self._calls.accept(call_id, self._engine(model, [session]))

        return await self._run(request, act)

    async def reject(self, request: web.Request) -> web.Response:
        async def act(call_id: str) -> None:
            status = (await _body(request, required=False)).get("status_code", 603)
            if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status < 700:
                raise InvalidRequest(
                    "Invalid 'status_code': expected a SIP final status 400..699.",
                    code="invalid_value",
                    param="status_code",
                )
            self._calls.reject(call_id, status)

        return await self._run(request, act)

    async def refer(self, request: web.Request) -> web.Response:
        async def act(call_id: str) -> None:
            target = (await _body(request, required=True)).get("target_uri")
            if not isinstance(target, str) or not _referable(target):
                raise InvalidRequest(
                    "Invalid 'target_uri': expected a tel: or sip: URI.",
                    code="invalid_value",
                    param="target_uri",
                )
            self._calls.refer(call_id, target)

        return await self._run(request, act)

    async def hangup(self, request: web.Request) -> web.Response:
        async def act(call_id: str) -> None:
            self._calls.hangup(call_id)

        return await self._run(request, act)

    async def _run(
        self, request: web.Request, act: Callable[[str], Awaitable[None]]
    ) -> web.Response:
        """The shape every endpoint shares: the key, then the act on the path's call; 404 for
        a call that is not (or no longer) pending, 400 with OpenAI's error body."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        try:
            await act(request.match_info["call_id"])
        except CallNotFound:
            return _not_found()
        except InvalidRequest as exc:
            return error_reply(400, str(exc), exc.code, param=exc.param)
        return web.Response(status=200)

    def _refused(self, request: web.Request) -> web.Response | None:
        if self._grant(request) is None:
            return error_reply(401, "Incorrect API key provided.", "invalid_api_key")
        return None


async def _body(request: web.Request, *, required: bool) -> dict[str, Any]:
    """The JSON object body (``{}`` when optional and empty); InvalidRequest otherwise."""
    try:
        raw = await read_bounded(request, MAX_BODY)
    except BodyTooLarge:
        raise InvalidRequest("The body is too large.", code="invalid_body") from None
    if not raw.strip() and not required:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise InvalidRequest("The body is not JSON.", code="invalid_json") from None
    if not isinstance(value, dict):
        raise InvalidRequest("The body must be a JSON object.", code="invalid_type")
    return value


def _check_sip_turn_detection(session: dict[str, Any]) -> None:
    audio = session.get("audio")
    audio_in = audio.get("input") if isinstance(audio, dict) else None
    detection = audio_in.get("turn_detection") if isinstance(audio_in, dict) else None
    if not isinstance(detection, dict):
        return
    for name in SIP_UNSUPPORTED_TURN_FIELDS:
        if name in detection:
            raise InvalidRequest(
                f"Unknown parameter: 'session.audio.input.turn_detection.{name}' is not "
                "supported for SIP calls.",
                code="unknown_parameter",
                param=f"audio.input.turn_detection.{name}",
            )


def _referable(target: str) -> bool:
    """A ``Refer-To`` URI (RFC 3515 §2.1): ``tel:`` or ``sip:``, bounded, one token."""
    scheme, sep, rest = target.partition(":")
    return (
        bool(sep and rest)
        and scheme.lower() in ("tel", "sip")
        and len(target) <= MAX_TARGET_CHARS
        and not any(c.isspace() or ord(c) < 0x20 or c in '<>"\x7f' for c in target)
    )
