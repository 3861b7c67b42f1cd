"""Audio formats, conversion and resampling, and the speech synthesizer (tones and espeak-ng)."""

from __future__ import annotations

import io
import os
import stat
import struct
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from services.errors import AudioFormatError
from services.localmodel.audio import (
    PCM,
    PCMA,
    PCMU,
    AudioConverter,
    AudioFormat,
    convert,
    decode,
    encode,
    resample,
)
from services.localmodel.speech import SpeechSynthesizer, parse_wav, speak, tone_speech
from services.localmodel.vad import rms_fraction


def tone(ms: int, rate: int, freq: float = 440.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(rate * ms // 1000) / rate
    return (np.sin(2 * np.pi * freq * t) * amp * 32767).astype(np.int16)


def zero_crossings(x: np.ndarray) -> int:
    return int(np.count_nonzero(np.diff(np.signbit(x))))


def test_formats() -> None:
    assert (PCM.bytes_per_ms, PCMU.bytes_per_ms, PCMA.bytes_per_ms) == (48, 8, 8)
    assert PCM.to_wire() == {"type": "audio/pcm", "rate": 24000}
    assert PCMU.to_wire() == {"type": "audio/pcmu"}
    assert AudioFormat.from_wire({"type": "audio/pcma"}) is PCMA
    assert PCM.duration_ms(4800) == 100
    assert PCM.bytes_for_ms(10.01) == 480  # whole samples only
    with pytest.raises(AudioFormatError):
        AudioFormat.from_wire("pcm16")


@pytest.mark.parametrize("fmt", [PCM, PCMU, PCMA])
def test_decode_encode_roundtrip_keeps_length_and_signal(fmt: AudioFormat) -> None:
    samples = tone(100, fmt.rate)
    data = encode(samples, fmt)
    assert len(data) == 100 * fmt.bytes_per_ms
    back = decode(data, fmt)
    assert back.dtype == np.int16
    assert np.max(np.abs(back.astype(int) - samples.astype(int))) < 400


def test_convert_between_rates_keeps_duration_and_pitch() -> None:
    pcm = encode(tone(200, 24000, freq=300), PCM)
    ulaw = convert(pcm, PCM, PCMU)
    assert len(ulaw) == 200 * 8
    back = decode(convert(ulaw, PCMU, PCM), PCM)
    assert len(back) == 200 * 24
    # 300 Hz for 0.2 s crosses zero about 120 times, whatever the rate.
    assert abs(zero_crossings(back) - 120) <= 2
    assert convert(pcm, PCM, PCM) is pcm


@pytest.mark.parametrize(("src", "dst"), [(8000, 24000), (22050, 24000), (24000, 16000)])
def test_resample_lengths(src: int, dst: int) -> None:
    out = resample(tone(100, src), src, dst)
    assert len(out) == len(tone(100, src)) * dst // src


def test_resample_rejects_unsupported_rates() -> None:
    with pytest.raises(AudioFormatError, match="unsupported sample rate"):
        resample(tone(10, 8000), 8000, 44100)


def test_odd_pcm_is_rejected_but_streamed_odd_chunks_are_carried() -> None:
    with pytest.raises(AudioFormatError):
        decode(b"\x00\x01\x02", PCM)
    pcm = encode(tone(100, 24000), PCM)
    converter = AudioConverter(PCM, PCMU)
    pieces = [converter.feed(pcm[i : i + 333]) for i in range(0, len(pcm), 333)]
    # Chunking changes interpolation only at chunk edges; the byte count and signal survive.
    streamed = b"".join(pieces)
    assert abs(len(streamed) - len(convert(pcm, PCM, PCMU))) <= len(pieces)
    assert AudioConverter(PCMU, PCMU).feed(b"abc") == b"abc"


def test_tone_speech_is_deterministic_proportional_and_loud() -> None:
    short, long = tone_speech("Hello."), tone_speech("Hello. " * 4)
    assert np.array_equal(short, tone_speech("Hello."))
    assert not np.array_equal(short, tone_speech("Hello.", voice="cedar"))
    # "Hello." = 2 syllables of 180+40 ms, then a 200 ms pause after the full stop.
    assert len(short) == 24 * 640
    assert len(long) == 4 * len(short)
    burst = short[: 24 * 180]
    assert rms_fraction(burst) > 0.15  # far above the VAD's default level of 0.05
    assert len(tone_speech("")) == 0


def _wav(samples: np.ndarray, rate: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return out.getvalue()


def test_parse_wav_reads_streamed_header() -> None:
    samples = tone(50, 22050)
    data = bytearray(_wav(samples, 22050))
    # As espeak-ng writes to a pipe: sizes it could not seek back to fill in.
    struct.pack_into("<I", data, 4, 0x7FFFFFFF)
    struct.pack_into("<I", data, 40, 0x7FFFFFFF)
    parsed, rate = parse_wav(bytes(data))
    assert rate == 22050
    assert np.array_equal(parsed, samples)
    with pytest.raises(AudioFormatError):
        parse_wav(b"not a wav file at all")


def _fake_espeak(tmp_path: Path, body: str) -> str:
    script = tmp_path / "espeak-ng"
    script.write_text(f"#!{sys.executable}\nimport sys, io, wave, math\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return os.fspath(script)


async def test_espeak_output_is_resampled_and_cached(tmp_path: Path) -> None:
    log = tmp_path / "calls.txt"
    espeak = _fake_espeak(
        tmp_path,
        f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "out = io.BytesIO()\n"
        "w = wave.open(out, 'wb'); w.setnchannels(1); w.setsampwidth(2); w.setframerate(22050)\n"
        "w.writeframes(b'\\x10\\x00' * 22050); w.close()\n"
        "sys.stdout.buffer.write(out.getvalue())",
    )
    synth = SpeechSynthesizer(espeak)
    assert synth.lookup("Hi there", "marin") is None  # not rendered yet: the engine must wait
    samples = await synth.render("Hi there", "marin")
    assert len(samples) == 24000  # one second at 22.05 kHz, resampled to 24 kHz
    assert synth.lookup("Hi there", "marin") is samples
    await synth.render("Hi there", "marin")
    assert log.read_text().splitlines() == ["--stdout -v en-us+f3 -- Hi there"]


async def test_failing_espeak_falls_back_to_tones(tmp_path: Path) -> None:
    synth = SpeechSynthesizer(_fake_espeak(tmp_path, "sys.exit(3)"))
    samples = await synth.render("Hello.", "marin")
    assert np.array_equal(samples, tone_speech("Hello.", "marin"))


async def test_speak_returns_wire_format_bytes() -> None:
    synth = SpeechSynthesizer(None)
    ulaw = await speak("Hello.", PCMU, synthesizer=synth)
    assert len(ulaw) == 640 * 8
