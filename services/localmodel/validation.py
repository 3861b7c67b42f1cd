"""Checks on client JSON that fail with the API's own error shape.

Every failure is an :class:`InvalidRequest` carrying what the server puts into an ``error`` event:
``code``, ``param`` (a dotted path such as ``session.audio.input.format``) and a message worded the
way OpenAI words them (reference/realtime-protocol.md, section 4.1: ``missing_required_parameter``,
``unknown_parameter``; "Invalid type for 'x': expected ..."). Codes not seen in the reference
(``invalid_type``, ``integer_above_max_value`` ...) follow the REST API's naming.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from services.errors import RealtimeProtocolError

__all__ = [
    "InvalidRequest",
    "check_keys",
    "get_bool",
    "get_choice",
    "get_int",
    "get_number",
    "get_object",
    "get_str",
    "json_type",
    "require",
    "show",
]


class InvalidRequest(RealtimeProtocolError):
    """A client event the server answers with an ``error`` event; the connection stays open."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None,
        param: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message, field=param)
        self.code = code
        self.param = param
        self.error_type = error_type


def show(value: Any, limit: int = 60) -> str:
    """A short repr for messages: a client value is never echoed whole (it may be audio)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _article(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def type_error(path: str, expected: str, value: Any) -> InvalidRequest:
    got = json_type(value)
    return InvalidRequest(
        f"Invalid type for '{path}': expected {expected}, but got {_article(got)} instead.",
        code="invalid_type",
        param=path,
    )


def value_error(path: str, value: Any, allowed: Iterable[str]) -> InvalidRequest:
    choices = [f"'{a}'" for a in allowed]
    listed = ", ".join(choices[:-1]) + f" and {choices[-1]}" if len(choices) > 1 else choices[0]
    return InvalidRequest(
        f"Invalid value for '{path}': {show(value)}. Supported values are: {listed}.",
        code="invalid_value",
        param=path,
    )


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def check_keys(obj: Mapping[str, Any], allowed: Iterable[str], path: str) -> None:
    """Reject the first key not in ``allowed`` (a GA update is rejected whole, section 2.2)."""
    allowed_set = set(allowed)
    for key in obj:
        if key not in allowed_set:
            raise InvalidRequest(
                f"Unknown parameter: '{join(path, str(key))}'.",
                code="unknown_parameter",
                param=join(path, str(key)),
            )


def require(obj: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in obj:
        raise InvalidRequest(
            f"Missing required parameter: '{join(path, key)}'.",
            code="missing_required_parameter",
            param=join(path, key),
        )
    return obj[key]


def get_object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise type_error(path, "an object", value)
    return value


def get_str(value: Any, path: str, *, nonempty: bool = False) -> str:
    if not isinstance(value, str):
        raise type_error(path, "a string", value)
    if nonempty and not value:
        raise InvalidRequest(
            f"Invalid '{path}': empty string. Expected a string with minimum length 1.",
            code="empty_string",
            param=path,
        )
    return value


def get_bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise type_error(path, "a boolean", value)
    return value


def _range_error(path: str, value: float, bound: float, above: bool, kind: str) -> InvalidRequest:
    side, op, code = (
        ("above maximum", "<=", "above_max") if above else ("below minimum", ">=", "below_min")
    )
    return InvalidRequest(
        f"Invalid '{path}': {kind} {side} value. Expected a value {op} {bound}, "
        f"but got {value} instead.",
        code=f"{kind}_{code}_value",
        param=path,
    )


def get_int(value: Any, path: str, *, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise type_error(path, "an integer", value)
    if lo is not None and value < lo:
        raise _range_error(path, value, lo, False, "integer")
    if hi is not None and value > hi:
        raise _range_error(path, value, hi, True, "integer")
    return value


def get_number(value: Any, path: str, *, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise type_error(path, "a number", value)
    if lo is not None and value < lo:
        raise _range_error(path, value, lo, False, "decimal")
    if hi is not None and value > hi:
        raise _range_error(path, value, hi, True, "decimal")
    return float(value)


def get_choice(value: Any, path: str, allowed: Iterable[str]) -> str:
    options = list(allowed)
    if not isinstance(value, str):
        raise type_error(path, "a string", value)
    if value not in options:
        raise value_error(path, value, options)
    return value
