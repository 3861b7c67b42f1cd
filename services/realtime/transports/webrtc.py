"""``OpenAIRealtimeWebRTC``: the session ↔ model transport over WebRTC (the seed's, and AJS's).

:meth:`~OpenAIRealtimeWebRTC.connect` builds a peer connection with our audio track and the
``oai-events`` data channel, lets ``change_peer_connection`` adjust or replace it (after the
track is added, before the offer), POSTs the offer (``application/sdp``, a key or ``ek_``) to
``/v1/realtime/calls`` and takes the ``call_id`` from the answer's ``Location``. Once the
channel opens it sends the initial ``session.update`` and resolves on the first
``session.updated``, before any listener sees that event; after ``ack_timeout_s`` (5 s) it logs
a warning and resolves anyway, and a channel that closes while it waits raises. As in AJS
``openaiRealtimeWebRtc.ts`` (reference/webrtc-sip.md §3c).

Events are JSON on the channel, as on the WebSocket; audio is not: ours goes out on a track
(:meth:`send_audio` converts the session's input format to 24 kHz PCM for it) and the model's
comes on the remote track, decoded and converted to the session's output format and emitted as
``audio`` events for the assistant item playing, between ``output_audio_buffer.started`` and
``.stopped``. :meth:`interrupt` sends ``response.cancel`` (when a response is active) and
``output_audio_buffer.clear``: over WebRTC the server truncates at what its track sent, so no
``conversation.item.truncate`` is ours to send. A connection ``disconnected`` gets
``disconnected_grace_s`` (5 s) to come back; ``failed`` closes at once.

``audio_source`` (a track of yours, e.g. a microphone) replaces the track :meth:`send_audio`
feeds, and ``audio_sink`` (a callable taking 24 kHz PCM16) gets the model's audio as it comes;
both are the caller's: :meth:`close` stops neither.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)

from services.config import DEFAULT_MODEL
from services.errors import NotConnected, ProviderError, TransportClosed, TransportError, UserError
from services.media.playout import Playout
from services.realtime.playback import PlaybackSource
from services.realtime.transports.base import TransportAudio, TransportErrorEvent
from services.realtime.transports.openai_base import OpenAIRealtimeBase
from services.realtime.transports.webrtc_audio import FromTrack, ToTrack
from services.realtime.wire import JSON
from services.webrtc.track import PacedTrack, read_caller

logger = logging.getLogger(__name__)

OPENAI_CALLS_URL = "https://api.openai.com/v1/realtime/calls"
CHANNEL = "oai-events"

PeerConnectionHook = Callable[[RTCPeerConnection], RTCPeerConnection | Awaitable[RTCPeerConnection]]


def calls_url(realtime_url: str) -> str:
    """``ws(s)://host/v1/realtime`` (a model endpoint as configured) → its
    ``http(s)://host/v1/realtime/calls``."""
    parts = urlsplit(realtime_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/")
    if not path.endswith("/calls"):
        path += "/calls"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


class OpenAIRealtimeWebRTC(OpenAIRealtimeBase):
    def __init__(
        self,
        *,
        base_url: str | None = None,
        model: str | None = None,
        audio_source: MediaStreamTrack | None = None,
        audio_sink: Callable[[bytes], None] | None = None,
        change_peer_connection: PeerConnectionHook | None = None,
        ice_servers: Sequence[str] = (),
        ack_timeout_s: float = 5.0,
        disconnected_grace_s: float = 5.0,
        connect_timeout_s: float = 10.0,
        playback: PlaybackSource | None = None,
    ) -> None:
        super().__init__(playback=playback)
        self._base_url = base_url or OPENAI_CALLS_URL
        self._model = model
        self._audio_source = audio_source
        self._audio_sink = audio_sink
        self._change_pc = change_peer_connection
        self._ice_servers = list(ice_servers)
        self._ack_timeout_s = ack_timeout_s
        self._grace_s = disconnected_grace_s
        self._connect_timeout_s = connect_timeout_s
        self.pc: RTCPeerConnection | None = None
        self.channel: Any = None
        self.call_id: str | None = None
        self._input = Playout()
        self._to_track = ToTrack("audio/pcm")
        self._from_track = FromTrack("audio/pcm")
        self._ack: asyncio.Future[None] | None = None
        self._speaking: tuple[str, str] | None = None  # (response id, item id) on the track
        self._assistant_item: tuple[str, str] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closers: set[asyncio.Task[None]] = set()
        self._grace: asyncio.TimerHandle | None = None
        self._closing = False

    # ----- connecting --------------------------------------------------------------------------

    async def connect(
        self,
        *,
        api_key: str | None = None,
        model: str | None = None,
        url: str | None = None,
        call_id: str | None = None,
        initial_session_config: JSON | None = None,
    ) -> None:
        if call_id is not None:
            raise UserError(
                "a WebRTC transport makes its own call; attach to a call_id over the WebSocket"
            )
        if self._status in ("connected", "connecting"):
            raise UserError("transport is already connected")
        self._closing = False
        self._start_connection()
        self._set_status("connecting")
        config = dict(initial_session_config or {})
        self._note_formats(config)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await self._open(api_key, model or self._model, url, config)
        except BaseException as exc:
            await self._teardown()
            self._set_status("disconnected")
            if isinstance(exc, TimeoutError):
                raise TransportError(
                    f"WebRTC connection to the model not up within {self._connect_timeout_s:g} s"
                ) from None
            raise
        self._set_status("connected")

    async def _open(
        self, api_key: str | None, model: str | None, url: str | None, config: JSON
    ) -> None:
        pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[RTCIceServer(urls=u) for u in self._ice_servers])
        )
        source = self._audio_source or PacedTrack(self._input, lambda _played: None)
        pc.addTrack(source)
        if self._change_pc is not None:
            changed = self._change_pc(pc)
            if inspect.isawaitable(changed):
                changed = await changed
            if changed is not pc:
                await pc.close()
                pc = changed
        self.pc = pc
        channel = pc.createDataChannel(CHANNEL)  # before the offer, so the offer carries it
        self.channel = channel
        opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ack = asyncio.get_running_loop().create_future()

        def on_open() -> None:
            if not opened.done():
                opened.set_result(None)

        channel.on("open", on_open)
        channel.on("message", self._on_channel_message)
        channel.on("close", self._on_channel_close)
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_state)

        await pc.setLocalDescription(await pc.createOffer())
        answer, location = await self._post_offer(pc.localDescription.sdp, api_key, model, url)
        self.call_id = location.rstrip("/").rsplit("/", 1)[-1] or None
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await opened
        channel.send(
            json.dumps({"type": "session.update", "session": {"type": "realtime", **config}})
        )
        try:
            async with asyncio.timeout(self._ack_timeout_s):
                await asyncio.shield(self._ack)
        except TimeoutError:
            logger.warning("timed out waiting for session.updated ack; resolving connect() anyway")
        finally:
            self._ack = None  # a later close must not fail a future nobody awaits

    async def _post_offer(
        self, sdp: str, api_key: str | None, model: str | None, url: str | None
    ) -> tuple[str, str]:
        if url is not None and url.startswith(("ws://", "wss://")):
            url = calls_url(url)  # a session's model endpoint, as configured for WebSockets
        target = url or self._base_url
        if "?" not in target:
            target += "?" + urlencode({"model": model or DEFAULT_MODEL})
        headers = {"Content-Type": "application/sdp"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.post(target, data=sdp, headers=headers) as reply,
            ):
                text = await reply.text()
                if reply.status // 100 != 2:
                    raise ProviderError(
                        f"the model refused the WebRTC offer ({reply.status}): {_detail(text)}",
                        retryable=reply.status >= 500 or reply.status == 429,
                        code=str(reply.status),
                    )
                return text, reply.headers.get("Location", "")
        except aiohttp.ClientError as exc:
            raise TransportError(f"could not reach the model to call it: {exc}") from exc

    # ----- the channel and the track -----------------------------------------------------------

    def _on_channel_message(self, message: object) -> None:
        if not isinstance(message, str):
            return
        kind = _type_of(message)
        ack = self._ack
        if kind == "session.updated" and ack is not None and not ack.done():
            ack.set_result(None)  # connect() resolves before any listener sees the event
        elif kind == "response.output_item.added":
            self._note_item(message)
        elif kind == "output_audio_buffer.started":
            self._speaking = self._assistant_item
        elif kind in ("output_audio_buffer.stopped", "output_audio_buffer.cleared"):
            self._speaking = None
        event = self.receive_text(message)
        if event is not None and event.type in ("session.updated", "session.created"):
            self._note_formats(self.session_config)

    def _on_channel_close(self) -> None:
        ack = self._ack
        if ack is not None and not ack.done():
            ack.set_exception(TransportClosed("the oai-events channel closed during connect"))
        self._lost("the oai-events channel closed")

    def _on_track(self, track: Any) -> None:
        if track.kind != "audio":
            return
        task = asyncio.ensure_future(read_caller(track, self._on_model_audio))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_model_audio(self, pcm24: bytes) -> None:
        if self._audio_sink is not None:
            self._audio_sink(pcm24)
        speaking = self._speaking
        if speaking is None:
            return  # the track's silence between responses
        response_id, item_id = speaking
        data = self._from_track(pcm24)
        if not data:
            return
        key = (item_id, 0)
        if self._current_audio != key:
            self._current_audio = key
        ms = len(data) / self._output_bytes_per_ms
        self._received_ms[key] = self._received_ms.get(key, 0.0) + ms
        self._playback.on_audio_received(item_id, 0, ms)
        self.emit("audio", TransportAudio(data, response_id, item_id, 0))

    def _note_item(self, message: str) -> None:
        try:
            event = json.loads(message)
            item = event["item"]
            if item.get("type") == "message" and item.get("role") == "assistant":
                self._assistant_item = (str(event.get("response_id", "")), str(item["id"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # receive_text reports a malformed event

    def _note_formats(self, session: JSON) -> None:
        audio = session.get("audio") if isinstance(session, dict) else None
        if not isinstance(audio, dict):
            return
        fmt_in = _format_name((audio.get("input") or {}).get("format"))
        fmt_out = _format_name((audio.get("output") or {}).get("format"))
        if fmt_in and fmt_in != self._to_track.fmt:
            self._to_track = ToTrack(fmt_in)
        if fmt_out and fmt_out != self._from_track.fmt:
            self._from_track = FromTrack(fmt_out)
        self._note_output_format(session)

    def _on_state(self) -> None:
        pc = self.pc
        if pc is None:
            return
        state = pc.connectionState
        if state == "connected" and self._grace is not None:
            self._grace.cancel()
            self._grace = None
        elif state == "disconnected" and self._grace is None:
            loop = asyncio.get_running_loop()
            self._grace = loop.call_later(
                self._grace_s, self._lost, f"disconnected for {self._grace_s:g} s"
            )
        elif state in ("failed", "closed"):
            self._lost(f"the peer connection {state}")

    def _lost(self, why: str) -> None:
        if self._closing or self._status == "disconnected":
            return
        logger.warning("model WebRTC connection lost: %s", why)
        self.emit("error", TransportErrorEvent(TransportClosed(f"model connection lost: {why}")))
        self._set_status("disconnected")
        # Not one of self._tasks: a teardown racing this one must not cancel it mid-close,
        # which would leave the peer connection's sockets open.
        task = asyncio.ensure_future(self._teardown())
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    # ----- sending -----------------------------------------------------------------------------

    def _send_text(self, text: str) -> None:
        channel = self.channel
        if channel is None or self._status != "connected" or channel.readyState != "open":
            raise NotConnected("the Realtime transport is not connected")
        channel.send(text)

    def send_audio(self, audio: bytes, *, commit: bool = False) -> None:
        if self._muted:
            return
        if self._status != "connected":
            raise NotConnected("the Realtime transport is not connected")
        if audio and self._audio_source is None:
            self._input.push("caller", 0, self._to_track(audio))
        if commit:
            self._send_text('{"type":"input_audio_buffer.commit"}')

    def interrupt(self, *, cancel_response: bool = True) -> None:
        """Stop the model's audio: cancel the response and clear the server's output buffer,
        which truncates the item at what it had sent (no truncate is ours to send)."""
        if cancel_response and self._response_active:
            self.cancel_response()
        if self._status == "connected":
            self._send_text('{"type":"output_audio_buffer.clear"}')
        self._reset_playback()
        self._speaking = None
        self.emit("audio_interrupted")

    def complete_interruption(self, heard: Sequence[tuple[str, int, int]] | None) -> None:
        """Nothing to settle: over WebRTC the server truncated when it cleared its buffer."""

    # ----- closing -----------------------------------------------------------------------------

    async def close(self) -> None:
        self._closing = True
        if self._status != "disconnected":
            self._set_status("disconnecting")
        await self._teardown()
        self._set_status("disconnected")

    async def _teardown(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        pc, self.pc, self.channel = self.pc, None, None
        if pc is not None:
            try:
                await pc.close()  # a caller's audio_source is its own: not stopped here
            except Exception:
                logger.debug("closing the peer connection failed", exc_info=True)


def _type_of(message: str) -> str | None:
    # The type is near the start of every event; a full parse follows in receive_text.
    at = message.find('"type"')
    if at < 0:
        return None
    try:
        start = message.index('"', message.index(":", at) + 1) + 1
        return message[start : message.index('"', start)]
    except ValueError:
        return None


def _format_name(fmt: object) -> str | None:
    if isinstance(fmt, dict):
        fmt = fmt.get("type")
    return fmt if fmt in ("audio/pcm", "audio/pcmu", "audio/pcma") else None


def _detail(text: str) -> str:
    """The server's error message from a JSON error body, else the start of the body."""
    try:
        body = json.loads(text)
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
        if isinstance(message, str):
            return message[:300]
    except ValueError:
        pass
    return text.strip()[:300]


__all__ = ["OPENAI_CALLS_URL", "OpenAIRealtimeWebRTC", "calls_url"]
