"""The recorded announcement an ingress plays by itself when no session can speak to a caller.

A session speaks through the model; when there is no session (its host was lost and no other
host could take the call, or none took it within ``MediaSettings.no_session_s``) the ingress
still holds the caller's media, and silence there reads as a dropped line. So it plays this, as
a carrier plays an intercept message, then ends the call with the reason.

The built-in recording (``announcements/unavailable.wav``, rendered once with espeak-ng) says
"We're sorry, we can't continue your call right now. Please call again later."; a call center
records its own and points ``CALLRAY_UNAVAILABLE_ANNOUNCEMENT`` at a mono 16-bit WAV.
"""

from __future__ import annotations

import dataclasses
import functools
import wave
from pathlib import Path

import numpy as np

from services.errors import ConfigError
from services.media.vocabulary import AudioFormatName
from services.telephony.g711 import alaw_encode, ulaw_encode

BUILT_IN = Path(__file__).with_name("announcements") / "unavailable.wav"

# What each audio format carries on the call's leg: G.711 at 8 kHz, PCM16 at 24 kHz.
_RATES: dict[str, int] = {"audio/pcmu": 8000, "audio/pcma": 8000, "audio/pcm": 24000}


@dataclasses.dataclass(frozen=True, slots=True, eq=False)  # eq=False: hashed by identity
class Announcement:
    """One recording, ready to play on legs of every audio format."""

    pcm: np.ndarray  # mono int16
    rate: int

    @property
    def seconds(self) -> float:
        return len(self.pcm) / self.rate

    def encoded(self, audio_format: AudioFormatName) -> bytes:
        return _encode(self, audio_format)


@functools.cache
def _encode(announcement: Announcement, audio_format: AudioFormatName) -> bytes:
    rate = _RATES[audio_format]
    pcm = announcement.pcm
    if rate != announcement.rate:
        # Linear interpolation: a voice recording at telephone bandwidth needs no better.
        n = int(len(pcm) * rate / announcement.rate)
        at = np.arange(n) * (announcement.rate / rate)
        pcm = np.interp(at, np.arange(len(pcm)), pcm).astype(np.int16)
    if audio_format == "audio/pcmu":
        return ulaw_encode(pcm)
    if audio_format == "audio/pcma":
        return alaw_encode(pcm)
    return pcm.astype("<i2").tobytes()


@functools.cache
def load(path: str = "") -> Announcement:
    """Read a mono 16-bit PCM WAV (``""``: the built-in one); :class:`ConfigError` otherwise."""
    source = Path(path) if path else BUILT_IN
    name = "CALLRAY_UNAVAILABLE_ANNOUNCEMENT"
    try:
        with wave.open(str(source), "rb") as wav:
            if wav.getnchannels() != 1 or wav.getsampwidth() != 2:
                raise ConfigError(f"{name}: {source} must be mono 16-bit PCM")
            rate = wav.getframerate()
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)
    except (OSError, EOFError, wave.Error) as exc:
        raise ConfigError(f"{name}: cannot read {source}: {exc}") from None
    if not 8000 <= rate <= 48000 or len(pcm) == 0:
        raise ConfigError(f"{name}: {source} must hold audio at 8 to 48 kHz")
    return Announcement(pcm, rate)
