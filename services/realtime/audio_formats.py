"""Audio format descriptions of the GA protocol and their byte rates (reference §10)."""

from __future__ import annotations

from typing import Any

from services.errors import AudioFormatError

PCM24K: dict[str, Any] = {"type": "audio/pcm", "rate": 24000}
PCMU: dict[str, Any] = {"type": "audio/pcmu"}
PCMA: dict[str, Any] = {"type": "audio/pcma"}

# Beta-era names that users still write; mapped to the GA objects.
_LEGACY = {"pcm16": PCM24K, "g711_ulaw": PCMU, "g711_alaw": PCMA}


def normalize_format(fmt: Any) -> dict[str, Any]:
    """Accept a GA format object or a legacy name; return the GA object."""
    if isinstance(fmt, str):
        if fmt in _LEGACY:
            return dict(_LEGACY[fmt])
        if fmt in ("audio/pcm", "audio/pcmu", "audio/pcma"):
            return dict(PCM24K) if fmt == "audio/pcm" else {"type": fmt}
        raise AudioFormatError(f"unknown audio format {fmt!r}")
    if isinstance(fmt, dict) and fmt.get("type") in ("audio/pcm", "audio/pcmu", "audio/pcma"):
        return dict(fmt)
    raise AudioFormatError(f"unknown audio format {fmt!r}")


def bytes_per_ms(fmt: Any) -> float:
    """PCM16 at 24 kHz is 48 bytes per ms; G.711 at 8 kHz is 8."""
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind in ("audio/pcmu", "audio/pcma"):
        return 8.0
    rate = fmt.get("rate", 24000) if isinstance(fmt, dict) else 24000
    return 2.0 * int(rate) / 1000.0
