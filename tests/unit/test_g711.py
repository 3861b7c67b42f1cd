"""G.711 μ-law and A-law: known values, round trips, and agreement with the reference tables."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

from services.telephony import g711

ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))


def test_ulaw_known_values() -> None:
    # ITU-T G.711 table 2a: code 0x00 is the most negative step, 0x80 the most positive,
    # 0xFF and 0x7F are the two zeros; silence is 0xFF (Twilio pads with it).
    decoded = g711.ulaw_decode(bytes([0x00, 0x80, 0xFF, 0x7F, 0xF0, 0x70]))
    assert decoded.tolist() == [-32124, 32124, 0, 0, 120, -120]
    assert g711.ulaw_encode(np.array([0, 32767, -32768, 120, -120], np.int16)) == bytes(
        [0xFF, 0x80, 0x00, 0xF0, 0x70]
    )


def test_alaw_known_values() -> None:
    # Table 1a: 0xD5/0x55 are the smallest positive/negative steps (even bits inverted).
    decoded = g711.alaw_decode(bytes([0xD5, 0x55, 0xAA, 0x2A]))
    assert decoded.tolist() == [8, -8, 32256, -32256]
    assert g711.alaw_encode(np.array([0, -1, 32767, -32768], np.int16)) == bytes(
        [0xD5, 0x55, 0xAA, 0x2A]
    )


def test_every_code_survives_decode_encode() -> None:
    ulaw_back = g711.ulaw_encode(g711.ulaw_decode(ALL_CODES))
    # μ-law has two zeros; 0x7F ("negative zero") re-encodes as 0xFF.
    assert [c for c, b in zip(ALL_CODES, ulaw_back, strict=True) if c != b] == [0x7F]
    assert g711.alaw_encode(g711.alaw_decode(ALL_CODES)) == ALL_CODES


@pytest.mark.parametrize(
    ("encode", "decode"),
    [(g711.ulaw_encode, g711.ulaw_decode), (g711.alaw_encode, g711.alaw_decode)],
)
def test_quantization_error_is_within_one_step(encode, decode) -> None:
    restored = decode(encode(ALL_SAMPLES)).astype(np.int64)
    error = np.abs(restored - ALL_SAMPLES.astype(np.int64))
    # Companding keeps about 12 bits of relative precision: the step near x is at most x/16.
    assert np.all(error <= np.maximum(np.abs(ALL_SAMPLES.astype(np.int64)) // 16, 16))
    assert decode(encode(ALL_SAMPLES)).dtype == np.int16


def test_bytes_api_matches_array_api() -> None:
    pcm = ALL_SAMPLES[::7]
    raw = pcm.astype("<i2").tobytes()
    assert g711.pcm16_to_ulaw(raw) == g711.ulaw_encode(pcm)
    assert g711.pcm16_to_alaw(raw) == g711.alaw_encode(pcm)
    assert g711.ulaw_to_pcm16(ALL_CODES) == g711.ulaw_decode(ALL_CODES).astype("<i2").tobytes()
    assert g711.alaw_to_pcm16(ALL_CODES) == g711.alaw_decode(ALL_CODES).astype("<i2").tobytes()


def test_odd_pcm_byte_count_is_rejected() -> None:
    with pytest.raises(ValueError, match="even number of bytes"):
        g711.pcm16_to_ulaw(b"\x00\x01\x02")


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="audioop was removed in Python 3.13")
def test_matches_cpython_audioop_for_every_input() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop  # the reference implementation CPython shipped until 3.12

    raw = ALL_SAMPLES.astype("<i2").tobytes()
    assert g711.pcm16_to_ulaw(raw) == audioop.lin2ulaw(raw, 2)
    assert g711.pcm16_to_alaw(raw) == audioop.lin2alaw(raw, 2)
    assert g711.ulaw_to_pcm16(ALL_CODES) == audioop.ulaw2lin(ALL_CODES, 2)
    assert g711.alaw_to_pcm16(ALL_CODES) == audioop.alaw2lin(ALL_CODES, 2)
