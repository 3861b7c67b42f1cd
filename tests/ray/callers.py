"""One simulated caller per ingress adapter, all with the face the conformance suite drives.

An adapter joins the suite by adding its caller here and its name to :data:`ADAPTERS`: the
caller dials the way that provider's network would, streams paced audio, plays what it receives
and acknowledges playback the provider's way, and can misbehave on purpose (a malformed frame,
an oversize frame, a message out of order).
"""

from __future__ import annotations

import uuid
from typing import Protocol

from twilio.request_validator import RequestValidator

from tests.twilio_caller import TwilioCaller

ADAPTERS = ["twilio"]
AUTH_TOKEN = "conformance-auth-token"


class Caller(Protocol):
    call_id: str
    received_audio: int  # bytes of model audio received
    played_audio: int  # bytes of it played (caller-side clock)
    clears: int
    closed_reason: str | None
    closed_code: int | None
    acked: dict[str, int]  # item id -> ms the caller acknowledged as played
    acked_at_clear: dict[str, int]  # the same, at the moment the clear arrived

    async def dial(self) -> object: ...

    def speak(self, audio: bytes, *, hold_playback: bool = False) -> None: ...

    def hold(self) -> None:
        """Stop playing (and acknowledging) received audio until the next clear."""

    async def send_dtmf(self, digit: str) -> None: ...

    async def hang_up(self) -> None: ...

    async def close(self) -> None: ...

    async def send_malformed(self) -> None: ...

    async def send_oversize(self) -> None: ...

    async def send_out_of_order(self) -> None: ...


def _signed(url: str, params: dict[str, str]) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(AUTH_TOKEN).compute_signature(url, params)}


class ConformingTwilioCaller(TwilioCaller):
    """Twilio: a signed webhook, ``<Connect><Stream>``, μ-law media, marks, ``clear``."""

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url, sign=_signed)

    @property
    def call_id(self) -> str:
        return self.call_sid

    def hold(self) -> None:
        self._hold = True

    async def send_malformed(self) -> None:
        await self._ws.send('{"event": "media", "streamSid": ')

    async def send_oversize(self) -> None:
        payload = "A" * (64 * 1024)  # over the ingress's 64 KiB frame cap on its own
        await self._send(
            {"event": "media", "streamSid": self.stream_sid, "media": {"payload": payload}}
        )

    async def send_out_of_order(self) -> None:
        # A second start on a live stream.
        await self._send(
            {
                "event": "start",
                "streamSid": self.stream_sid,
                "start": {
                    "streamSid": self.stream_sid,
                    "accountSid": "AC" + "0" * 32,
                    "callSid": "CA" + uuid.uuid4().hex,
                    "tracks": ["inbound"],
                    "customParameters": {},
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
            }
        )


def make_caller(adapter: str, base_url: str) -> Caller:
    if adapter == "twilio":
        return ConformingTwilioCaller(base_url)
    raise ValueError(f"no simulated caller for adapter {adapter!r}")
