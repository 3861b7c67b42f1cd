"""One simulated caller per ingress adapter, all with the face the conformance suite drives.

An adapter joins the suite by adding its caller here and its name to :data:`ADAPTERS`: the
caller dials the way that provider's network would, streams paced audio, plays what it receives
and acknowledges playback the provider's way, and can misbehave on purpose (a malformed frame,
an oversize frame, a message out of order).

Audio figures are in bytes of 8 kHz μ-law (8 per ms) whatever the adapter's codec, so the suite
reads one unit. What a provider cannot do is declared in the caller's ``capabilities``, and
the suite checks the adapter's own behaviour there instead:

* ``hold``: the caller controls playback and acknowledges it per item (Twilio's marks), so the
  heard point is exact and a caller can hear nothing of queued audio. A browser hears what our
  paced track sends; its heard point is checked within a jitter buffer's tolerance;
* ``provider_control``: hang-up and transfer go through the provider's REST API (a browser call
  cannot be transferred: it ends ``transfer_unsupported``);
* ``busy_tone``: a refused call hears a busy signal (a browser's offer gets 503 instead);
* ``stream_errors``: bad frames on the media socket end that call (a browser's bad input is
  refused at its offer, tests/integration/test_webrtc_ingress.py);
* ``tokens``: the call is admitted with a single-use stream token (a SIP trunk is admitted by
  its source and digest credentials instead);
* ``refer``: a transfer is a SIP REFER to the caller, who reports how it went (NOTIFY).
"""

from __future__ import annotations

import uuid
from typing import Protocol

import numpy as np
from twilio.request_validator import RequestValidator

from services.loadgen.sip_caller import SipCaller
from services.loadgen.webrtc_caller import WebRTCCaller
from services.telephony.g711 import ulaw_decode
from tests.twilio_caller import TwilioCaller

ADAPTERS = ["twilio", "webrtc", "sip"]
AUTH_TOKEN = "conformance-auth-token"


class Caller(Protocol):
    capabilities: frozenset[str]
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

    capabilities = frozenset({"hold", "provider_control", "busy_tone", "stream_errors", "tokens"})

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


class ConformingWebRTCCaller(WebRTCCaller):
    """A browser: a call token, an SDP offer, Opus both ways, a data channel (DTMF, the end)."""

    capabilities: frozenset[str] = frozenset({"tokens"})
    clears = 0  # a browser sees no clear: the agent's audio stops
    closed_code: int | None = None

    @property
    def received_audio(self) -> int:
        return self.loud_frames * 20 * 8

    @property
    def played_audio(self) -> int:
        return self.received_audio

    @property
    def acked(self) -> dict[str, int]:
        return {}

    @property
    def acked_at_clear(self) -> dict[str, int]:
        return {}

    async def dial(self) -> object:
        status = await super().dial()
        if status == 503:
            self.closed_reason = "busy"
        elif status != 201:
            raise AssertionError(f"offer refused: {status} {self.answer_text}")
        return status

    def speak(self, audio: bytes, *, hold_playback: bool = False) -> None:
        pcm8 = ulaw_decode(audio).astype(np.float64)
        at = np.arange(len(pcm8) * 6) / 6  # 8 kHz -> 48 kHz
        self.source.say(np.interp(at, np.arange(len(pcm8)), pcm8).astype(np.int16))

    def hold(self) -> None:
        raise NotImplementedError("a browser caller cannot hold playback")

    async def hang_up(self) -> None:
        if self.answer_status == 201:
            await super().hang_up()
        else:
            await self.close()

    async def send_malformed(self) -> None:
        raise NotImplementedError

    async def send_oversize(self) -> None:
        raise NotImplementedError

    async def send_out_of_order(self) -> None:
        raise NotImplementedError


class ConformingSipCaller(SipCaller):
    """A trunk's caller: INVITE with PCMU + telephone-event, μ-law RTP both ways, RFC 4733
    digits, BYE; it follows a REFER (202, NOTIFY 200) and reads the Reason of our BYE."""

    capabilities: frozenset[str] = frozenset({"refer"})
    clears = 0  # RTP has no clear: the agent's audio stops
    closed_code: int | None = None
    acked: dict[str, int] = {}  # noqa: RUF012 - never written: RTP acknowledges nothing
    acked_at_clear: dict[str, int] = {}  # noqa: RUF012

    @property
    def call_id(self) -> str:
        return self.callray_call_id

    @property
    def received_audio(self) -> int:
        return self.heard_ms * 8

    @property
    def played_audio(self) -> int:
        return self.received_audio

    @property
    def heard_span_ms(self) -> int:
        return self.heard_ms

    @property
    def received_frames(self) -> int:
        return len(self.received)

    @property
    def last_loud(self) -> int:
        loud = [n for n, (_, p) in enumerate(self.received) if p.strip(b"\xff\x7f\xfe\x7e")]
        return loud[-1] if loud else -1

    async def dial(self) -> object:  # type: ignore[override]
        status = await super().dial()
        if status == 503:
            self.closed_reason = "busy"
        elif status != 200:
            raise AssertionError(f"INVITE refused: {status}")
        return status

    def hold(self) -> None:
        raise NotImplementedError("a SIP caller hears our paced RTP: it cannot hold playback")

    async def send_malformed(self) -> None:
        raise NotImplementedError

    async def send_oversize(self) -> None:
        raise NotImplementedError

    async def send_out_of_order(self) -> None:
        raise NotImplementedError


def make_caller(adapter: str, base_url: str, sip_port: int = 0) -> Caller:
    if adapter == "twilio":
        return ConformingTwilioCaller(base_url)
    if adapter == "webrtc":
        return ConformingWebRTCCaller(base_url)
    if adapter == "sip":
        return ConformingSipCaller(("127.0.0.1", sip_port))
    raise ValueError(f"no simulated caller for adapter {adapter!r}")
