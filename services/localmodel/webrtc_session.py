"""One Realtime session over WebRTC: the engine between a peer connection's tracks and its
``oai-events`` data channel, as OpenAI's WebRTC endpoint (reference/realtime-protocol.md,
section 7.3).

* The peer's audio track is decoded by aiortc and read by :func:`~services.webrtc.track.
  read_caller` as 24 kHz PCM16 mono; each 20 ms frame is appended to the engine
  (:meth:`RealtimeEngine.append_audio` converts it to the session's input format).
* The engine's audio goes out on a :class:`~services.webrtc.track.PacedTrack`, one 20 ms frame
  per tick of its clock (silence when idle), through the :class:`.OutputAudioBuffer`, which
  turns the audio deltas into ``output_audio_buffer.*`` events.
* Every other event goes both ways as JSON text on ``oai-events``; those the engine emits before
  the channel opens (``session.created``) wait for it. The client's
  ``output_audio_buffer.clear`` empties the track and truncates the item at what it had played;
  the engine never sees it.
* Sidebands (:mod:`.sideband`: a WebSocket opened with ``?call_id=``) get every event sent from
  when they attach, and what they send is handled as if it came on the channel (section 7.4).

Nothing waits in a loop here: the channel, the track reader, the engine's deadline timer and
finished speech renderings each call in, and each call feeds the engine and sends what it
emitted. The session ends when the data channel closes, the connection fails or closes, ICE and
DTLS are not up within ``connect_s``, or :meth:`WebRTCSession.end` is called; :attr:`ended` is
then set, and the owner calls :meth:`close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Coroutine
from typing import Any, Final, Protocol

from aiortc import RTCPeerConnection

from services.media.playout import PCM24K, Playout
from services.media.vocabulary import Played
from services.webrtc import jitter
from services.webrtc.track import PacedTrack, read_caller

from .engine import RealtimeEngine
from .output_audio_buffer import OutputAudioBuffer
from .session_io import SESSION_UPDATED, SessionIO

__all__ = ["CHANNEL", "WebRTCSession"]

log = logging.getLogger(__name__)

CHANNEL: Final = "oai-events"
OUTPUT_CLEAR: Final = "output_audio_buffer.clear"
# Events kept for a channel not open yet; a peer that never opens one (audio only) must not
# grow the session without bound.
MAX_UNSENT: Final = 1000


class Listener(Protocol):
    """Another party to the session's events (a sideband socket)."""

    def send(self, text: str) -> None: ...

    def close(self) -> None: ...


class WebRTCSession:
    def __init__(
        self,
        call_id: str,
        pc: RTCPeerConnection,
        engine: RealtimeEngine,
        io: SessionIO,
        *,
        connect_s: float = 10.0,
    ) -> None:
        self.call_id = call_id
        self.pc = pc
        self.engine = engine
        self.io = io
        self.connect_s = connect_s
        # A report per frame: the buffer's `started` goes out with the response's first frame.
        self.playout = Playout(report_ms=PCM24K.frame_ms)
        self.buffer = OutputAudioBuffer(self.playout, engine.new_id)
        self.track = PacedTrack(self.playout, self._played)
        self.channel: Any = None
        self.ended = asyncio.Event()
        self.end_reason: str | None = None
        self.frames_in = 0
        self._unsent: list[str] = []
        self._listeners: set[Listener] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()

    def attach(self) -> None:
        """Add our track and listen to the peer connection; before ``setRemoteDescription``."""
        self.pc.addTrack(self.track)
        self.pc.on("datachannel", self._on_channel)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    def use_jitter_buffer(self) -> None:
        """Our jitter buffer for the peer's audio (20 ms deep where aiortc's stays ~300 ms after
        a loss: services/webrtc/jitter.py); after ``setRemoteDescription``, before any RTP."""
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "audio":
                jitter.install(transceiver.receiver, jitter.AudioJitterBuffer(prefetch=1))

    def start(self) -> None:
        """Send what the engine has emitted so far (to the channel, once open) and watch the
        connect deadline; after the answer is made."""
        self._after()
        self._spawn(self._watch_connect())

    def add_listener(self, listener: Listener) -> None:
        self._listeners.add(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.discard(listener)

    def end(self, reason: str) -> None:
        if self.end_reason is None:
            self.end_reason = reason
            log.info("local model: WebRTC session %s ended: %s", self.call_id, reason)
        self.ended.set()

    async def close(self) -> None:
        self.end(self.end_reason or "closed")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.io.close()
        self.track.stop()
        for listener in list(self._listeners):
            listener.close()
        self._listeners.clear()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await self.pc.close()

    # ----- the peer connection's events -----------------------------------------------------

    def _on_channel(self, channel: Any) -> None:
        if channel.label != CHANNEL or self.channel is not None:
            log.warning("local model: ignoring data channel %.40r", channel.label)
            return
        self.channel = channel
        channel.on("message", self.receive_client)
        channel.on("close", lambda: self.end("data channel closed"))
        unsent, self._unsent = self._unsent, []
        for text in unsent:
            channel.send(text)

    def _on_track(self, track: Any) -> None:
        if track.kind == "audio":
            self._spawn(read_caller(track, self._on_audio))

    def _on_state(self) -> None:
        state = self.pc.connectionState
        if state in ("failed", "closed"):
            self.end(f"connection {state}")

    async def _watch_connect(self) -> None:
        await asyncio.sleep(self.connect_s)
        if self.pc.connectionState != "connected":
            self.end(f"not connected within {self.connect_s:g} s")

    # ----- into the engine ------------------------------------------------------------------

    def receive_client(self, message: str | bytes) -> None:
        """A client event, from the channel or a sideband."""
        if self.ended.is_set():
            return
        clear = _output_clear(message)
        if clear is not None:
            self.io.observe("client", clear)
            self._clear_output()
        else:
            obj = self.engine.receive_frame(message, self._loop.time())
            if obj is not None:
                self.io.observe("client", obj)
        self._after()

    def _on_audio(self, pcm: bytes) -> None:
        if self.ended.is_set():
            return
        self.frames_in += 1
        self.engine.append_audio(pcm, self._loop.time())
        self._after()

    def _tick(self) -> None:
        self._timer = None
        if self.ended.is_set():
            return
        self.engine.tick(self._loop.time())
        self._after()

    def _clear_output(self) -> None:
        events, heard = self.buffer.clear()
        for item_id, content_index, ms in heard:
            self.engine.truncate_heard(item_id, content_index, ms)
        for event in events:
            self._send(event)

    # ----- out of the engine ----------------------------------------------------------------

    def _after(self) -> None:
        """After the engine was fed: start its speech renderings, send what it emitted, and
        be woken at its next deadline."""
        self.io.start_renders(self.engine, self._tick)
        for event in self.engine.take_events():
            for out in self.buffer.route(event):
                self._send(out)
        deadline = self.engine.next_deadline()
        if self._timer is not None and (deadline is None or self._timer.when() != deadline):
            self._timer.cancel()
            self._timer = None
        if deadline is not None and self._timer is None:
            self._timer = self._loop.call_at(deadline, self._tick)

    def _played(self, played: list[Played]) -> None:
        # On the track's clock (aiortc's sender task): the buffer's started/stopped events.
        for event in self.buffer.played(played):
            self._send(event)

    def _send(self, event: dict[str, Any]) -> None:
        if event["type"] == SESSION_UPDATED and self.io.hold_session_updated(
            lambda: self._send_now(event)
        ):
            return
        self._send_now(event)

    def _send_now(self, event: dict[str, Any]) -> None:
        if self.ended.is_set():
            return
        self.io.observe("server", event)
        text = json.dumps(event)
        for listener in self._listeners:
            listener.send(text)
        channel = self.channel
        if channel is None:
            if len(self._unsent) < MAX_UNSENT:
                self._unsent.append(text)
        elif channel.readyState == "open":
            channel.send(text)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _output_clear(message: str | bytes) -> dict[str, Any] | None:
    """The client event if ``message`` is an ``output_audio_buffer.clear``, else ``None``."""
    if not isinstance(message, str) or OUTPUT_CLEAR not in message:
        return None
    try:
        obj = json.loads(message)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and obj.get("type") == OUTPUT_CLEAR else None
