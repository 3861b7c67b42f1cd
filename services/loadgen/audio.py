"""The simulated caller's voice: a WAV file or a generated tone, as 8 kHz μ-law.

Twilio media is always μ-law at 8000 Hz, mono (reference/telephony.md §1.2). A WAV file may be
μ-law already (format tag 7) or 16-bit PCM at any rate and channel count; PCM is mixed down to
mono, resampled to 8 kHz and companded with :mod:`services.telephony.g711`. The stdlib ``wave``
module reads PCM only, so the RIFF chunks are walked here.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import NDArray

from services.errors import AudioFormatError, UserError
from services.telephony import g711

__all__ = [
    "FRAME_BYTES",
    "FRAME_MS",
    "SAMPLE_RATE",
    "SILENCE",
    "frame_rms",
    "load_wav_ulaw",
    "tone_ulaw",
]

SAMPLE_RATE: Final = 8000
FRAME_MS: Final = 20
#: One 20 ms frame of 8 kHz μ-law, the size Twilio is commonly seen to send (reference §1.4).
FRAME_BYTES: Final = SAMPLE_RATE * FRAME_MS // 1000
#: μ-law's code for zero (what AJS pads gaps with, reference §5.1).
SILENCE: Final = 0xFF

_WAVE_PCM: Final = 1
_WAVE_ULAW: Final = 7
_WAVE_EXTENSIBLE: Final = 0xFFFE


def tone_ulaw(duration_ms: int, *, frequency_hz: float = 440.0, dbfs: float = -12.0) -> bytes:
    """A sine tone, loud enough for any voice-activity detector to call it speech."""
    count = SAMPLE_RATE * duration_ms // 1000
    amplitude = 32767 * 10 ** (dbfs / 20)
    t = np.arange(count, dtype=np.float64) / SAMPLE_RATE
    samples = np.rint(amplitude * np.sin(2 * math.pi * frequency_hz * t)).astype(np.int16)
    return g711.ulaw_encode(samples)


def frame_rms(ulaw: bytes) -> float:
    """Root-mean-square level of μ-law audio, in 16-bit sample units."""
    if not ulaw:
        return 0.0
    samples = g711.ulaw_decode(ulaw).astype(np.float64)
    return float(np.sqrt(np.mean(samples * samples)))


def load_wav_ulaw(path: str | Path) -> bytes:
    """The audio of a WAV file as 8 kHz mono μ-law (μ-law, or 16-bit PCM at any rate)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read the WAV file {path}: {exc.strerror or exc}") from exc
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioFormatError(f"{path}: not a RIFF/WAVE file")
    chunks = _riff_chunks(data)
    if b"fmt " not in chunks or b"data" not in chunks:
        raise AudioFormatError(f"{path}: WAV file without a 'fmt ' or 'data' chunk")
    fmt = chunks[b"fmt "]
    if len(fmt) < 16:
        raise AudioFormatError(f"{path}: 'fmt ' chunk is {len(fmt)} bytes, expected 16 or more")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == _WAVE_EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]  # first two bytes of the SubFormat GUID
    if channels < 1 or rate < 1:
        raise AudioFormatError(f"{path}: {channels} channels at {rate} Hz")
    samples = _decode(chunks[b"data"], tag, bits, path)
    whole = len(samples) - len(samples) % channels
    mono = samples[:whole].reshape(-1, channels).astype(np.float64).mean(axis=1)
    if tag == _WAVE_ULAW and channels == 1 and rate == SAMPLE_RATE:
        return chunks[b"data"][:whole]  # already what Twilio sends: pass it through untouched
    resampled = _resample(mono, rate, SAMPLE_RATE)
    return g711.ulaw_encode(np.clip(np.rint(resampled), -32768, 32767).astype(np.int16))


def _riff_chunks(data: bytes) -> dict[bytes, bytes]:
    chunks: dict[bytes, bytes] = {}
    offset = 12
    while offset + 8 <= len(data):
        chunk_id, size = struct.unpack("<4sI", data[offset : offset + 8])
        chunks.setdefault(chunk_id, data[offset + 8 : offset + 8 + size])
        offset += 8 + size + (size & 1)  # chunks are padded to an even length
    return chunks


def _decode(payload: bytes, tag: int, bits: int, path: str | Path) -> NDArray[np.int16]:
    if tag == _WAVE_ULAW and bits == 8:
        return g711.ulaw_decode(payload)
    if tag == _WAVE_PCM and bits == 16:
        usable = len(payload) - len(payload) % 2
        return np.frombuffer(payload[:usable], dtype="<i2").astype(np.int16)
    raise AudioFormatError(
        f"{path}: WAV format {tag} with {bits}-bit samples is not supported "
        "(use 8-bit μ-law or 16-bit PCM)"
    )


def _resample(samples: NDArray[np.float64], src: int, dst: int) -> NDArray[np.float64]:
    """Linear interpolation; going down, a moving average first as a crude anti-alias filter.

    Test audio only needs to be recognisable as speech by a VAD, not high fidelity.
    """
    if src == dst or len(samples) == 0:
        return samples
    if src > dst:
        width = max(1, round(src / dst))
        samples = np.convolve(samples, np.ones(width) / width, mode="same")
    count = len(samples) * dst // src
    positions = np.arange(count, dtype=np.float64) * (src / dst)
    return np.interp(positions, np.arange(len(samples), dtype=np.float64), samples)
