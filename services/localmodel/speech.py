"""Speech for the local model: espeak-ng when installed, else deterministic tone "syllables".

The engine is sans-I/O, so it never waits on a synthesizer: it asks
:meth:`SpeechSynthesizer.lookup`, and when that returns ``None`` it names the text in its speech
requests; the server adapter then awaits :meth:`SpeechSynthesizer.render` (a subprocess, off the
event loop) and wakes the engine.
The tone fallback is computed synchronously (it takes microseconds), so without espeak-ng ``lookup``
always answers and tests never wait.

Tone speech: one 180 ms tone burst per three characters of text plus a 40 ms gap (about 14
characters a second, a natural speaking rate), a 200 ms pause after ``.,;:?!``. Bursts have an
amplitude of 0.3 of full scale (RMS about 0.21), far above what the VAD counts as speech at any
threshold (vad.py). Pitches come from a CRC of each word and the voice, so the same text always
gives the same audio.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import struct
import zlib
from collections import OrderedDict
from typing import Final

import numpy as np

from services.errors import AudioFormatError

from .audio import PCM, AudioFormat, Int16Array, encode, resample

__all__ = ["SpeechSynthesizer", "parse_wav", "speak", "tone_speech"]

log = logging.getLogger(__name__)

RATE: Final = PCM.rate
_SYLLABLE_MS: Final = 180
_GAP_MS: Final = 40
_PAUSE_MS: Final = 200
_CHARS_PER_SYLLABLE: Final = 3
_AMPLITUDE: Final = 0.3 * 32767
_FADE_MS: Final = 10  # ramps at burst edges, so bursts do not click

# OpenAI voice name → espeak-ng voice; the split follows how the built-in voices sound.
_ESPEAK_VOICES: Final = {
    **dict.fromkeys(("alloy", "coral", "marin", "sage", "shimmer"), "en-us+f3"),
    **dict.fromkeys(("ash", "ballad", "cedar", "echo", "verse"), "en-us+m3"),
}


def _burst(freq: float, ms: int) -> Int16Array:
    n = RATE * ms // 1000
    t = np.arange(n) / RATE
    wave = np.sin(2 * np.pi * freq * t) * _AMPLITUDE
    fade = min(n // 2, RATE * _FADE_MS // 1000)
    ramp = np.linspace(0.0, 1.0, fade, endpoint=False)
    wave[:fade] *= ramp
    wave[n - fade :] *= ramp[::-1]
    return wave.astype(np.int16)


def tone_speech(text: str, voice: str = "marin") -> Int16Array:
    """Deterministic syllable-like tone bursts for ``text``, 24 kHz int16; empty text → no audio."""
    pieces: list[Int16Array] = []
    gap = np.zeros(RATE * _GAP_MS // 1000, np.int16)
    pause = np.zeros(RATE * _PAUSE_MS // 1000, np.int16)
    for word in text.split():
        seed = zlib.crc32(f"{voice}:{word.lower()}".encode())
        syllables = max(1, round(len(word) / _CHARS_PER_SYLLABLE))
        for i in range(syllables):
            freq = 140.0 + ((seed >> (3 * i)) % 16) * 10.0  # 140-290 Hz, a speaking voice's range
            pieces += [_burst(freq, _SYLLABLE_MS), gap]
        if word[-1] in ".,;:?!":
            pieces.append(pause)
    return np.concatenate(pieces) if pieces else np.zeros(0, np.int16)


def parse_wav(data: bytes) -> tuple[Int16Array, int]:
    """Mono 16-bit PCM samples and their rate from a WAV file.

    espeak-ng writing to a pipe cannot seek back to fill in chunk sizes, so its header may claim
    0x7FFFFFFF bytes; a data chunk is therefore read to the end of the input at most.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioFormatError("not a RIFF/WAVE file")
    pos, rate, channels, bits = 12, 0, 0, 0
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = data[pos + 8 : pos + 8 + size]
        if cid == b"fmt ":
            _, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", body)
        elif cid == b"data":
            if (channels, bits) != (1, 16):
                raise AudioFormatError(f"WAV must be mono 16-bit, got {channels} ch {bits} bit")
            body = body[: len(body) - len(body) % 2]
            return np.frombuffer(body, dtype="<i2").astype(np.int16), rate
        pos += 8 + size + (size & 1)
    raise AudioFormatError("WAV file has no data chunk")


class SpeechSynthesizer:
    """Text → 24 kHz speech, cached by (text, voice); one instance is shared by a whole server."""

    def __init__(self, espeak: str | None = None, *, cache_size: int = 256) -> None:
        # ``espeak`` is the espeak-ng executable; ``SpeechSynthesizer.default()`` looks on PATH.
        self.espeak = espeak
        self._cache: OrderedDict[tuple[str, str], Int16Array] = OrderedDict()
        self._cache_size = cache_size
        self._inflight: dict[tuple[str, str], asyncio.Future[Int16Array]] = {}

    @classmethod
    def default(cls) -> SpeechSynthesizer:
        return cls(shutil.which("espeak-ng"))

    def lookup(self, text: str, voice: str) -> Int16Array | None:
        """The audio if it is ready now (always, without espeak-ng), else ``None``."""
        key = (text, voice)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if self.espeak is None or not text.strip():
            return self._store(key, tone_speech(text, voice))
        return None

    async def render(self, text: str, voice: str) -> Int16Array:
        """Synthesize (once, however many callers ask at the same time) and cache."""
        ready = self.lookup(text, voice)
        if ready is not None:
            return ready
        key = (text, voice)
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(self._espeak(text, voice))
            self._inflight[key] = future
            # Cache the result even if every caller has gone away (a call hung up meanwhile).
            future.add_done_callback(lambda done: self._settle(key, done))
        return await asyncio.shield(future)

    async def close(self) -> None:
        """Let renderings in flight finish (espeak-ng takes ~0.1 s), so no child process is
        left running when the event loop that started it goes away."""
        pending = [f for f in self._inflight.values() if not f.done()]
        if pending:
            await asyncio.wait(pending, timeout=10.0)

    def _settle(self, key: tuple[str, str], future: asyncio.Future[Int16Array]) -> None:
        self._inflight.pop(key, None)
        if not future.cancelled() and future.exception() is None:
            self._store(key, future.result())

    async def _espeak(self, text: str, voice: str) -> Int16Array:
        assert self.espeak is not None
        args = [self.espeak, "--stdout", "-v", _ESPEAK_VOICES.get(voice, "en-us"), "--", text]
        try:
            proc = await asyncio.create_subprocess_exec(
                *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            out, err = await proc.communicate()
            if proc.returncode != 0:
                raise AudioFormatError(f"espeak-ng exited {proc.returncode}: {err[:200]!r}")
            samples, rate = parse_wav(out)
            return resample(samples, rate, RATE)
        except Exception as exc:
            # A broken espeak-ng must not break calls (a response would wait for this audio
            # forever): fall back to tones, and say so once per text.
            log.warning("espeak-ng failed (%s); using tone speech for this text", exc)
            return tone_speech(text, voice)

    def _store(self, key: tuple[str, str], samples: Int16Array) -> Int16Array:
        self._cache[key] = samples
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return samples


async def speak(
    text: str,
    fmt: AudioFormat = PCM,
    voice: str = "marin",
    synthesizer: SpeechSynthesizer | None = None,
) -> bytes:
    """``text`` spoken, as bytes in the wire format ``fmt`` (for tests, tools, load generators)."""
    synth = synthesizer or SpeechSynthesizer.default()
    return encode(resample(await synth.render(text, voice), RATE, fmt.rate), fmt)
