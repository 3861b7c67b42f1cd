"""``POST /v1/realtime/calls``: WebRTC signalling, and the live WebRTC sessions it starts.

An offer (:mod:`.call_offer`) from an authorised client gets ``201`` with the SDP answer
(``application/sdp``) and ``Location: /v1/realtime/calls/rtc_<hex>``, as OpenAI answers
(reference/realtime-protocol.md, section 7.2); the session then runs on the peer connection
(:mod:`.webrtc_session`). ``POST /v1/realtime/calls/{call_id}/hangup`` ends one (section 6).
Replies carry CORS headers and the preflight is answered (:mod:`.http_replies`).

Refusals, before any ICE work: 401 (no key), 415 (neither SDP nor a form), 413 (too large),
400 (a malformed offer, or a session config the engine refuses, with its message). Every peer
connection gets an explicit ``RTCConfiguration(iceServers=[])``: aiortc's default would ask a
public STUN server (reference/webrtc-sip.md §2.2).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Any, Final

from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from services.webrtc.offer import CandidatePolicy

from .auth import Grant
from .call_offer import OfferRefused, read_offer
from .engine import RealtimeEngine
from .http_replies import CORS, error_reply, preflight_reply
from .session_io import SessionIO
from .validation import InvalidRequest
from .webrtc_session import WebRTCSession

__all__ = ["CALLS_PATH", "WebRTCCalls"]

log = logging.getLogger(__name__)

CALLS_PATH: Final = "/v1/realtime/calls"
CALL_PREFIX: Final = "rtc_"

# (model, session configs) → a new engine; raises InvalidRequest for a config it refuses.
EngineFactory = Callable[[str | None, Sequence[dict[str, Any]]], RealtimeEngine]


class WebRTCCalls:
    def __init__(
        self,
        *,
        grant: Callable[[web.Request], Grant | None],
        engine: EngineFactory,
        session_io: Callable[[], SessionIO],
        ice_addresses: tuple[str, ...] = (),
        connect_s: float = 10.0,
    ) -> None:
        self._grant = grant
        self._engine = engine
        self._session_io = session_io
        self._connect_s = connect_s
        # Offered loopback candidates are kept only where we gather on loopback (tests).
        loopback = any(ipaddress.ip_address(a).is_loopback for a in ice_addresses)
        self._policy = CandidatePolicy(allow_loopback=loopback)
        self.sessions: dict[str, WebRTCSession] = {}
        self._runs: set[asyncio.Task[None]] = set()

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post(CALLS_PATH, self.create)
        router.add_route("OPTIONS", CALLS_PATH, self.preflight)
        # POST .../hangup is served by sip_calls_api.py, which hands us the calls that are ours.
        router.add_route("OPTIONS", CALLS_PATH + "/{call_id}/hangup", self.preflight)

    async def preflight(self, request: web.Request) -> web.Response:
        return preflight_reply(request)

    async def create(self, request: web.Request) -> web.Response:
        grant = self._grant(request)
        if grant is None:
            return error_reply(401, "Incorrect API key provided.", "invalid_api_key")
        try:
            offer = await read_offer(request, self._policy)
        except OfferRefused as exc:
            return error_reply(exc.status, str(exc), exc.code)
        # An ephemeral key's session first, then the call's own (section 7.1).
        configs = [c for c in (grant.session, offer.session) if c]
        try:
            engine = self._engine(offer.model, configs)
        except InvalidRequest as exc:
            return error_reply(400, str(exc), exc.code, param=exc.param)
        call_id = CALL_PREFIX + secrets.token_hex(16)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        session = WebRTCSession(call_id, pc, engine, self._session_io(), connect_s=self._connect_s)
        try:
            session.attach()
            await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
            session.use_jitter_buffer()
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # aiortc refused what our check let through
            await session.close()
            return error_reply(400, f"The offer could not be used: {exc}", "invalid_offer")
        self.sessions[call_id] = session
        session.start()
        run = asyncio.ensure_future(self._run(session))
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)
        return web.Response(
            status=201,
            text=pc.localDescription.sdp,
            content_type="application/sdp",
            headers={"Location": f"{CALLS_PATH}/{call_id}", **CORS},
        )

    async def hangup(self, request: web.Request) -> web.Response:
        if self._grant(request) is None:
            return error_reply(401, "Incorrect API key provided.", "invalid_api_key")
        session = self.sessions.get(request.match_info["call_id"])
        if session is None:
            return error_reply(
                404, "No session found for the provided call_id", "call_id_not_found"
            )
        session.end("hung up")
        return web.Response(status=200, headers=CORS)

    async def close_all(self, reason: str) -> int:
        """End every live session (a fault for tests, or the server stopping)."""
        sessions = list(self.sessions.values())
        for session in sessions:
            session.end(reason)
        await asyncio.gather(*self._runs, return_exceptions=True)
        return len(sessions)

    async def _run(self, session: WebRTCSession) -> None:
        try:
            await session.ended.wait()
        finally:
            self.sessions.pop(session.call_id, None)
            await session.close()
