"""The gateway's HTTP and WebSocket endpoints (aiohttp), all on one port.

- ``POST /twilio/voice``: Twilio's voice webhook. Checks ``X-Twilio-Signature`` when an auth token
  is configured (403 otherwise), then answers TwiML ``<Connect><Stream>`` carrying a single-use
  token as a ``<Parameter>``.
- ``GET /twilio/media``: the media stream. The call is opened through the router on ``start``
  (token checked); a refused call hears a busy tone and is closed. Bad frames get a log line and,
  before the call exists, a close with the reason; no frame can affect another call.
- ``GET /healthz``, ``GET /metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from aiohttp import WSMsgType, web

from services.config import GatewaySettings, MediaSettings
from services.errors import MediaStreamProtocolError, ProviderError, TransportError
from services.gateway.token_ledger import TokenLedger
from services.gateway.twilio_bridge import (
    EndStream,
    ForwardMedia,
    OpenCall,
    ToSession,
    TwilioBridge,
)
from services.gateway.twilio_rest import TwilioCallControl
from services.media.channel_client import Locate, MediaChannelClient
from services.media.vocabulary import (
    CallerHungUp,
    CallSpec,
    ClearPlayback,
    Command,
    Hangup,
    Transfer,
)
from services.observability import metrics
from services.runtime.placement import Rejected
from services.telephony.g711 import ulaw_encode
from services.telephony.stream_tokens import StreamTokens
from services.telephony.twilio_signature import (
    SIGNATURE_HEADER,
    is_valid_twilio_signature,
    public_request_url,
)
from services.telephony.twiml import connect_stream_twiml

logger = logging.getLogger(__name__)

MAX_FRAME_BYTES = 64 * 1024


class RouterPort(Protocol):
    async def open_call(self, spec: CallSpec) -> Any: ...


def busy_tone(seconds: float = 1.5) -> bytes:
    """The North American busy signal (480 + 620 Hz, 0.5 s on / 0.5 s off) in μ-law."""
    t = np.arange(int(seconds * 8000)) / 8000.0
    tone = (np.sin(2 * np.pi * 480 * t) + np.sin(2 * np.pi * 620 * t)) * 0.25
    tone[(t % 1.0) >= 0.5] = 0.0
    return ulaw_encode((tone * 32767).astype(np.int16))


class _Call:
    """One live media stream: its bridge, its host link and an ordered writer."""

    def __init__(self, ws: web.WebSocketResponse, bridge: TwilioBridge) -> None:
        self.ws = ws
        self.bridge = bridge
        self.link: MediaChannelClient | None = None
        self.out: asyncio.Queue[str | None] = asyncio.Queue()
        self.close_reason: str | None = None
        self.reader: asyncio.Task[None] | None = None


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
        self._media = media or MediaSettings()
        self.settings = settings
        self._router = router
        self._locate_channel = locate_channel
        self._tokens = tokens
        # None: single use is enforced per process only (one ingress, or tests without Redis).
        self._ledger = ledger
        self._links: dict[str, MediaChannelClient] = {}
        self._control: TwilioCallControl | None = None
        if settings.twilio_account_sid and settings.twilio_auth_token:
            self._control = TwilioCallControl(
                settings.twilio_account_sid,
                settings.twilio_auth_token.value,
                api_base_url=settings.twilio_api_base_url,
            )
        self._control_tasks: set[asyncio.Task[None]] = set()
        self._calls: dict[str, _Call] = {}
        self._warned_unsigned = False

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_post("/twilio/voice", self.voice)
        app.router.add_get("/twilio/media", self.media)
        app.router.add_get("/healthz", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _cleanup(self, _app: web.Application) -> None:
        for link in self._links.values():
            await link.close()
        if self._control is not None:
            await self._control.close()

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "calls": len(self._calls)})

    async def metrics(self, _request: web.Request) -> web.Response:
        body, content_type = metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    # ----- the webhook ---------------------------------------------------------------------------

    async def voice(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
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
                logger.warning("rejected a voice webhook with a bad X-Twilio-Signature")
                return web.Response(status=403, text="invalid signature")
        elif not self._warned_unsigned:
            self._warned_unsigned = True
            logger.warning("TWILIO_AUTH_TOKEN is not set: voice webhooks are not authenticated")
        call_sid = form.get("CallSid", "")
        if not call_sid:
            return web.Response(status=400, text="CallSid is required")
        if self.settings.public_url:
            stream_url = public_request_url(
                self.settings.public_url, "/twilio/media", websocket=True
            )
        else:
            stream_url = f"ws://{request.host}/twilio/media"
        params = {"token": self._tokens.issue(call_sid)}
        for key in ("From", "To"):
            if form.get(key):
                params[key.lower()] = form[key]
        return web.Response(text=connect_stream_twiml(stream_url, params), content_type="text/xml")

    # ----- the media stream ----------------------------------------------------------------------

    async def media(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, heartbeat=30.0)
        await ws.prepare(request)
        call = _Call(ws, TwilioBridge(self._tokens, chunk_ms=self._media.chunk_ms))
        call.reader = asyncio.create_task(self._read(call))
        writer = asyncio.create_task(self._write(call))
        try:
            # wait(), not await: the writer cancels the reader to end the call from our side.
            await asyncio.wait({call.reader})
        finally:
            call.reader.cancel()
            await asyncio.wait({call.reader})
            call_id = call.bridge.call_id
            if call_id is not None and self._calls.get(call_id) is call:
                del self._calls[call_id]
                if call.link is not None and call.close_reason is None:
                    call.link.send(call_id, CallerHungUp("stream_closed"))
                if call.link is not None:
                    call.link.calls.discard(call_id)
            call.out.put_nowait(None)
            await writer
            if not ws.closed:
                # Closed with no reader waiting, aiohttp sends our close frame and then reads
                # (discarding media) until the caller's close: the full handshake. Closing
                # while a reader waits drops TCP at once, and a caller still streaming gets a
                # reset before it reads the reason.
                reason = (call.close_reason or "").encode()[:120]
                await ws.close(code=1000, message=reason)
        return ws

    async def _read(self, call: _Call) -> None:
        async for msg in call.ws:
            if msg.type != WSMsgType.TEXT:
                if msg.type == WSMsgType.ERROR:
                    logger.warning("media stream error: %s", call.ws.exception())
                    return
                logger.warning("media stream sent a non-text frame; ignored")
                continue
            try:
                actions = call.bridge.receive(msg.data)
            except MediaStreamProtocolError as exc:
                logger.warning("bad Twilio frame: %s", exc)
                if call.bridge.call_id is None:
                    await call.ws.close(code=1008, message=str(exc)[:120].encode())
                    return
                continue
            for action in actions:
                if isinstance(action, ForwardMedia):
                    if call.link is not None and call.bridge.call_id is not None:
                        call.link.send(call.bridge.call_id, action.payload)
                elif isinstance(action, ToSession):
                    if call.link is not None and call.bridge.call_id is not None:
                        call.link.send(call.bridge.call_id, action.message)
                elif isinstance(action, OpenCall):
                    if not await self._open(call, action):
                        return
                elif isinstance(action, EndStream):
                    if call.link is not None and call.bridge.call_id is not None:
                        call.close_reason = action.reason
                        call.link.send(call.bridge.call_id, CallerHungUp(action.reason))
                    return

    async def _open(self, call: _Call, action: OpenCall) -> bool:
        if action.call_id in self._calls:
            await call.ws.close(code=1008, message=b"call already streaming")
            return False
        if not await self._claim_token(call, action):
            return False
        spec = CallSpec(
            action.call_id,
            transport="twilio",
            audio_format="audio/pcmu",
            caller=action.caller,
            ingress_id=self.ingress_id,
        )
        result = await self._router.open_call(spec)
        if isinstance(result, Rejected):
            logger.info("call refused: %s", result.reason)
            await self._busy(call)
            return False
        link = self._links.get(result.host_id)
        if link is None:
            link = MediaChannelClient(
                self._locate_channel(result.host),
                ingress_id=self.ingress_id,
                dispatch=self._dispatch,
                interval_s=self._media.channel_interval_ms / 1000,
            )
            link.start()
            self._links[result.host_id] = link
        call.link = link
        link.calls.add(action.call_id)
        self._calls[action.call_id] = call
        return True

    async def _claim_token(self, call: _Call, action: OpenCall) -> bool:
        """Claim the stream's token cluster-wide; on refusal close the stream and say why."""
        if self._ledger is None or action.token is None:
            return True
        try:
            first = await self._ledger.claim(action.token.nonce, action.token.expires_ms)
        except TransportError as exc:
            # Fail closed (see token_ledger): 1011, the server could not fulfil the request
            # (RFC 6455 §7.4.1); the Redis detail stays in our log, not in the peer's close frame.
            logger.error("refused a media stream: the token could not be checked: %s", exc)
            await call.ws.close(code=1011, message=b"stream token could not be checked")
            return False
        if not first:
            logger.warning("refused a media stream: its token was already used on another ingress")
            await call.ws.close(code=1008, message=b"stream token was already used")
            return False
        return True

    async def _busy(self, call: _Call) -> None:
        stream = call.bridge.stream_id or ""
        audio = busy_tone()
        for at in range(0, len(audio), 160):
            await call.ws.send_str(
                call.bridge.serializer.encode_media(stream, audio[at : at + 160])
            )
        await call.ws.send_str(call.bridge.serializer.encode_mark(stream, "busy"))
        # Twilio echoes the mark once the tone has played; then the stream (and call) ends.
        try:
            async with asyncio.timeout(len(audio) / 8000 + 2.0):
                async for msg in call.ws:
                    if msg.type == WSMsgType.TEXT and '"mark"' in msg.data:
                        break
        except TimeoutError:
            pass
        await call.ws.close(code=1000, message=b"busy")

    def _dispatch(self, command: Command) -> None:
        call = self._calls.get(command.call_id)
        if call is None:
            return
        if self._control is not None and isinstance(command, Hangup | Transfer):
            task = asyncio.create_task(self._control_call(call, command))
            self._control_tasks.add(task)
            task.add_done_callback(self._control_tasks.discard)
            return
        frames, close_reason, to_session = call.bridge.on_command(command)
        for frame in frames:
            call.out.put_nowait(frame)
        if isinstance(command, ClearPlayback) and frames and command.speech_at > 0:
            # Queued ahead of nothing else the writer holds for this call: it leaves next.
            metrics.barge_in_clear("twilio", max(0.0, time.time() - command.speech_at))
        if to_session is not None and call.link is not None:
            call.link.send(command.call_id, to_session)
        if close_reason is not None:
            call.close_reason = close_reason
            call.out.put_nowait(None)

    async def _control_call(self, call: _Call, command: Hangup | Transfer) -> None:
        """Hang up or transfer through Twilio's REST API, then close the stream."""
        assert self._control is not None
        try:
            if isinstance(command, Transfer):
                await self._control.transfer(command.call_id, command.target)
                call.close_reason = "transferred"
            else:
                await self._control.hang_up(command.call_id)
                call.close_reason = command.reason
        except ProviderError as exc:
            logger.error("Twilio call control failed: %s", exc)
            call.close_reason = "call_control_failed"
        call.out.put_nowait(None)

    async def _write(self, call: _Call) -> None:
        # One writer per stream keeps frames in order and a slow caller from stalling others.
        while True:
            frame = await call.out.get()
            if frame is None:
                if call.close_reason is not None and call.reader is not None:
                    call.reader.cancel()  # the handler then closes the socket, with the reason
                return
            if call.ws.closed:
                continue
            try:
                await call.ws.send_str(frame)
            except ConnectionError:
                logger.info("media stream went away while sending")
