"""The Twilio adapter on the ingress seam (:mod:`.ingress_core`): webhook, TwiML and media stream.

- ``POST /twilio/voice``: Twilio's voice webhook. Checks ``X-Twilio-Signature`` when an auth token
  is configured (403 otherwise), then answers TwiML ``<Connect><Stream>`` carrying a single-use
  token as a ``<Parameter>``.
- ``GET /twilio/media``: the media stream. The frames of one stream are read by a
  :class:`~services.gateway.twilio_bridge.TwilioBridge` (framing through the serializer injected
  for the route, marks as playback accounting); the call opens through the core on ``start``; a
  refused call hears a busy tone and is closed. A frame that cannot be used (malformed, out of
  order, oversize) gets a log line and closes its stream with the reason (1008; 1009 for
  oversize); a live call then ends with ``protocol_error``. No frame can affect another call.

Before its ``start`` frame a stream is unauthenticated (:mod:`.front_door`): it must send a valid
one within ``stream_start_s`` (else 1008), and past ``max_pending_streams`` such streams in all,
or ``max_pending_per_source`` from one address, a new one is refused with 503 before the
upgrade. A webhook's body must arrive within ``request_timeout_s`` (else 408), and a CallSid
gets one stream token while it lives, however often Twilio sends its webhook. Warnings about bad
input are rate-limited per peer and reason.

Hang-up and transfer go through Twilio's REST API when an account is configured; otherwise a
hang-up closes the stream (with ``<Connect><Stream>``, Twilio then ends the call).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

import numpy as np
from aiohttp import WSMsgType, web

from services.config import GatewaySettings, MediaSettings
from services.errors import MediaStreamProtocolError, ProviderError, TransportError
from services.gateway.front_door import PendingStreams, Ticket
from services.gateway.ingress_core import Busy, IngressCore, Refused
from services.gateway.token_ledger import TokenLedger
from services.gateway.twilio_bridge import (
    EndStream,
    ForwardMedia,
    Ignored,
    OpenCall,
    ToSession,
    TwilioBridge,
)
from services.gateway.twilio_rest import TwilioCallControl
from services.media.vocabulary import (
    AudioDone,
    CallSpec,
    Hangup,
    PlayAudio,
    PlaybackCut,
    Transfer,
)
from services.observability import metrics
from services.observability.log_limits import LogLimiter
from services.telephony.g711 import ulaw_encode
from services.telephony.media_streams import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MediaStreamSerializer,
    TwilioSerializer,
)
from services.telephony.stream_tokens import StreamTokens
from services.telephony.twilio_signature import (
    SIGNATURE_HEADER,
    is_valid_twilio_signature,
    public_request_url,
)
from services.telephony.twiml import busy_twiml, connect_stream_twiml

logger = logging.getLogger(__name__)

DRAINING_MESSAGE = "Sorry, we cannot take your call right now. Please call again in a minute."


def busy_tone(seconds: float = 1.5) -> bytes:
    """The North American busy signal (480 + 620 Hz, 0.5 s on / 0.5 s off) in μ-law."""
    t = np.arange(int(seconds * 8000)) / 8000.0
    tone = (np.sin(2 * np.pi * 480 * t) + np.sin(2 * np.pi * 620 * t)) * 0.25
    tone[(t % 1.0) >= 0.5] = 0.0
    return ulaw_encode((tone * 32767).astype(np.int16))


async def _send(ws: web.WebSocketResponse, frame: str | bytes) -> None:
    if isinstance(frame, str):
        await ws.send_str(frame)
    else:
        await ws.send_bytes(frame)  # binary-audio providers' serializers


class TwilioLeg:
    """One Twilio media stream as the core's :class:`~.ingress_core.MediaLeg`: outbound frames
    leave in order from one writer, so a slow caller stalls no one else."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        bridge: TwilioBridge,
        control: TwilioCallControl | None,
    ) -> None:
        self.ws = ws
        self.bridge = bridge
        self._control = control
        self._out: deque[str | bytes] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self.close_reason: str | None = None
        self.close_code = 1000
        self.reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._control_pending = False
        self.source = ""  # the peer's address, for the front door's log limits
        self.ticket: Ticket | None = None  # counted as unauthenticated until its call opens

    # ----- MediaLeg ------------------------------------------------------------------------------

    def play(self, command: PlayAudio) -> None:
        self._queue(self.bridge.play(command))

    def audio_done(self, command: AudioDone) -> None:
        self._queue(self.bridge.audio_done(command))

    def interrupt(self) -> PlaybackCut:
        clear, cut = self.bridge.interrupt()
        if clear is not None:
            # Media and marks still queued here would play after the clear: drop them now
            # (Twilio echoes nothing for frames it never got), then the clear leaves first.
            self._out.clear()
            self._queue([clear])
        return cut

    def control(self, command: Hangup | Transfer) -> None:
        if self._control is None:
            if isinstance(command, Transfer):
                logger.warning("transfer requested but no Twilio account is configured")
                self.end("transfer_unsupported")
            else:
                self.end(command.reason)
            return
        # Until Twilio has the update the stream stays open: with <Connect><Stream>, closing it
        # ends the call, so a transfer that lost that race would be a hang-up.
        self._control_pending = True
        task = asyncio.create_task(self._rest(command))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def end(self, reason: str) -> None:
        if self._control_pending:
            return  # the call-control request in flight closes the stream when it is done
        if self.close_reason is None:
            self.close_reason = reason
        self._closing = True
        self._wake.set()

    # ----- I/O -----------------------------------------------------------------------------------

    async def _rest(self, command: Hangup | Transfer) -> None:
        """Hang up or transfer through Twilio's REST API, then close the stream."""
        assert self._control is not None
        try:
            if isinstance(command, Transfer):
                await self._control.transfer(command.call_id, command.target)
                reason = "transferred"
            else:
                await self._control.hang_up(command.call_id)
                reason = command.reason
        except ProviderError as exc:
            logger.error("Twilio call control failed: %s", exc)
            reason = "call_control_failed"
        self._control_pending = False
        self.end(reason)

    def _queue(self, frames: list[str | bytes]) -> None:
        if frames:
            self._out.extend(frames)
            self._wake.set()

    async def write(self) -> None:
        """The stream's writer: runs until :meth:`end` (then stops the reader, whose handler
        closes the socket with the reason) or :meth:`stop`."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._out:
                frame = self._out.popleft()
                if self.ws.closed:
                    continue
                try:
                    await _send(self.ws, frame)
                except ConnectionError:
                    logger.info("media stream went away while sending")
            if self._closing:
                if self.close_reason is not None and self.reader is not None:
                    self.reader.cancel()
                return

    def stop(self) -> None:
        self._closing = True
        self._wake.set()


class TwilioIngress:
    """The Twilio routes; ``serializer`` makes the framing per stream (swappable per route)."""

    def __init__(
        self,
        core: IngressCore,
        settings: GatewaySettings,
        tokens: StreamTokens,
        ledger: TokenLedger,
        *,
        media: MediaSettings | None = None,
        serializer: Callable[[], MediaStreamSerializer] = TwilioSerializer,
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self._core = core
        self.settings = settings
        self._tokens = tokens
        self._ledger = ledger
        self.pending = PendingStreams(
            total=settings.max_pending_streams, per_source=settings.max_pending_per_source
        )
        self._log = LogLimiter(logger)
        self._media = media or MediaSettings()
        self._serializer = serializer
        self._draining = draining
        self._control: TwilioCallControl | None = None
        if settings.twilio_account_sid and settings.twilio_auth_token:
            self._control = TwilioCallControl(
                settings.twilio_account_sid,
                settings.twilio_auth_token.value,
                api_base_url=settings.twilio_api_base_url,
            )
        self._warned_unsigned = False

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/twilio/voice", self.voice)
        app.router.add_get("/twilio/media", self.media)

    async def close(self) -> None:
        if self._control is not None:
            await self._control.close()

    # ----- the webhook ---------------------------------------------------------------------------

    async def voice(self, request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                form = {k: str(v) for k, v in (await request.post()).items()}
        except TimeoutError:
            metrics.front_door_refused("request_timeout")
            source = request.remote or "?"
            self._log.warning(source, "request_timeout", "slow voice webhook body from %s", source)
            return web.Response(status=408, text="request body too slow")
        token = self.settings.twilio_auth_token.value
        if token:
            url = (
                public_request_url(self.settings.public_url, request.path, request.query_string)
                if self.settings.public_url
                else str(request.url)
            )
            if not is_valid_twilio_signature(
                url, form, request.headers.get(SIGNATURE_HEADER), token
            ):
                source = request.remote or "?"
                self._log.warning(
                    source, "bad_signature", "voice webhook from %s: bad signature", source
                )
                return web.Response(status=403, text="invalid signature")
        elif not self._warned_unsigned:
            self._warned_unsigned = True
            logger.warning("TWILIO_AUTH_TOKEN is not set: voice webhooks are not authenticated")
        call_sid = form.get("CallSid", "")
        if not call_sid:
            return web.Response(status=400, text="CallSid is required")
        if self._draining():
            # The node is stopping: turn the call away politely (Twilio plays it, then hangs up).
            return web.Response(text=busy_twiml(DRAINING_MESSAGE), content_type="text/xml")
        if self.settings.public_url:
            stream_url = public_request_url(
                self.settings.public_url, "/twilio/media", websocket=True
            )
        else:
            stream_url = f"ws://{request.host}/twilio/media"
        token = self._tokens.issue(call_sid)
        try:
            # Twilio may send the webhook again (a retry): the call keeps its one token.
            ttl_ms = int(self.settings.stream_token_ttl_s * 1000)
            token = await self._ledger.token_for_call(call_sid, token, ttl_ms)
        except TransportError as exc:
            # Fail open here: the stream's claim of its token fails closed, and that is what
            # keeps a token single-use; only the one-token-per-CallSid hygiene lapses.
            self._log.warning("ledger", "ledger_unavailable", "voice webhook: %s", exc)
        params = {"token": token}
        for key in ("From", "To"):
            if form.get(key):
                params[key.lower()] = form[key]
        return web.Response(text=connect_stream_twiml(stream_url, params), content_type="text/xml")

    # ----- the media stream ----------------------------------------------------------------------

    async def media(self, request: web.Request) -> web.StreamResponse:
        source = request.remote or "?"
        ticket = self.pending.admit(source)
        if isinstance(ticket, str):
            metrics.front_door_refused("pending_limit")
            self._log.warning(
                source, "pending_limit", "refused a media stream from %s: %s", source, ticket
            )
            return web.Response(status=503, text=ticket, headers={"Retry-After": "1"})
        try:
            return await self._stream(request, source, ticket)
        finally:
            ticket.release()

    async def _stream(
        self, request: web.Request, source: str, ticket: Ticket
    ) -> web.WebSocketResponse:
        """One media stream from upgrade to close."""
        # The socket refuses what the serializer would (1009 before any JSON work).
        ws = web.WebSocketResponse(max_msg_size=DEFAULT_MAX_MESSAGE_BYTES, heartbeat=30.0)
        await ws.prepare(request)
        bridge = TwilioBridge(
            self._tokens,
            serializer=self._serializer(),
            chunk_ms=self._media.chunk_ms,
            mark_ms=self._media.mark_ms,
        )
        leg = TwilioLeg(ws, bridge, self._control)
        leg.source, leg.ticket = source, ticket
        leg.reader = asyncio.create_task(self._read(leg))
        writer = asyncio.create_task(leg.write())
        try:
            # wait(), not await: the writer cancels the reader to end the call from our side.
            await asyncio.wait({leg.reader})
        finally:
            leg.reader.cancel()
            await asyncio.wait({leg.reader})
            if bridge.call_id is not None:
                self._core.release(bridge.call_id, leg)
            leg.stop()
            await writer
            if not ws.closed:
                # Closed with no reader waiting, aiohttp sends our close frame and then reads
                # (discarding media) until the caller's close: the full handshake. Closing
                # while a reader waits drops TCP at once, and a caller still streaming gets a
                # reset before it reads the reason.
                reason = (leg.close_reason or "").encode()[:120]
                await ws.close(code=leg.close_code, message=reason)
        return ws

    async def _read(self, leg: TwilioLeg) -> None:
        # Until a valid start frame the peer is unauthenticated: it has stream_start_s for it.
        limit = self.settings.stream_start_s
        try:
            async with asyncio.timeout(limit) as opening:
                await self._read_frames(leg, opening)
        except TimeoutError:
            if not opening.expired():
                raise
            metrics.front_door_refused("start_timeout")
            self._log.warning(
                leg.source, "start_timeout", "media stream from %s sent no start", leg.source
            )
            leg.close_code, leg.close_reason = 1008, f"no start frame within {limit:g} s"

    async def _read_frames(self, leg: TwilioLeg, opening: asyncio.Timeout) -> None:
        bridge, core, log, peer = leg.bridge, self._core, self._log, leg.source
        opened = False
        async for msg in leg.ws:
            if msg.type != WSMsgType.TEXT:
                if msg.type == WSMsgType.ERROR:
                    # aiohttp has closed the socket already (1009 for an oversize frame).
                    log.warning(peer, "stream_error", "media stream error: %s", leg.ws.exception())
                    if opened:
                        core.caller_gone(bridge.call_id or "", "protocol_error")
                    return
                log.warning(peer, "non_text_frame", "media stream sent a non-text frame; ignored")
                continue
            try:
                actions = bridge.receive(msg.data)
            except MediaStreamProtocolError as exc:
                log.warning(peer, "bad_frame", "bad Twilio frame from %s: %s", peer, exc)
                if not opened:
                    await leg.ws.close(code=1008, message=str(exc)[:120].encode())
                    return
                # Twilio never sends such a frame: the peer is broken or hostile. End this
                # call, saying why; every other call is on its own socket and goes on.
                leg.close_code, leg.close_reason = 1008, str(exc)
                core.caller_gone(bridge.call_id or "", "protocol_error")
                return
            for action in actions:
                if isinstance(action, ForwardMedia):
                    if opened:
                        core.caller_audio(bridge.call_id or "", action.payload)
                elif isinstance(action, ToSession):
                    if opened:
                        core.caller_input(bridge.call_id or "", action.message)
                elif isinstance(action, OpenCall):
                    opening.reschedule(None)  # a valid start: the rest is our own work
                    opened = await self._open(leg, action)
                    if not opened:
                        return
                    if leg.ticket is not None:
                        leg.ticket.release()  # an admitted call now stands behind the stream
                elif isinstance(action, Ignored):
                    log.warning(peer, "unknown_event", "ignored Twilio event %r", action.event)
                elif isinstance(action, EndStream):
                    if opened:
                        leg.close_reason = action.reason
                        core.caller_gone(bridge.call_id or "", action.reason)
                    return

    async def _open(self, leg: TwilioLeg, action: OpenCall) -> bool:
        spec = CallSpec(
            action.call_id, transport="twilio", audio_format="audio/pcmu", caller=action.caller
        )
        result = await self._core.open(spec, leg, action.token)
        if isinstance(result, Refused):
            await leg.ws.close(code=result.code, message=result.reason.encode())
            return False
        if isinstance(result, Busy):
            await self._busy(leg)
            return False
        return True

    async def _busy(self, leg: TwilioLeg) -> None:
        stream = leg.bridge.stream_id or ""
        serializer = leg.bridge.serializer
        audio = busy_tone()
        for at in range(0, len(audio), 160):
            await _send(leg.ws, serializer.encode_media(stream, audio[at : at + 160]))
        await _send(leg.ws, serializer.encode_mark(stream, "busy"))
        # Twilio echoes the mark once the tone has played; then the stream (and call) ends.
        try:
            async with asyncio.timeout(len(audio) / 8000 + 2.0):
                async for msg in leg.ws:
                    if msg.type == WSMsgType.TEXT and '"mark"' in msg.data:
                        break
        except TimeoutError:
            pass
        await leg.ws.close(code=1000, message=b"busy")
