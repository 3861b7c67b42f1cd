"""``build_initial_config``: the one pure function that makes a call's initial session config.

Every transport uses it when it connects, and SIP uses it to accept a call, so a call starts from
the same defaults whichever way it arrived (the seed's ``buildInitialConfig``). The defaults follow
the Agents SDKs (reference §9.1); the caller's ``config`` (GA wire shape, snake_case) is merged
over them key by key.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from services.config import DEFAULT_MODEL
from services.errors import UserError
from services.realtime.agent import RealtimeAgent
from services.realtime.audio_formats import PCM24K, normalize_format

DEFAULT_SESSION: dict[str, Any] = {
    "output_modalities": ["audio"],
    "audio": {
        "input": {
            "format": PCM24K,
            "transcription": {"model": "gpt-4o-mini-transcribe"},
            "turn_detection": {"type": "semantic_vad", "interrupt_response": True},
        },
        "output": {"format": PCM24K, "speed": 1.0},
    },
    "tool_choice": "auto",
}

# The Realtime Calls API rejects these for SIP sessions (AJS openaiRealtimeSip.ts; reference §6.4).
SIP_UNSUPPORTED_TURN_FIELDS = ("threshold", "prefix_padding_ms", "silence_duration_ms")


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``; nested objects merge, anything else replaces
    (``None`` included: it is how the API turns a feature off). Objects of a different ``type``
    (an audio format, a turn-detection mode) replace each other whole: their fields differ."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        old = out.get(key)
        if (
            isinstance(value, Mapping)
            and isinstance(old, Mapping)
            and value.get("type", old.get("type")) == old.get("type")
        ):
            out[key] = deep_merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def build_initial_config(
    agent: RealtimeAgent,
    options: Mapping[str, Any] | None = None,
    *,
    model: str | None = None,
    context: Any = None,
    for_sip: bool = False,
) -> dict[str, Any]:
    """The GA session object (``type: realtime``) for ``agent`` with ``options`` merged in.

    ``options`` is a partial session object in wire shape, e.g.
    ``{"audio": {"input": {"format": {"type": "audio/pcmu"}}}}``; legacy format names such as
    ``"g711_ulaw"`` are accepted and converted. The result can be sent in ``session.update`` or
    passed to ``realtime.calls.accept``.
    """
    session = deep_merge(DEFAULT_SESSION, options or {})
    session.pop("type", None)
    audio = session.setdefault("audio", {})
    for direction in ("input", "output"):
        part = audio.setdefault(direction, {})
        if "format" in part:
            part["format"] = normalize_format(part["format"])
    if agent.voice and "voice" not in audio["output"]:
        audio["output"]["voice"] = agent.voice
    if for_sip:
        detection = audio["input"].get("turn_detection") or {}
        bad = [f for f in SIP_UNSUPPORTED_TURN_FIELDS if f in detection]
        if bad:
            raise UserError(f"SIP sessions do not accept turn_detection fields {', '.join(bad)}")
    result: dict[str, Any] = {
        "type": "realtime",
        "model": model or session.pop("model", None) or DEFAULT_MODEL,
        "instructions": agent.resolve_instructions(context),
        **session,
        "tools": agent.tool_definitions(),
    }
    return result
