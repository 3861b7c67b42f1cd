"""How error messages name the kind of a JSON value ("got an array"): one helper for every
parser that reports a wrong type (the Realtime wire events, the media-stream serializers)."""

from __future__ import annotations

from typing import Final

KIND_NAMES: Final[dict[type, str]] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    dict: "an object",
    list: "an array",
    type(None): "null",
}


def json_kind(value: object) -> str:
    """``value``'s JSON kind as an error message says it (``True`` is a boolean, not an integer)."""
    return KIND_NAMES.get(type(value), type(value).__name__)
