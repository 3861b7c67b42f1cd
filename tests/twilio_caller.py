"""A small interactive Twilio caller for end-to-end tests: follows the TwiML, streams paced
μ-law, plays received audio in real time and echoes each mark once the audio before it has
played, honours ``clear`` by dropping its buffer and echoing pending marks. Tests drive it step
by step (speak now, hold playback, press a key, hang up); the load generator's scripted caller
cannot be. Every Twilio message it sends or reads goes through the load generator's codec
(:class:`~services.loadgen.wire.TwilioCallerCodec`), so there is one caller-side Twilio
encoder; ``_send`` is for the tests' deliberately odd frames."""

from __future__ import annotations

import asyncio
import json
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import aiohttp
import websockets

from services.loadgen.playback import TwilioPlaybackBuffer
from services.loadgen.wire import (
    PlayClear,
    PlayMark,
    PlayMedia,
    StreamIdentity,
    TwilioCallerCodec,
)


class TwilioCaller:
    def __init__(
        self,
        base_url: str,
        sign: Callable[[str, dict[str, str]], dict[str, str]] | None = None,
    ) -> None:
        self.base_url = base_url
        self._sign = sign  # (url, form) -> extra headers, e.g. X-Twilio-Signature
        self.call_sid = "CA" + uuid.uuid4().hex
        self.stream_sid = "MZ" + uuid.uuid4().hex
        self.received_audio = 0  # bytes of model audio received
        self.clears = 0
        self.closed_reason: str | None = None
        self.closed_code: int | None = None
        self.acked: dict[str, int] = {}  # item id -> ms acknowledged through echoed marks
        self.acked_at_clear: dict[str, int] = {}
        # Twilio's playback buffer as the load generator simulates it: plays on the 20 ms tick,
        # echoes a mark once the audio before it has played, drops all at a clear.
        self.playback = TwilioPlaybackBuffer()
        self._held_marks: list[str] = []  # marks that arrived while playback was held
        self._ws: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self.to_send: asyncio.Queue[bytes] = asyncio.Queue()
        self._hold = False  # playback paused until the next clear (see speak)
        self.codec = TwilioCallerCodec(
            StreamIdentity("AC" + "0" * 32, self.call_sid, self.stream_sid)
        )

    async def dial(self, **form: str) -> str:
        data = {
            "CallSid": self.call_sid,
            "AccountSid": "AC" + "0" * 32,
            "From": "+15550100",
            "To": "+15550199",
            **form,
        }
        url = f"{self.base_url}/twilio/voice"
        headers = self._sign(url, data) if self._sign else {}
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=data, headers=headers) as response:
                assert response.status == 200, await response.text()
                twiml = await response.text()
        stream = ET.fromstring(twiml).find("./Connect/Stream")
        assert stream is not None, twiml
        params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
        self._ws = await websockets.connect(stream.get("url", ""))
        await self._ws.send(self.codec.connected())
        await self._ws.send(self.codec.start(params))
        self._tasks = [asyncio.create_task(self._recv()), asyncio.create_task(self._tick())]
        return twiml

    async def _send(self, message: dict[str, Any]) -> None:
        await self._ws.send(json.dumps(message))

    async def send_dtmf(self, digit: str) -> None:
        await self._ws.send(self.codec.dtmf(digit))

    async def _recv(self) -> None:
        try:
            async for raw in self._ws:
                msg = self.codec.parse(raw)
                if isinstance(msg, PlayMedia):
                    self.received_audio += len(msg.payload)
                    self.playback.add_audio(len(msg.payload))
                elif isinstance(msg, PlayMark):
                    if self._hold:
                        self._held_marks.append(msg.name)
                    else:
                        for name in self.playback.add_mark(msg.name):
                            await self._echo(name)
                elif isinstance(msg, PlayClear):
                    self.clears += 1
                    self._hold = False
                    # What had really been heard; the echoes below only mean "discarded".
                    self.acked_at_clear = dict(self.acked)
                    marks, self._held_marks = self.playback.clear() + self._held_marks, []
                    for name in marks:
                        await self._echo(name)
        except websockets.ConnectionClosed as exc:
            self.closed_code = exc.rcvd.code if exc.rcvd else None
            self.closed_reason = exc.rcvd.reason if exc.rcvd else "closed"
        if self.closed_reason is None:
            self.closed_reason = self._ws.close_reason or "closed"

    async def _echo(self, name: str) -> None:
        await self._ws.send(self.codec.mark(name))
        parts = name.split(":")
        if len(parts) == 4 and parts[1].isdigit():
            self.acked[parts[0]] = max(self.acked.get(parts[0], 0), int(parts[1]))

    async def _tick(self) -> None:
        """Every 20 ms: send 160 bytes of caller audio, play 160 bytes of model audio."""
        chunk = 0
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while self.closed_reason is None:
            payload = self.to_send.get_nowait() if not self.to_send.empty() else b"\xff" * 160
            chunk += 1
            try:
                await self._ws.send(self.codec.media(chunk, (chunk - 1) * 20, payload))
            except websockets.ConnectionClosed:
                return
            if not self._hold:
                for name in self.playback.tick():
                    await self._echo(name)
            next_at += 0.02
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    @property
    def played_audio(self) -> int:
        """Bytes of model audio the caller has heard in full."""
        return self.playback.played_bytes

    def speak(self, audio: bytes, *, hold_playback: bool = False) -> None:
        """Send ``audio`` as the caller's next media. ``hold_playback`` pauses playback (and so
        mark echoes) from the first of these frames until the clear: the acknowledged point then
        stands still while the barge-in travels, so a test can compare the truncate with it
        exactly. (Marks echoed before the speech are ahead of it on the same socket, so the
        gateway has them all before the model can hear the speech.)"""
        self._hold = hold_playback
        for at in range(0, len(audio) - 159, 160):
            self.to_send.put_nowait(audio[at : at + 160])

    async def hang_up(self) -> None:
        try:
            await self._ws.send(self.codec.stop())
        except websockets.ConnectionClosed:
            pass
        await self.close()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
