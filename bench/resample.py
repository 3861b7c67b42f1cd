"""Which resampler turns a browser caller's decoded audio into the model's: PyAV's or soxr.

aiortc decodes the caller's Opus into ``av.AudioFrame`` s16 stereo 48 kHz, 960 samples (20 ms;
reference/webrtc-sip.md §2.1); the session sends the model mono 24 kHz PCM16. Candidates, each
a stream kept for the whole call and fed one frame at a time:

* ``pyav``: ``av.AudioResampler(format="s16", layout="mono", rate=24000)`` (libswresample),
  the bytes taken as ``services/webrtc/track.py``'s ``Downmix`` takes them today;
* ``soxr HQ`` (its default), ``MQ``, ``LQ``, ``QQ``: the frame's samples as numpy, left and
  right averaged in int32, then ``soxr.ResampleStream(48000, 24000, 1, dtype="int16",
  quality=...)``.

Measured per candidate, on frames built with PyAV:

* CPU-µs per 20 ms frame, frame to bytes: best of 7 runs of 3,000 frames (a minute of audio);
* a 440 Hz tone, the same in both channels at half of full scale, 10 s: the frequency that
  comes out (FFT peak, interpolated), its gain, the SNR of the whole stream against the fitted
  sine (a glitch at a frame boundary would show here), and the largest step between
  neighbouring samples over the one a clean sine can make;
* a 10 kHz tone's gain (the top of the passband), and a 15 kHz tone's alias at 9 kHz (15 kHz is
  above the 12 kHz Nyquist of 24 kHz), relative to the tone;
* delay: where a one-sample click comes out against where it went in (the alignment), plus
  what the stream still holds back after each frame, on average (the buffering); their sum is
  the latency the resampler adds;
* the samples out per frame (480 would be exactly 20 ms).

Chosen: PyAV's, as today. Both are correct and cost about 10-14 CPU-µs a frame (0.07% of a
core); but soxr's HQ and MQ filters hand out about 830 samples every other frame and hold back
about 21 ms, its LQ still 11 ms and 5 dB down at 10 kHz, and QQ does not filter (15 kHz
aliases at full level), while libswresample gives 480 samples a frame and holds 16 (0.7 ms).

    .venv/bin/python -m bench.resample

Writes ``bench/results/resample.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import soxr

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "resample.json"
IN_RATE = 48_000
OUT_RATE = 24_000
SAMPLES = 960
AMPLITUDE = 16_384  # half of full scale

Convert = Callable[[av.AudioFrame], bytes]


def pyav() -> Convert:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=OUT_RATE)

    def convert(frame: av.AudioFrame) -> bytes:
        return b"".join(
            bytes(out.planes[0])[: out.samples * 2] for out in resampler.resample(frame)
        )

    return convert


def soxr_stream(quality: str) -> Callable[[], Convert]:
    def make() -> Convert:
        stream = soxr.ResampleStream(IN_RATE, OUT_RATE, 1, dtype="int16", quality=quality)

        def convert(frame: av.AudioFrame) -> bytes:
            stereo = np.frombuffer(frame.planes[0], dtype=np.int16, count=frame.samples * 2)
            mono = ((stereo[0::2].astype(np.int32) + stereo[1::2]) >> 1).astype(np.int16)
            return bytes(stream.resample_chunk(mono).tobytes())

        return convert

    return make


CANDIDATES: dict[str, Callable[[], Convert]] = {
    "pyav": pyav,
    "soxr HQ": soxr_stream("HQ"),  # soxr's default
    "soxr MQ": soxr_stream("MQ"),
    "soxr LQ": soxr_stream("LQ"),
    "soxr QQ": soxr_stream("QQ"),  # cubic interpolation, no anti-alias filter
}


def frames(mono: np.ndarray) -> list[av.AudioFrame]:
    """``mono`` (int16 at 48 kHz) in both channels, as aiortc's decoder hands it out."""
    out = []
    for n in range(len(mono) // SAMPLES):
        chunk = mono[n * SAMPLES : (n + 1) * SAMPLES]
        stereo = np.repeat(chunk, 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
        frame.sample_rate = IN_RATE
        frame.pts = n * SAMPLES
        out.append(frame)
    return out


def tone(hz: float, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * IN_RATE)) / IN_RATE
    return np.round(AMPLITUDE * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def stream(
    make: Callable[[], Convert], inputs: list[av.AudioFrame]
) -> tuple[np.ndarray, list[int]]:
    """The whole output, and the samples out per frame."""
    convert = make()
    chunks = [convert(f) for f in inputs]
    sizes = [len(c) // 2 for c in chunks]
    return np.frombuffer(b"".join(chunks), dtype=np.int16).astype(np.float64), sizes


def cpu_us(make: Callable[[], Convert], inputs: list[av.AudioFrame]) -> float:
    best = float("inf")
    for _ in range(7):
        convert = make()
        begin = time.process_time()
        for f in inputs:
            convert(f)
        best = min(best, time.process_time() - begin)
    return round(best / len(inputs) * 1e6, 2)


def peak_hz(x: np.ndarray) -> float:
    """The strongest frequency, interpolated between FFT bins (parabola on the log magnitude)."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    k = int(np.argmax(spectrum[1:-1])) + 1
    a, b, c = np.log(spectrum[k - 1 : k + 2])
    return float((k + 0.5 * (a - c) / (a - 2 * b + c)) * OUT_RATE / len(x))


def fit_sine(x: np.ndarray, hz: float) -> tuple[float, float]:
    """Amplitude of the best-fitting sine at ``hz``, and the RMS of what is left."""
    t = np.arange(len(x)) / OUT_RATE
    basis = np.stack([np.sin(2 * np.pi * hz * t), np.cos(2 * np.pi * hz * t), np.ones_like(t)])
    coef, *_ = np.linalg.lstsq(basis.T, x, rcond=None)
    residual = x - coef @ basis
    return float(np.hypot(coef[0], coef[1])), float(np.sqrt(np.mean(residual**2)))


def measure(make: Callable[[], Convert]) -> dict[str, Any]:
    # The 440 Hz tone, less its first and last 100 ms (the stream's start and its held tail).
    out, sizes = stream(make, frames(tone(440, 10)))
    steady = out[OUT_RATE // 10 : -OUT_RATE // 10]
    hz = peak_hz(steady)
    amplitude, noise = fit_sine(steady, 440)
    clean_step = AMPLITUDE * 2 * np.pi * 440 / OUT_RATE
    high, _ = stream(make, frames(tone(10_000, 2)))
    high_amplitude, _ = fit_sine(high[OUT_RATE // 10 : -OUT_RATE // 10], 10_000)
    alias, _ = stream(make, frames(tone(15_000, 2)))
    alias_amplitude, _ = fit_sine(alias[OUT_RATE // 10 : -OUT_RATE // 10], OUT_RATE - 15_000)
    # A click in the middle of frame 25 (input sample 24,480 → output sample 12,240).
    click = np.zeros(IN_RATE, dtype=np.int16)
    at = 25 * SAMPLES + SAMPLES // 2
    click[at] = AMPLITUDE
    out_click, click_sizes = stream(make, frames(click))
    alignment = int(np.argmax(np.abs(out_click))) - at // 2
    held = np.cumsum([SAMPLES // 2] * len(click_sizes)) - np.cumsum(click_sizes)
    buffering = float(np.mean(held[5:]))
    return {
        "out_hz": round(hz, 2),
        "gain_db": round(20 * np.log10(amplitude / AMPLITUDE), 2),
        "snr_db": round(20 * np.log10(amplitude / np.sqrt(2) / noise), 1),
        "max_step_over_clean": round(float(np.max(np.abs(np.diff(steady)))) / clean_step, 3),
        "gain_10khz_db": round(20 * np.log10(high_amplitude / AMPLITUDE), 2),
        "alias_of_15khz_db": round(20 * np.log10(max(alias_amplitude, 1e-3) / AMPLITUDE), 1),
        "alignment_samples": alignment,
        "buffering_samples": round(buffering, 1),
        "latency_ms": round((alignment + buffering) / OUT_RATE * 1000, 2),
        "first_frame_samples": sizes[0],
        "samples_per_frame": sorted(set(sizes[1:])),
    }


def main() -> None:
    minute = frames(tone(440, 60))
    results = {
        name: {"cpu_us_per_frame": cpu_us(make, minute)} | measure(make)
        for name, make in CANDIDATES.items()
    }
    RESULTS.write_text(
        json.dumps(
            {"av": av.__version__, "soxr": soxr.__version__, "numpy": np.__version__}
            | {"results": results},
            indent=2,
        )
        + "\n"
    )
    columns = list(next(iter(results.values())))
    print(f"{'':24}" + "".join(f"{name:>14}" for name in results))
    for column in columns:
        print(f"{column:24}" + "".join(f"{r[column]!s:>14}" for r in results.values()))


if __name__ == "__main__":
    main()
