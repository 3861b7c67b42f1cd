"""A browser caller played by aiortc: it asks for a call token, offers audio and a data channel,
streams a tone (or silence) in 20 ms frames, and measures what it hears back.

It dials the way the call page does (``POST /webrtc/token``, then the offer to
``/webrtc/calls`` with the token as bearer); run it in a loopback-only network namespace with
the ICE hook on 127.0.0.1 (``services.webrtc.ice.install``), as the tests and
``bench/webrtc.py`` do. Echo-mode frame tags do not survive Opus, so latency is timed by tone
onsets: :attr:`WebRTCCaller.onsets` holds when audible audio began after a quiet spell.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from services.webrtc import ice

RATE = 48_000
SAMPLES = 960  # 20 ms
AUDIBLE = 500  # peak sample level (of 32767): over it a frame is speech, not a track's silence
QUIET_FRAMES = 10  # 200 ms without audible audio, then audible: an onset


def audible(frame: av.AudioFrame) -> bool:
    """Whether a decoded frame carries speech rather than the silence a paced track sends
    between turns (a peak over :data:`AUDIBLE`)."""
    return bool(np.abs(frame.to_ndarray()).max() > AUDIBLE)


async def each_frame(track: Any, handle: Callable[[av.AudioFrame], None]) -> None:
    """Hand every frame a remote track decodes to ``handle``, until the track ends."""
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        handle(frame)


class ToneTrack(MediaStreamTrack):
    """A paced 48 kHz mono source: what :meth:`say` queued, else a tone while ``speaking``,
    else silence."""

    kind = "audio"

    def __init__(self, hz: float = 440.0) -> None:
        super().__init__()
        self.hz = hz
        self.level = 0.3  # of full scale: speech to any VAD
        self.speaking = False
        self.sent_onsets: list[float] = []  # when each tone began to go out
        self._was_speaking = False
        self._queued = np.zeros(0, dtype=np.int16)
        self._n = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        due = self._start + self._n * SAMPLES / RATE
        if due > now:
            await asyncio.sleep(due - now)
        if len(self._queued):
            pcm = np.zeros(SAMPLES, dtype=np.int16)
            take = self._queued[:SAMPLES]
            pcm[: len(take)] = take
            self._queued = self._queued[SAMPLES:]
        else:
            if self.speaking and not self._was_speaking:
                self.sent_onsets.append(time.monotonic())
            self._was_speaking = self.speaking
            t = (np.arange(SAMPLES) + self._n * SAMPLES) / RATE
            level = self.level if self.speaking else 0.0
            pcm = (np.sin(2 * np.pi * self.hz * t) * level * 32767).astype(np.int16)
        frame = av.AudioFrame(format="s16", layout="mono", samples=SAMPLES)
        frame.planes[0].update(pcm.tobytes())
        frame.sample_rate = RATE
        frame.time_base = fractions.Fraction(1, RATE)
        frame.pts = self._n * SAMPLES
        self._n += 1
        return frame

    def say(self, pcm48: np.ndarray) -> None:
        """Queue 48 kHz mono PCM to send next."""
        self._queued = np.concatenate([self._queued, pcm48.astype(np.int16)])


class WebRTCCaller:
    def __init__(self, base_url: str, *, token: str | None = None) -> None:
        self.base_url = base_url
        self.call_id = ""
        self.token = token
        self.source = ToneTrack()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.channel: Any = None
        self.messages: list[dict[str, Any]] = []
        self.received_frames = 0
        self.loud_frames = 0  # frames with audible audio (the agent speaking)
        self.first_loud = -1  # index of the first and the latest audible frame received
        self.last_loud = -1
        # Timings (time.monotonic): the click, the answer's arrival, the first audible frame,
        # and every onset of audible audio after at least QUIET_FRAMES quiet frames.
        self.clicked_at = 0.0
        self.answered_at = 0.0
        self.offer_s = 0.0  # the POST of the offer until its answer
        self.first_audio_at = 0.0
        self.onsets: list[float] = []
        self.closed_reason: str | None = None
        self.answer_status = 0
        self.answer_text = ""
        self._tasks: set[asyncio.Task[None]] = set()
        ice.install(("127.0.0.1",))

    async def fetch_token(self, http: aiohttp.ClientSession) -> None:
        async with http.post(f"{self.base_url}/webrtc/token") as reply:
            body = await reply.json()
        self.token, self.call_id = body["token"], body["call_id"]

    async def dial(self) -> int:
        """Offer; returns the HTTP status of the answer (201 when the call is up)."""
        self.clicked_at = time.monotonic()
        async with aiohttp.ClientSession() as http:
            if self.token is None:
                await self.fetch_token(http)
            self.pc.addTrack(self.source)
            self.channel = self.pc.createDataChannel("callray")
            self.channel.on("message", self._on_message)
            self.pc.on("track", self._on_track)
            await self.pc.setLocalDescription(await self.pc.createOffer())
            headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {self.token}"}
            posted = time.monotonic()
            async with http.post(
                f"{self.base_url}/webrtc/calls", data=self.pc.localDescription.sdp, headers=headers
            ) as reply:
                self.answer_status = reply.status
                self.answer_text = await reply.text()
                location = reply.headers.get("Location", "")
        self.answered_at = time.monotonic()
        self.offer_s = self.answered_at - posted
        if self.answer_status != 201:
            await self.pc.close()
            return self.answer_status
        self.call_id = location.rsplit("/", 1)[-1]
        await self.pc.setRemoteDescription(RTCSessionDescription(self.answer_text, "answer"))
        return self.answer_status

    def _on_message(self, message: Any) -> None:
        if isinstance(message, str):
            event = json.loads(message)
            self.messages.append(event)
            if event.get("type") == "call.ended":
                self.closed_reason = event.get("reason")

    def _on_track(self, track: Any) -> None:
        task = asyncio.ensure_future(self._listen(track))
        self._tasks.add(task)

    async def _listen(self, track: Any) -> None:
        await each_frame(track, self._heard)

    def _heard(self, frame: av.AudioFrame) -> None:
        self.received_frames += 1
        if audible(frame):
            self.loud_frames += 1
            if self.first_loud < 0:
                self.first_loud = self.received_frames
                self.first_audio_at = time.monotonic()
            if self.received_frames - max(self.last_loud, 0) > QUIET_FRAMES:
                self.onsets.append(time.monotonic())
            self.last_loud = self.received_frames

    @property
    def heard_span_ms(self) -> int:
        """From the first audible frame to the latest: how much of the agent's speech (pauses
        included) this caller has heard."""
        return 0 if self.first_loud < 0 else (self.last_loud - self.first_loud + 1) * 20

    async def send_dtmf(self, digit: str) -> None:
        self.channel.send(json.dumps({"type": "dtmf", "digit": digit}))

    async def hang_up(self) -> None:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.base_url}/webrtc/calls/{self.call_id}/hangup") as reply,
        ):
            await reply.read()
        await self.close()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.pc.close()
