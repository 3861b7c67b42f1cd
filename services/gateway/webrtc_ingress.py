"""The WebRTC adapter on the ingress seam: browsers call us, aiortc terminates their media.

Signalling has the shape of OpenAI's ``/v1/realtime/calls``, so a page written for one works
with the other:

* ``POST /webrtc/token`` → ``{"token", "call_id", "expires_in"}``: a single-use call token (the
  stream-token machinery, single-use cluster-wide through the ledger). Open when
  ``CALLRAY_WEBRTC_TOKEN_SECRET`` is unset (development); otherwise the request must carry
  ``Authorization: Bearer <that secret>``, i.e. come from the call center's own backend;
* ``POST /webrtc/calls`` (``application/sdp``, ``Authorization: Bearer <call token>``) →
  ``201`` with the SDP answer and ``Location: /webrtc/calls/{id}``. Before any ICE work the
  offer is rate-limited per address (429), sized (413), typed (415), its token checked (401),
  its SDP checked (400, :mod:`services.webrtc.offer`) and the call admitted by the router (503
  with ``Retry-After`` when busy);
* ``POST /webrtc/calls/{id}/hangup``: the page's hang-up button, and its ``pagehide`` beacon;
* ``GET /webrtc/calls/{id}/events``: the call's transcript as server-sent events, for the page
  (:mod:`.call_feed`; only where the ingress has the cluster's call-event stream).

A call also ends when its data channel closes, when ICE and DTLS have not connected within
``connect_s`` (``ice_failed``), when the caller's audio stops for ``silence_s`` (a closed tab is
otherwise noticed by ICE consent only after ~29 s), or when the connection fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from typing import Any

import av
from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription

from services.config import GatewaySettings, WebRTCSettings
from services.errors import SdpError, StreamTokenError
from services.gateway.call_feed import CallFeed
from services.gateway.front_door import SourceRate
from services.gateway.ingress_core import Busy, IngressCore, Refused
from services.gateway.refusals import Refusals
from services.http_body import BodyTooLarge, read_bounded
from services.media.playout import Playout
from services.media.vocabulary import (
    AudioDone,
    CallSpec,
    Dtmf,
    Hangup,
    PlayAudio,
    PlaybackCut,
    Played,
    Transfer,
)
from services.observability import metrics
from services.telephony.stream_tokens import StreamTokens
from services.webrtc import ice, jitter
from services.webrtc.offer import MAX_OFFER_BYTES, CandidatePolicy, check_offer
from services.webrtc.track import Downmix, PacedTrack, read_caller

logger = logging.getLogger(__name__)

CALL_PREFIX = "rtc_"
MAX_PAGE_MESSAGE = 1024
DTMF_DIGITS = frozenset("0123456789*#ABCD")


class WebRTCLeg:
    """One browser call as the core's :class:`~.ingress_core.MediaLeg`."""

    def __init__(
        self, call_id: str, core: IngressCore, pc: RTCPeerConnection, settings: WebRTCSettings
    ) -> None:
        self.call_id = call_id
        self._core = core
        self.pc = pc
        self._settings = settings
        self.playout = Playout()
        self.track = PacedTrack(
            self.playout, self._played, on_late=lambda s: metrics.ingress_added("webrtc", "out", s)
        )
        # When each of the caller's frames left the jitter buffer, by aiortc's pts (the RTP
        # timestamp less the first one released): the start of the ingress's own work on it.
        self._released: dict[int, float] = {}
        self._first_timestamp: int | None = None
        self.channel: Any = None
        self.connected = asyncio.Event()
        self.finished = asyncio.Event()
        self.close_reason: str | None = None
        self.heard_at = time.monotonic()  # the caller's last audio
        self._tasks: set[asyncio.Task[None]] = set()

    # ----- MediaLeg ------------------------------------------------------------------------------

    def play(self, command: PlayAudio) -> None:
        self.playout.push(command.item_id, command.content_index, command.data)

    def audio_done(self, command: AudioDone) -> None:
        self.playout.done(command.item_id, command.content_index)

    def interrupt(self) -> PlaybackCut:
        cut, played = self.playout.interrupt()
        self._played(played)  # before the cut, which the core sends on return
        return cut

    def control(self, command: Hangup | Transfer) -> None:
        if isinstance(command, Transfer):
            logger.warning("a browser call cannot be transferred", extra={"call_id": self.call_id})
            self.end("transfer_unsupported")
        else:
            self.end(command.reason)

    def end(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        self._tell_page({"type": "call.ended", "reason": self.close_reason})
        self.finished.set()

    # ----- the caller's side ---------------------------------------------------------------------

    def caller_gone(self, reason: str) -> None:
        """The page hung up, closed, went silent or lost its connection."""
        if self.close_reason is None:
            self.close_reason = reason
            self._core.caller_gone(self.call_id, reason)
        self.finished.set()

    def _played(self, played: list[Played]) -> None:
        for message in played:
            self._core.caller_input(self.call_id, message)

    def _heard(self, pcm: bytes) -> None:
        self.heard_at = time.monotonic()
        self._core.caller_audio(self.call_id, pcm)

    def frame_released(self, timestamp: int) -> None:
        if self._first_timestamp is None:
            self._first_timestamp = timestamp
        self._released[(timestamp - self._first_timestamp) % (1 << 32)] = time.monotonic()
        if len(self._released) > 32:  # a frame that never decoded
            del self._released[next(iter(self._released))]

    def _delivered(self, pts: int) -> None:
        released = self._released.pop(pts, None)
        if released is not None:
            metrics.ingress_added("webrtc", "in", time.monotonic() - released)

    def _page_message(self, message: object) -> None:
        """What the page sends on the data channel: ``{"type": "dtmf", "digit": "5"}`` (its
        keypad). Anything else — not JSON, too large, unknown — is dropped and counted."""
        try:
            if not isinstance(message, str) or len(message) > MAX_PAGE_MESSAGE:
                raise ValueError("not a short text message")
            event = json.loads(message)
            if not isinstance(event, dict) or event.get("type") != "dtmf":
                raise ValueError("unknown message")
            digit = event.get("digit")
            if not isinstance(digit, str) or digit not in DTMF_DIGITS:
                raise ValueError("not a DTMF digit")
        except (ValueError, RecursionError):
            metrics.front_door_refused("webrtc_page_message")
            return
        self._core.caller_input(self.call_id, Dtmf(digit))

    def _tell_page(self, message: dict[str, str]) -> None:
        channel = self.channel
        if channel is not None and channel.readyState == "open":
            with contextlib.suppress(Exception):
                channel.send(json.dumps(message))

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def wire(self) -> None:
        """Hook the peer connection's events to this leg."""
        pc = self.pc

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "audio":
                self.spawn(read_caller(track, self._heard, self._delivered))

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            self.channel = channel
            channel.on("close", lambda: self.caller_gone("caller_hangup"))
            channel.on("message", self._page_message)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            state = pc.connectionState
            if state == "connected":
                self.heard_at = time.monotonic()
                self.connected.set()
            elif state == "failed":
                self.caller_gone("connection_failed" if self.connected.is_set() else "ice_failed")
            elif state == "closed":
                self.caller_gone("connection_closed")

    async def watch(self) -> None:
        """The deadlines: connected within ``connect_s``, then audio at least every
        ``silence_s``."""
        try:
            async with asyncio.timeout(self._settings.connect_s):
                await self.connected.wait()
        except TimeoutError:
            logger.warning(
                "browser call did not connect (ICE/DTLS) within %g s",
                self._settings.connect_s,
                extra={"call_id": self.call_id},
            )
            self.caller_gone("ice_failed")
            return
        while not self.finished.is_set():
            quiet = time.monotonic() - self.heard_at
            if quiet >= self._settings.silence_s:
                logger.info(
                    "browser caller silent for %.1f s: hung up",
                    quiet,
                    extra={"call_id": self.call_id},
                )
                self.caller_gone("caller_silent")
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.silence_s - quiet):
                    await self.finished.wait()

    async def close(self) -> None:
        self.track.stop()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await self.pc.close()


class WebRTCIngress:
    def __init__(
        self,
        core: IngressCore,
        settings: GatewaySettings,
        tokens: StreamTokens,
        *,
        draining: Any = lambda: False,
        feed: CallFeed | None = None,
    ) -> None:
        self._core = core
        self._feed = feed
        self._settings = settings
        self._webrtc = settings.webrtc
        self._tokens = tokens
        self._draining = draining
        self._rate = SourceRate(
            rate=self._webrtc.offers_per_source_s, burst=2 * self._webrtc.offers_per_source_s
        )
        self._policy = CandidatePolicy(
            allow_loopback="127.0.0.1" in self._webrtc.ice_addresses
            or "::1" in self._webrtc.ice_addresses,
            allow_private=self._webrtc.allow_private_candidates,
        )
        self._refuse = Refusals(logger, what="a WebRTC offer", prefix="webrtc")
        self.legs: dict[str, WebRTCLeg] = {}
        self._calls: set[asyncio.Task[None]] = set()
        ice.install(self._webrtc.ice_addresses)
        ice.install_port_range(self._webrtc.port_range)

    async def warm_up(self) -> None:
        """Before the first caller: one offer made and dropped (aiortc's SDP, certificate and
        ICE gathering code, PyAV's Opus and resampler set up once per process), so their
        first-use cost does not land on the first browser's answer."""
        pc = RTCPeerConnection(ice.rtc_configuration(self._webrtc))
        try:
            pc.addTrack(PacedTrack(Playout(), lambda _played: None))
            pc.createDataChannel("warm-up")
            await pc.setLocalDescription(await pc.createOffer())
            frame = av.AudioFrame(format="s16", layout="stereo", samples=960)
            frame.sample_rate = 48_000  # as aiortc decodes Opus (reference/webrtc-sip.md §2.1)
            Downmix()(frame)
        except Exception:  # a warm-up is worth nothing if it fails: the first call pays
            logger.warning("the WebRTC warm-up failed", exc_info=True)
        finally:
            await pc.close()

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/webrtc/token", self.token)
        app.router.add_post("/webrtc/calls", self.offer)
        app.router.add_post("/webrtc/calls/{call_id}/hangup", self.hangup)
        app.router.add_get("/webrtc/calls/{call_id}/events", self.events)

    async def close(self) -> None:
        for leg in list(self.legs.values()):
            leg.caller_gone("ingress_stopped")
        if self._calls:
            await asyncio.wait(self._calls, timeout=5.0)

    # ----- tokens --------------------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        secret = self._webrtc.token_secret.value
        if secret:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not secrets.compare_digest(given.encode(), secret.encode()):
                return self._refuse(request, 401, "bad_token_secret", "not authorised")
        call_id = CALL_PREFIX + secrets.token_hex(12)
        return web.json_response(
            {
                "token": self._tokens.issue(call_id),
                "call_id": call_id,
                "expires_in": self._settings.stream_token_ttl_s,
            }
        )

    # ----- an offer ------------------------------------------------------------------------------

    async def offer(self, request: web.Request) -> web.Response:
        began = time.monotonic()
        source = request.remote or "?"
        if not self._rate.allow(source, time.monotonic()):
            return self._refuse(request, 429, "rate", "too many offers")
        if self._draining():
            return self._refuse(request, 503, "draining", "busy")
        if request.content_type != "application/sdp":
            return self._refuse(request, 415, "content_type", "the offer must be application/sdp")
        try:
            async with asyncio.timeout(self._settings.request_timeout_s):
                body = await read_bounded(request, MAX_OFFER_BYTES)
        except TimeoutError:
            return self._refuse(request, 408, "slow", "the offer did not arrive in time")
        except BodyTooLarge:
            return self._refuse(request, 413, "too_large", "the offer is too large")
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        call_id = StreamTokens.call_of(token) if token else None
        if not call_id or not call_id.startswith(CALL_PREFIX):
            return self._refuse(request, 401, "token", "a call token is required")
        try:
            redeemed = self._tokens.redeem(token, call_id)
        except StreamTokenError as exc:
            return self._refuse(request, 401, "token", str(exc))
        try:
            checked = check_offer(body.decode("utf-8", "replace"), self._policy)
        except SdpError as exc:
            return self._refuse(request, 400, "bad_sdp", str(exc))

        pc = RTCPeerConnection(ice.rtc_configuration(self._webrtc))
        leg = WebRTCLeg(call_id, self._core, pc, self._webrtc)
        spec = CallSpec(call_id, transport="webrtc", audio_format="audio/pcm")
        admitting = time.monotonic()
        opened = await self._core.open(spec, leg, redeemed)  # admission before any ICE work
        negotiating = time.monotonic()
        if isinstance(opened, Refused):
            await pc.close()
            status = 401 if opened.code == 1008 else 503
            return self._refuse(request, status, "refused", opened.reason)
        if isinstance(opened, Busy):
            await pc.close()
            return self._refuse(request, 503, "busy", "busy")
        try:
            pc.addTrack(leg.track)
            leg.wire()
            await pc.setRemoteDescription(RTCSessionDescription(checked.sdp, "offer"))
            for transceiver in pc.getTransceivers():
                if transceiver.kind == "audio":
                    # Before any RTP, which flows only once ICE and DTLS are up. aiortc's own
                    # buffer stays ~300 ms deep after one lost packet (bench/jitter.py).
                    jitter.install(
                        transceiver.receiver,
                        jitter.AudioJitterBuffer(prefetch=1, on_release=leg.frame_released),
                    )
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # aiortc refused what our check let through
            leg.caller_gone("bad_offer")
            self._core.release(call_id, leg)
            await leg.close()
            return self._refuse(request, 400, "bad_sdp", f"the offer could not be used: {exc}")
        answer = ice.advertise(pc.localDescription.sdp, self._webrtc.advertise_address)
        if "\r\na=candidate:" not in answer:  # no address to gather on, or the port range full
            leg.caller_gone("no_media_port")
            self._core.release(call_id, leg)
            await leg.close()
            logger.warning("an offer found no UDP port to gather on (CALLRAY_WEBRTC_PORT_RANGE)")
            return self._refuse(request, 503, "no_port", "no media port free")
        self.legs[call_id] = leg
        task = asyncio.ensure_future(self._run(leg))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)
        answered = time.monotonic()
        metrics.webrtc_offer("admit", negotiating - admitting)
        metrics.webrtc_offer("negotiate", answered - negotiating)
        metrics.webrtc_offer("total", answered - began)
        return web.Response(
            status=201,
            text=answer,
            content_type="application/sdp",
            headers={"Location": f"/webrtc/calls/{call_id}"},
        )

    async def _run(self, leg: WebRTCLeg) -> None:
        """One call from its answer to its end."""
        watch = asyncio.ensure_future(leg.watch())
        try:
            await leg.finished.wait()
        finally:
            watch.cancel()
            self.legs.pop(leg.call_id, None)
            self._core.release(leg.call_id, leg)
            await leg.close()

    async def hangup(self, request: web.Request) -> web.Response:
        leg = self.legs.get(request.match_info["call_id"])
        if leg is None:
            return web.json_response({"error": "no such call"}, status=404)
        leg.caller_gone("caller_hangup")
        return web.json_response({"ok": True})

    async def events(self, request: web.Request) -> web.StreamResponse:
        # Any live call on this ingress: ours, or a browser's direct call we attached to.
        call_id = request.match_info["call_id"]
        if call_id not in self._core.calls or self._feed is None:
            return web.json_response({"error": "no such call or no event feed"}, status=404)
        reply = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await reply.prepare(request)
        async with self._feed.subscribe(call_id) as queue:
            while call_id in self._core.calls:
                try:
                    async with asyncio.timeout(10.0):
                        event = await queue.get()
                except TimeoutError:
                    await reply.write(b": keep-alive\n\n")  # proxies close idle streams
                    continue
                await reply.write(f"data: {json.dumps(event)}\n\n".encode())
        return reply
