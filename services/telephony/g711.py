"""ITU-T G.711 μ-law and A-law, as numpy lookup tables.

Both laws compand 16-bit linear PCM into one byte per sample at 8 kHz (telephone audio; Twilio media
streams carry μ-law, the Realtime API accepts both as ``audio/pcmu`` and ``audio/pcma``).

The tables are built once at import from the reference algorithm of ITU-T G.711 as published in the
Sun Microsystems ``g711.c`` (the code CPython's ``audioop`` used): μ-law works on the top 14 bits,
A-law on the top 13 bits of a 16-bit sample. Encoding indexes a 65,536-entry table by the sample's
bit pattern; decoding indexes a 256-entry table. Each is one numpy ``take``, so a 20 ms frame costs
about a microsecond.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "alaw_decode",
    "alaw_encode",
    "alaw_to_pcm16",
    "pcm16_to_alaw",
    "pcm16_to_ulaw",
    "ulaw_decode",
    "ulaw_encode",
    "ulaw_to_pcm16",
]

Int16Array = NDArray[np.int16]

_QUANT_MASK: Final = 0x0F
_SEG_SHIFT: Final = 4
_SEG_MASK: Final = 0x70
_SIGN_BIT: Final = 0x80
_ULAW_BIAS: Final = 0x84
_ULAW_CLIP: Final = 8159  # largest 14-bit magnitude μ-law represents before the bias
# Upper bound of each of the 8 segments (g711.c seg_uend / seg_aend).
_SEG_UEND: Final = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], np.int32)
_SEG_AEND: Final = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], np.int32)

# Every int16 value, ordered by its uint16 bit pattern, so ``table[pcm.view(np.uint16)]`` works.
_ALL_SAMPLES: Final = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16)


def _build_ulaw_encode() -> NDArray[np.uint8]:
    pcm = _ALL_SAMPLES.astype(np.int32) >> 2  # 16-bit → 14-bit
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_SEG_UEND, mag, side="left")
    uval = (seg << 4) | ((mag >> (seg + 1)) & 0x0F)
    uval = np.where(seg >= 8, 0x7F, uval)  # clip to the largest code
    return ((uval ^ mask) & 0xFF).astype(np.uint8)


def _build_ulaw_decode() -> Int16Array:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = ((u & _QUANT_MASK) << 3) + _ULAW_BIAS
    t <<= (u & _SEG_MASK) >> _SEG_SHIFT
    return np.where(u & _SIGN_BIT, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def _build_alaw_encode() -> NDArray[np.uint8]:
    pcm = _ALL_SAMPLES.astype(np.int32) >> 3  # 16-bit → 13-bit
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = np.searchsorted(_SEG_AEND, mag, side="left")
    shift = np.where(seg < 2, 1, seg)
    aval = (seg << _SEG_SHIFT) | ((mag >> shift) & _QUANT_MASK)
    aval = np.where(seg >= 8, 0x7F, aval)  # clip to the largest code
    return ((aval ^ mask) & 0xFF).astype(np.uint8)


def _build_alaw_decode() -> Int16Array:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    t = (a & _QUANT_MASK) << 4
    seg = (a & _SEG_MASK) >> _SEG_SHIFT
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where(a & _SIGN_BIT, t, -t).astype(np.int16)


_ULAW_ENCODE: Final = _build_ulaw_encode()
_ULAW_DECODE: Final = _build_ulaw_decode()
_ALAW_ENCODE: Final = _build_alaw_encode()
_ALAW_DECODE: Final = _build_alaw_decode()


def _as_pcm(pcm: Int16Array | bytes) -> Int16Array:
    if isinstance(pcm, bytes | bytearray | memoryview):
        if len(pcm) % 2:
            raise ValueError(f"PCM16 data must have an even number of bytes, got {len(pcm)}")
        return np.frombuffer(pcm, dtype="<i2").astype(np.int16, copy=False)
    return np.asarray(pcm, dtype=np.int16)


def ulaw_encode(pcm: Int16Array | bytes) -> bytes:
    """Compand 16-bit linear samples (array, or PCM16 little-endian bytes) to μ-law bytes."""
    return _ULAW_ENCODE.take(_as_pcm(pcm).view(np.uint16)).tobytes()


def ulaw_decode(data: bytes) -> Int16Array:
    """Expand μ-law bytes to 16-bit linear samples."""
    return _ULAW_DECODE.take(np.frombuffer(data, dtype=np.uint8))


def alaw_encode(pcm: Int16Array | bytes) -> bytes:
    """Compand 16-bit linear samples (array, or PCM16 little-endian bytes) to A-law bytes."""
    return _ALAW_ENCODE.take(_as_pcm(pcm).view(np.uint16)).tobytes()


def alaw_decode(data: bytes) -> Int16Array:
    """Expand A-law bytes to 16-bit linear samples."""
    return _ALAW_DECODE.take(np.frombuffer(data, dtype=np.uint8))


def ulaw_to_pcm16(data: bytes) -> bytes:
    """μ-law bytes → PCM16 little-endian bytes."""
    return ulaw_decode(data).astype("<i2").tobytes()


def pcm16_to_ulaw(data: bytes) -> bytes:
    """PCM16 little-endian bytes → μ-law bytes."""
    return ulaw_encode(data)


def alaw_to_pcm16(data: bytes) -> bytes:
    """A-law bytes → PCM16 little-endian bytes."""
    return alaw_decode(data).astype("<i2").tobytes()


def pcm16_to_alaw(data: bytes) -> bytes:
    """PCM16 little-endian bytes → A-law bytes."""
    return alaw_encode(data)
