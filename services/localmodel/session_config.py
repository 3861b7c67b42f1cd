"""The GA session object: server defaults, validation of ``session.update``, partial merging.

Semantics (reference/realtime-protocol.md, section 2.2): only fields present change; ``""`` clears
``instructions``, ``[]`` clears ``tools``, ``null`` turns off ``turn_detection``, ``transcription``
and ``noise_reduction``; ``model`` cannot change after start (the same value is tolerated, since
both agents SDKs resend it); ``voice`` cannot change once the model has spoken; an update with any
invalid or unknown field is rejected whole. The ``audio``, ``audio.input`` and ``audio.output``
objects merge key by key; any other object (a format, a turn_detection) replaces the old one, with
server defaults for the keys it leaves out.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from .validation import (
    InvalidRequest,
    check_keys,
    get_bool,
    get_choice,
    get_int,
    get_number,
    get_object,
    get_str,
    require,
    type_error,
    value_error,
)

__all__ = [
    "DEFAULT_INSTRUCTIONS",
    "apply_session_update",
    "check_format",
    "check_tool_choice",
    "check_tools",
    "default_session",
]

DEFAULT_INSTRUCTIONS: Final = (
    "You are a helpful, friendly voice assistant. You are the callray local model: you follow a "
    "script and do not understand what is said to you."
)
_FORMAT_TYPES: Final = ("audio/pcm", "audio/pcmu", "audio/pcma")
_TOP_KEYS: Final = (
    "type",
    "model",
    "instructions",
    "output_modalities",
    "max_output_tokens",
    "audio",
    "tools",
    "tool_choice",
    "tracing",
    "truncation",
    "prompt",
    "include",
    "parallel_tool_calls",
    "reasoning",
)
SERVER_VAD_DEFAULTS: Final[dict[str, Any]] = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "idle_timeout_ms": None,
    "create_response": True,
    "interrupt_response": True,
}
SEMANTIC_VAD_DEFAULTS: Final[dict[str, Any]] = {
    "type": "semantic_vad",
    "eagerness": "auto",
    "create_response": True,
    "interrupt_response": True,
}


def default_session(model: str, session_id: str, expires_at: int) -> dict[str, Any]:
    """What ``session.created`` shows before any update."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": expires_at,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": dict(SERVER_VAD_DEFAULTS),
            },
            "output": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "voice": "marin",
                "speed": 1.0,
            },
        },
        "include": None,
    }


def apply_session_update(
    current: dict[str, Any], update: Any, *, voice_locked: bool = False
) -> dict[str, Any]:
    """The merged session, or :class:`InvalidRequest` naming the first bad field."""
    update = get_object(update, "session")
    check_keys(update, _TOP_KEYS, "session")
    kind = require(update, "type", "session")
    get_choice(kind, "session.type", ["realtime"])
    new = copy.deepcopy(current)
    for key, value in update.items():
        path = f"session.{key}"
        if key == "model":
            if get_str(value, path) != current["model"]:
                raise InvalidRequest(
                    f"Invalid '{path}': cannot update a session's model after it has started.",
                    code="invalid_value",
                    param=path,
                )
        elif key == "instructions":
            new[key] = get_str(value, path)
        elif key == "output_modalities":
            new[key] = check_modalities(value, path)
        elif key == "max_output_tokens":
            new[key] = check_max_output_tokens(value, path)
        elif key == "audio":
            _merge_audio(new["audio"], value, voice_locked)
        elif key == "tools":
            new[key] = check_tools(value, path)
        elif key == "tool_choice":
            new[key] = check_tool_choice(value, path)
        elif key == "tracing":
            new[key] = _check_tracing(value, path, current["tracing"])
        elif key == "truncation":
            new[key] = _check_truncation(value, path)
        elif key == "prompt":
            new[key] = _check_prompt(value, path)
        elif key == "include":
            if value is not None:
                for i, entry in enumerate(_get_list(value, path)):
                    get_choice(entry, f"{path}[{i}]", ["item.input_audio_transcription.logprobs"])
            new[key] = value
        elif key == "parallel_tool_calls":
            new[key] = get_bool(value, path)
        elif key == "reasoning":
            obj = get_object(value, path)
            check_keys(obj, ["effort"], path)
            new[key] = obj
    return new


def _get_list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise type_error(path, "an array", value)
    return value


def check_modalities(value: Any, path: str) -> list[str]:
    modalities = _get_list(value, path)
    if modalities not in (["audio"], ["text"]):
        raise InvalidRequest(
            f"Invalid '{path}': {modalities!r}. Supported values are ['audio'] or ['text']; "
            "audio output always comes with a transcript.",
            code="invalid_value",
            param=path,
        )
    return list(modalities)


def check_max_output_tokens(value: Any, path: str) -> int | str:
    if value == "inf":
        return "inf"
    if isinstance(value, str):
        raise value_error(path, value, ["inf"])
    return get_int(value, path, lo=1, hi=4096)


def check_format(value: Any, path: str) -> dict[str, Any]:
    """An audio format object; a bare string such as ``"pcm16"`` is the beta shape and rejected."""
    fmt = get_object(value, path)
    kind = get_choice(require(fmt, "type", path), f"{path}.type", _FORMAT_TYPES)
    if kind != "audio/pcm":
        check_keys(fmt, ["type"], path)
        return {"type": kind}
    check_keys(fmt, ["type", "rate"], path)
    rate = fmt.get("rate", 24000)
    if isinstance(rate, bool) or rate != 24000:
        raise InvalidRequest(
            f"Invalid value for '{path}.rate': {rate!r}. audio/pcm supports only 24000.",
            code="invalid_value",
            param=f"{path}.rate",
        )
    return {"type": kind, "rate": 24000}


def _merge_audio(audio: dict[str, Any], value: Any, voice_locked: bool) -> None:
    obj = get_object(value, "session.audio")
    check_keys(obj, ["input", "output"], "session.audio")
    if "input" in obj:
        _merge_input(audio["input"], obj["input"])
    if "output" in obj:
        _merge_output(audio["output"], obj["output"], voice_locked)


def _merge_input(current: dict[str, Any], value: Any) -> None:
    path = "session.audio.input"
    obj = get_object(value, path)
    check_keys(obj, ["format", "transcription", "noise_reduction", "turn_detection"], path)
    for key, item in obj.items():
        sub = f"{path}.{key}"
        if key == "format":
            current[key] = check_format(item, sub)
        elif item is None:
            current[key] = None
        elif key == "transcription":
            current[key] = _check_transcription(item, sub)
        elif key == "noise_reduction":
            nr = get_object(item, sub)
            check_keys(nr, ["type", "strength"], sub)
            if "type" in nr:
                get_choice(nr["type"], f"{sub}.type", ["near_field", "far_field"])
            if "strength" in nr:
                get_number(nr["strength"], f"{sub}.strength", lo=0.0, hi=1.0)
            current[key] = nr
        else:
            current[key] = check_turn_detection(item, sub)


def _check_transcription(value: Any, path: str) -> dict[str, Any]:
    obj = get_object(value, path)
    check_keys(obj, ["model", "language", "prompt", "delay", "keywords", "languages"], path)
    for key in ("model", "language", "prompt", "delay"):
        if key in obj and obj[key] is not None:
            get_str(obj[key], f"{path}.{key}")
    for key in ("keywords", "languages"):
        if key in obj and obj[key] is not None:
            for i, entry in enumerate(_get_list(obj[key], f"{path}.{key}")):
                get_str(entry, f"{path}.{key}[{i}]")
    return obj


def check_turn_detection(value: Any, path: str) -> dict[str, Any]:
    obj = get_object(value, path)
    kind = get_choice(require(obj, "type", path), f"{path}.type", ["server_vad", "semantic_vad"])
    result = dict(SERVER_VAD_DEFAULTS if kind == "server_vad" else SEMANTIC_VAD_DEFAULTS)
    check_keys(obj, result.keys(), path)  # semantic_vad has no threshold, padding or silence
    for key, item in obj.items():
        sub = f"{path}.{key}"
        if key in ("create_response", "interrupt_response"):
            result[key] = get_bool(item, sub)
        elif key == "threshold":
            result[key] = get_number(item, sub, lo=0.0, hi=1.0)
        elif key in ("prefix_padding_ms", "silence_duration_ms"):
            result[key] = get_int(item, sub, lo=0, hi=10_000)
        elif key == "idle_timeout_ms":
            result[key] = None if item is None else get_int(item, sub, lo=0)
        elif key == "eagerness":
            result[key] = get_choice(item, sub, ["low", "medium", "high", "auto"])
    return result


def _merge_output(current: dict[str, Any], value: Any, voice_locked: bool) -> None:
    path = "session.audio.output"
    obj = get_object(value, path)
    check_keys(obj, ["format", "voice", "speed"], path)
    if "format" in obj:
        current["format"] = check_format(obj["format"], f"{path}.format")
    if "voice" in obj:
        voice = get_str(obj["voice"], f"{path}.voice", nonempty=True)
        if voice_locked and voice != current["voice"]:
            raise InvalidRequest(
                "Cannot update a conversation's voice if assistant audio is present.",
                code="cannot_update_voice",
                param=f"{path}.voice",
            )
        current["voice"] = voice
    if "speed" in obj:
        current["speed"] = get_number(obj["speed"], f"{path}.speed", lo=0.25, hi=1.5)


def check_tools(value: Any, path: str) -> list[dict[str, Any]]:
    tools = _get_list(value, path)
    for i, entry in enumerate(tools):
        sub = f"{path}[{i}]"
        tool = get_object(entry, sub)
        kind = get_choice(require(tool, "type", sub), f"{sub}.type", ["function", "mcp"])
        if kind == "mcp":
            get_str(require(tool, "server_label", sub), f"{sub}.server_label", nonempty=True)
            continue  # accepted and kept; the local model never calls MCP servers
        check_keys(tool, ["type", "name", "description", "parameters"], sub)
        get_str(require(tool, "name", sub), f"{sub}.name", nonempty=True)
        if "description" in tool:
            get_str(tool["description"], f"{sub}.description")
        if "parameters" in tool:
            get_object(tool["parameters"], f"{sub}.parameters")
    return tools


def check_tool_choice(value: Any, path: str) -> str | dict[str, Any]:
    if isinstance(value, str):
        return get_choice(value, path, ["none", "auto", "required"])
    obj = get_object(value, path)
    kind = get_choice(require(obj, "type", path), f"{path}.type", ["function", "mcp"])
    if kind == "function":
        check_keys(obj, ["type", "name"], path)
        get_str(require(obj, "name", path), f"{path}.name", nonempty=True)
    else:
        check_keys(obj, ["type", "server_label", "name"], path)
        get_str(require(obj, "server_label", path), f"{path}.server_label", nonempty=True)
    return obj


def _check_tracing(value: Any, path: str, current: Any) -> Any:
    if value is not None and value != "auto":
        obj = get_object(value, path)
        check_keys(obj, ["workflow_name", "group_id", "metadata"], path)
    if current is not None and value != current:
        raise InvalidRequest(
            "Tracing cannot be modified once it has been enabled for a session.",
            code="invalid_value",
            param=path,
        )
    return value


def _check_truncation(value: Any, path: str) -> Any:
    if isinstance(value, str):
        return get_choice(value, path, ["auto", "disabled"])
    obj = get_object(value, path)
    check_keys(obj, ["type", "retention_ratio", "token_limits"], path)
    get_choice(require(obj, "type", path), f"{path}.type", ["retention_ratio"])
    get_number(require(obj, "retention_ratio", path), f"{path}.retention_ratio", lo=0.0, hi=1.0)
    if "token_limits" in obj:
        limits = get_object(obj["token_limits"], f"{path}.token_limits")
        check_keys(limits, ["post_instructions"], f"{path}.token_limits")
    return obj


def _check_prompt(value: Any, path: str) -> Any:
    if value is None:
        return None
    obj = get_object(value, path)
    check_keys(obj, ["id", "version", "variables"], path)
    get_str(require(obj, "id", path), f"{path}.id", nonempty=True)
    return obj
