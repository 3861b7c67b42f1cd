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
import logging
from collections.abc import Coroutine
from typing import Any, Final

from aiortc import RTCPeerConnection

from services.webrtc import jitter
from services.webrtc.track import PacedTrack, read_caller

from .engine import RealtimeEngine
from .engine_session import EngineSession
from .session_io import SessionIO

__all__ = ["CHANNEL", "WebRTCSession"]

log = logging.getLogger(__name__)

CHANNEL: Final = "oai-events"
# Events kept for a channel not open yet; a peer that never opens one (audio only) must not
# grow the session without bound.
MAX_UNSENT: Final = 1000


class WebRTCSession(EngineSession):
    def __init__(
        self,
        call_id: str,
        pc: RTCPeerConnection,
        engine: RealtimeEngine,
        io: SessionIO,
        *,
        connect_s: float = 10.0,
    ) -> None:
        super().__init__(call_id, engine, io)
        self.pc = pc
        self.connect_s = connect_s
        self.track = PacedTrack(self.playout, self.played)
        self.channel: Any = None
        self._unsent: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()

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
        self.after()
        self._spawn(self._watch_connect())

    def end(self, reason: str) -> None:
        if self.end_reason is None:
            self.end_reason = reason
            log.info("local model: WebRTC session %s ended: %s", self.call_id, reason)
        self.ended.set()

    async def close(self) -> None:
        self.end(self.end_reason or "closed")
        self.stop_timer()
        self.io.close()
        self.track.stop()
        self.close_listeners()
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
            self._spawn(read_caller(track, self.audio_in))

    def _on_state(self) -> None:
        state = self.pc.connectionState
        if state in ("failed", "closed"):
            self.end(f"connection {state}")

    async def _watch_connect(self) -> None:
        await asyncio.sleep(self.connect_s)
        if self.pc.connectionState != "connected":
            self.end(f"not connected within {self.connect_s:g} s")

    # ----- out -------------------------------------------------------------------------------

    def deliver(self, text: str) -> None:
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
