"""Audio between a session's formats and a WebRTC track's PCM, for ``OpenAIRealtimeWebRTC``.

Over WebRTC the model's audio is Opus on a track whatever the session's ``audio/pcmu`` or
``audio/pcm`` format says, and ours must go out on a track too. The session (and the ingress
behind it) still speak that format, so the transport converts at its edge: the session's bytes
to 24 kHz mono PCM16 for the outbound track, and the remote track's decoded 24 kHz PCM16 to the
session's output format. One converter per direction per connection: the resamplers keep
state across chunks, so a stream converts without clicks at chunk edges.
"""

from __future__ import annotations

import av
import numpy as np

from services.telephony.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

TRACK_RATE = 24_000
_G711 = {"audio/pcmu", "audio/pcma"}


def _resampler(rate: int) -> av.AudioResampler:
    return av.AudioResampler(format="s16", layout="mono", rate=rate)


def _resample(resampler: av.AudioResampler, pcm: np.ndarray, rate: int) -> bytes:
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    return b"".join(bytes(out.planes[0])[: out.samples * 2] for out in resampler.resample(frame))


class ToTrack:
    """The session's input format → 24 kHz mono PCM16."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self._up = _resampler(TRACK_RATE) if fmt in _G711 else None

    def __call__(self, data: bytes) -> bytes:
        if self._up is None:
            return data
        pcm = ulaw_decode(data) if self.fmt == "audio/pcmu" else alaw_decode(data)
        return _resample(self._up, np.asarray(pcm, dtype=np.int16), 8000)


class FromTrack:
    """24 kHz mono PCM16 from the remote track → the session's output format."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self._down = _resampler(8000) if fmt in _G711 else None

    def __call__(self, pcm24: bytes) -> bytes:
        if self._down is None:
            return pcm24
        pcm8 = _resample(self._down, np.frombuffer(pcm24, dtype="<i2"), TRACK_RATE)
        return ulaw_encode(pcm8) if self.fmt == "audio/pcmu" else alaw_encode(pcm8)
