"""The WebRTC transport's audio edge: the session's formats to the track's 24 kHz PCM and back,
continuous across chunks (stateful resamplers) and at the right pitch."""

from __future__ import annotations

import numpy as np

from services.realtime.transports.webrtc import calls_url
from services.realtime.transports.webrtc_audio import FromTrack, ToTrack
from services.telephony.g711 import ulaw_decode, ulaw_encode


def tone(rate: int, seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * hz * t) * 8000).astype(np.int16)


def peak_hz(pcm: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    return float(np.argmax(spectrum) * rate / len(pcm))


def test_ulaw_in_becomes_24k_pcm_at_the_same_pitch_chunk_by_chunk() -> None:
    to_track = ToTrack("audio/pcmu")
    ulaw = ulaw_encode(tone(8000, 1.0))
    out = b"".join(to_track(ulaw[at : at + 160]) for at in range(0, len(ulaw), 160))
    pcm = np.frombuffer(out, dtype="<i2")
    assert abs(len(pcm) - 24000) <= 64  # three times the samples, less the filter's hold
    assert abs(peak_hz(pcm[1000:], 24000) - 440) < 3
    assert np.abs(np.diff(pcm[1000:].astype(np.int32))).max() < 1200  # no step at chunk edges


def test_24k_pcm_becomes_ulaw_for_a_phone_leg() -> None:
    from_track = FromTrack("audio/pcmu")
    pcm = tone(24000, 1.0).tobytes()
    out = b"".join(from_track(pcm[at : at + 960]) for at in range(0, len(pcm), 960))
    back = ulaw_decode(out)
    assert abs(len(back) - 8000) <= 32
    assert abs(peak_hz(back[500:], 8000) - 440) < 3


def test_pcm_passes_through() -> None:
    data = tone(24000, 0.02).tobytes()
    assert ToTrack("audio/pcm")(data) == data and FromTrack("audio/pcm")(data) == data


def test_calls_url_from_a_realtime_endpoint() -> None:
    assert calls_url("ws://127.0.0.1:8765/v1/realtime") == "http://127.0.0.1:8765/v1/realtime/calls"
    assert calls_url("wss://api.openai.com/v1/realtime?model=x") == (
        "https://api.openai.com/v1/realtime/calls"
    )
