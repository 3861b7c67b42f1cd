"""The Realtime API's audio formats and conversions between them.

GA formats (reference/realtime-protocol.md, section 10): ``audio/pcm`` is 24 kHz 16-bit
little-endian mono (48 bytes per ms); ``audio/pcmu`` and ``audio/pcma`` are G.711 at 8 kHz
(8 bytes per ms).
Everything here is pure: bytes and numpy arrays in, bytes and arrays out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
from numpy.typing import NDArray

from services.errors import AudioFormatError
from services.telephony import g711

__all__ = [
    "PCM",
    "PCMA",
    "PCMU",
    "AudioConverter",
    "AudioFormat",
    "convert",
    "decode",
    "encode",
    "resample",
]

Int16Array = NDArray[np.int16]
FormatType = Literal["audio/pcm", "audio/pcmu", "audio/pcma"]

# Rates the local model meets in practice: telephony, wideband, espeak-ng's output, and the API's.
SUPPORTED_RATES: Final = (8000, 16000, 22050, 24000)


@dataclass(frozen=True)
class AudioFormat:
    """One wire audio format: its ``type`` string, sample rate, and bytes per sample."""

    type: FormatType
    rate: int
    sample_bytes: int

    @property
    def bytes_per_ms(self) -> int:
        return self.rate // 1000 * self.sample_bytes

    def duration_ms(self, nbytes: int) -> float:
        return nbytes / self.bytes_per_ms

    def bytes_for_ms(self, ms: float) -> int:
        """Whole samples' worth of bytes in ``ms`` milliseconds (rounded down)."""
        return int(ms * self.rate / 1000) * self.sample_bytes

    def to_wire(self) -> dict[str, Any]:
        if self.type == "audio/pcm":
            return {"type": self.type, "rate": self.rate}
        return {"type": self.type}

    @classmethod
    def from_wire(cls, value: Any) -> AudioFormat:
        """Parse an already validated ``{"type": ...}`` object (see session_config)."""
        if not isinstance(value, dict) or value.get("type") not in _BY_TYPE:
            raise AudioFormatError(f"unknown audio format {value!r}")
        return _BY_TYPE[value["type"]]


PCM: Final = AudioFormat("audio/pcm", 24000, 2)
PCMU: Final = AudioFormat("audio/pcmu", 8000, 1)
PCMA: Final = AudioFormat("audio/pcma", 8000, 1)
_BY_TYPE: Final[dict[str, AudioFormat]] = {f.type: f for f in (PCM, PCMU, PCMA)}


def decode(data: bytes, fmt: AudioFormat) -> Int16Array:
    """Wire bytes → int16 samples at ``fmt.rate``. A trailing odd byte of PCM is an error."""
    if fmt.type == "audio/pcmu":
        return g711.ulaw_decode(data)
    if fmt.type == "audio/pcma":
        return g711.alaw_decode(data)
    if len(data) % 2:
        raise AudioFormatError(
            f"audio/pcm data must be whole 16-bit samples, got {len(data)} bytes"
        )
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


def encode(samples: Int16Array, fmt: AudioFormat) -> bytes:
    """int16 samples already at ``fmt.rate`` → wire bytes."""
    if fmt.type == "audio/pcmu":
        return g711.ulaw_encode(samples)
    if fmt.type == "audio/pcma":
        return g711.alaw_encode(samples)
    return samples.astype("<i2").tobytes()


def resample(samples: Int16Array, src_rate: int, dst_rate: int) -> Int16Array:
    """Linear-interpolation resampling between any two of :data:`SUPPORTED_RATES`.

    Good enough for synthetic speech and for a VAD; not a high-fidelity filter (no anti-aliasing
    when going down, which is acceptable for telephone-band test audio).
    """
    for rate in (src_rate, dst_rate):
        if rate not in SUPPORTED_RATES:
            raise AudioFormatError(f"unsupported sample rate {rate} (supported: {SUPPORTED_RATES})")
    if src_rate == dst_rate or len(samples) == 0:
        return samples.astype(np.int16, copy=False)
    n_out = len(samples) * dst_rate // src_rate
    positions = np.arange(n_out, dtype=np.float64) * (src_rate / dst_rate)
    out = np.interp(positions, np.arange(len(samples)), samples.astype(np.float64))
    return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


def convert(data: bytes, src: AudioFormat, dst: AudioFormat) -> bytes:
    """Re-encode a whole clip from one wire format to another."""
    if src == dst:
        return data
    return encode(resample(decode(data, src), src.rate, dst.rate), dst)


class AudioConverter:
    """Converts a stream of chunks, carrying a split PCM sample over to the next chunk.

    Clients may append PCM in chunks of any length, including odd ones; a stateless ``convert``
    would then misalign every later sample.
    """

    def __init__(self, src: AudioFormat, dst: AudioFormat) -> None:
        self.src = src
        self.dst = dst
        self._carry = b""

    def feed(self, chunk: bytes) -> bytes:
        if self.src == self.dst:
            return chunk
        data = self._carry + chunk
        whole = len(data) - len(data) % self.src.sample_bytes
        self._carry = data[whole:]
        return convert(data[:whole], self.src, self.dst)
