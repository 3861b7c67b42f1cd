"""Frame energy for the VAD, straight from wire bytes: one numpy pipeline per append.

The VAD's level is ``vad.rms_fraction`` of each 10 ms frame's decoded samples. Decoding a frame
and taking its mean with numpy costs a few microseconds of call overhead for 80 samples, twice per
20 ms append of every call; here all whole frames of an append are done at once, and G.711 bytes
are looked up in a table of squared sample values, so nothing is decoded.

The result is bit-for-bit ``rms_fraction(decode(frame, fmt))``: every square is an integer of at
most 2**30 and a frame's sum stays far below 2**53, so numpy's float64 sum in ``rms_fraction`` is
exact in any order, and both sides then divide the same integer by the same count, take a
correctly rounded square root and scale by a power of two.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
from numpy.typing import NDArray

from services.telephony import g711

from .audio import AudioFormat
from .vad import FULL_SCALE

__all__ = ["frame_rms"]


def _squares(decoded: NDArray[np.int16]) -> NDArray[np.int64]:
    samples = decoded.astype(np.int64)
    return samples * samples


# The squared linear value of each of the 256 G.711 codes.
_SQUARES: Final[dict[str, NDArray[np.int64]]] = {
    "audio/pcmu": _squares(g711.ulaw_decode(bytes(range(256)))),
    "audio/pcma": _squares(g711.alaw_decode(bytes(range(256)))),
}


def frame_rms(data: bytes, fmt: AudioFormat, frame_bytes: int) -> list[float]:
    """The RMS, as a fraction of full scale, of each whole ``frame_bytes`` frame of ``data``
    (wire bytes in ``fmt``; ``len(data)`` must be a multiple of ``frame_bytes``)."""
    if not data:
        return []
    squares = _SQUARES.get(fmt.type)
    if squares is not None:
        per_frame = squares.take(np.frombuffer(data, np.uint8)).reshape(-1, frame_bytes)
    else:  # audio/pcm: 16-bit little-endian samples
        samples = np.frombuffer(data, "<i2").astype(np.int64).reshape(-1, frame_bytes // 2)
        per_frame = samples * samples
    count = per_frame.shape[1]
    return [math.sqrt(total / count) / FULL_SCALE for total in per_frame.sum(axis=1).tolist()]
