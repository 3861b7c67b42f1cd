"""Plausible token counts for ``response.done`` and transcription events.

The local model has no tokenizer; bridges only need counts of the right shape and magnitude
(dashboards, cost estimates, load tests). Rates follow OpenAI's published rules of thumb: text
about 4 characters a token, input audio about 10 tokens a second, output audio about 20.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .conversation import StoredItem

__all__ = ["context_tokens", "response_usage", "text_tokens", "transcription_usage"]


def text_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def audio_in_tokens(ms: float) -> int:
    return math.ceil(ms / 100)


def audio_out_tokens(ms: float) -> int:
    return math.ceil(ms / 50)


def context_tokens(instructions: str, items: Iterable[StoredItem]) -> tuple[int, int]:
    """(text, audio) tokens of what a response reads: instructions and the conversation."""
    chars, audio_ms = len(instructions), 0.0
    for stored in items:
        for part in stored.item.get("content", []):
            chars += len(part.get("text") or part.get("transcript") or "")
        chars += len(stored.item.get("arguments", "")) + len(stored.item.get("output", ""))
        for index, data in stored.audio.items():
            audio_ms += stored.formats[index].duration_ms(len(data))
    return math.ceil(chars / 4), audio_in_tokens(audio_ms)


def response_usage(
    input_text: int, input_audio: int, output_text: int, output_audio_ms: float
) -> dict[str, Any]:
    """The ``usage`` object of a ``RealtimeResponse``."""
    output_audio = audio_out_tokens(output_audio_ms)
    return {
        "total_tokens": input_text + input_audio + output_text + output_audio,
        "input_tokens": input_text + input_audio,
        "output_tokens": output_text + output_audio,
        "input_token_details": {
            "text_tokens": input_text,
            "audio_tokens": input_audio,
            "image_tokens": 0,
            "cached_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": output_text, "audio_tokens": output_audio},
    }


def transcription_usage(audio_ms: float, transcript: str) -> dict[str, Any]:
    """The token-based ``usage`` of ``conversation.item.input_audio_transcription.completed``."""
    audio, text = audio_in_tokens(audio_ms), text_tokens(transcript)
    return {
        "type": "tokens",
        "input_tokens": audio,
        "output_tokens": text,
        "total_tokens": audio + text,
        "input_token_details": {"text_tokens": 0, "audio_tokens": audio},
    }
