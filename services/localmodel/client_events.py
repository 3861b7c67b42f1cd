"""Client frames → typed client events, once, at the edge (STYLE.md practice 4).

The eleven GA client event types (reference/realtime-protocol.md, section 3) each become a frozen
dataclass; anything else becomes an :class:`InvalidRequest` the engine answers with an ``error``.
The codes used for frame-level problems are ours (OpenAI does not publish a list):
``invalid_json``, ``invalid_event`` (valid JSON but not an object), ``message_too_large``,
``binary_frame_unsupported``; an unknown ``type`` is ``invalid_value`` with ``param: "type"``, as
for any other bad enum value.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from .audio import AudioFormat
from .conversation import StoredItem, decode_base64_audio, parse_item
from .session_config import (
    check_format,
    check_max_output_tokens,
    check_modalities,
    check_tool_choice,
    check_tools,
)
from .validation import (
    InvalidRequest,
    check_keys,
    get_choice,
    get_int,
    get_object,
    get_str,
    require,
    show,
    value_error,
)

__all__ = [
    "AudioAppend",
    "AudioClear",
    "AudioCommit",
    "ClientEvent",
    "ItemCreate",
    "ItemDelete",
    "ItemRetrieve",
    "ItemTruncate",
    "OutputAudioClear",
    "ResponseCancel",
    "ResponseCreate",
    "ResponseParams",
    "SessionUpdate",
    "decode_frame",
    "parse_append_frame",
    "parse_client_event",
]


@dataclass(frozen=True)
class SessionUpdate:
    event_id: str | None
    session: Any  # validated against the current session by session_config


@dataclass(frozen=True)
class AudioAppend:
    event_id: str | None
    audio: bytes


@dataclass(frozen=True)
class AudioCommit:
    event_id: str | None


@dataclass(frozen=True)
class AudioClear:
    event_id: str | None


@dataclass(frozen=True)
class ItemCreate:
    event_id: str | None
    item: StoredItem
    previous_item_id: str | None


@dataclass(frozen=True)
class ItemRetrieve:
    event_id: str | None
    item_id: str


@dataclass(frozen=True)
class ItemDelete:
    event_id: str | None
    item_id: str


@dataclass(frozen=True)
class ItemTruncate:
    event_id: str | None
    item_id: str
    content_index: int
    audio_end_ms: int


@dataclass(frozen=True)
class ResponseParams:
    """``response.create``'s optional overrides; ``None`` means "use the session's"."""

    instructions: str | None = None
    output_modalities: list[str] | None = None
    conversation: str = "auto"
    metadata: dict[str, str] | None = None
    max_output_tokens: int | str | None = None
    output_format: dict[str, Any] | None = None
    voice: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    input: list[StoredItem | str] | None = None  # items, or ids of item references


@dataclass(frozen=True)
class ResponseCreate:
    event_id: str | None
    params: ResponseParams


@dataclass(frozen=True)
class ResponseCancel:
    event_id: str | None
    response_id: str | None


@dataclass(frozen=True)
class OutputAudioClear:
    event_id: str | None


ClientEvent = (
    SessionUpdate
    | AudioAppend
    | AudioCommit
    | AudioClear
    | ItemCreate
    | ItemRetrieve
    | ItemDelete
    | ItemTruncate
    | ResponseCreate
    | ResponseCancel
    | OutputAudioClear
)

_ITEM_ID_EVENTS: Final[dict[str, Callable[[str | None, str], ClientEvent]]] = {
    "conversation.item.retrieve": ItemRetrieve,
    "conversation.item.delete": ItemDelete,
}
_BARE_EVENTS: Final[dict[str, Callable[[str | None], ClientEvent]]] = {
    "input_audio_buffer.commit": AudioCommit,
    "input_audio_buffer.clear": AudioClear,
    "output_audio_buffer.clear": OutputAudioClear,
}
EVENT_TYPES: Final = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "conversation.item.delete",
    "response.create",
    "response.cancel",
    "output_audio_buffer.clear",
)


def decode_frame(data: str | bytes, max_bytes: int) -> dict[str, Any]:
    """One WebSocket frame → a JSON object with a string ``type``."""
    if isinstance(data, bytes):
        raise InvalidRequest(
            "Binary frames are not supported; send each event as a JSON text frame.",
            code="binary_frame_unsupported",
        )
    if len(data) > max_bytes:  # characters, not bytes; a cheap, conservative first check
        raise InvalidRequest(
            f"Message of {len(data)} characters exceeds the limit of {max_bytes} bytes.",
            code="message_too_large",
        )
    try:
        obj = json.loads(data)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your message: {exc.msg} "
            f"(line {exc.lineno}, column {exc.colno}).",
            code="invalid_json",
        ) from exc
    if not isinstance(obj, dict):
        raise InvalidRequest(
            "Each message must be a JSON object with a 'type' field.", code="invalid_event"
        )
    return obj


# ``input_audio_buffer.append`` as clients serialise it (callray's transport, compact; and
# ``json.dumps``'s default spacing), for parse_append_frame.
_APPEND_HEADS: Final = (
    '{"type":"input_audio_buffer.append","audio":"',
    '{"type": "input_audio_buffer.append", "audio": "',
)
_APPEND_END: Final = '"}'


def parse_append_frame(data: str) -> tuple[dict[str, Any], AudioAppend] | None:
    """A fast path for the frame of every 20 ms of a call: if ``data`` is
    ``{"type": "input_audio_buffer.append", "audio": "<base64>"}`` in one of the usual two
    spellings, return it as ``json.loads`` and :func:`parse_client_event` would; else ``None``,
    and the frame takes the general path (which also reports any error in it).

    Sound because valid base64 contains no ``"`` or ``\\``: text that starts and ends this way
    with valid base64 between is exactly that object, and decoding the base64 here is what
    :func:`decode_base64_audio` does to it.
    """
    for head in _APPEND_HEADS:
        if data.startswith(head):
            if len(data) < len(head) + len(_APPEND_END) or not data.endswith(_APPEND_END):
                return None
            text = data[len(head) : -len(_APPEND_END)]
            try:
                audio = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                return None
            obj = {"type": "input_audio_buffer.append", "audio": text}
            return obj, AudioAppend(None, audio)
    return None


def event_id_of(obj: dict[str, Any]) -> str | None:
    """The client's ``event_id`` if it is a string (it is echoed in ``error.event_id``)."""
    value = obj.get("event_id")
    return value if isinstance(value, str) else None


def parse_client_event(
    obj: dict[str, Any], *, input_format: AudioFormat, new_id: Callable[[str], str]
) -> ClientEvent:
    kind = require(obj, "type", "")
    if not isinstance(kind, str) or kind not in EVENT_TYPES:
        raise value_error("type", kind, EVENT_TYPES)
    if "event_id" in obj:
        get_str(obj["event_id"], "event_id")
    eid = event_id_of(obj)
    if kind in _BARE_EVENTS:
        check_keys(obj, ("type", "event_id"), "")
        return _BARE_EVENTS[kind](eid)
    if kind in _ITEM_ID_EVENTS:
        check_keys(obj, ("type", "event_id", "item_id"), "")
        return _ITEM_ID_EVENTS[kind](eid, get_str(require(obj, "item_id", ""), "item_id"))
    if kind == "session.update":
        check_keys(obj, ("type", "event_id", "session"), "")
        return SessionUpdate(eid, require(obj, "session", ""))
    if kind == "input_audio_buffer.append":
        check_keys(obj, ("type", "event_id", "audio"), "")
        return AudioAppend(eid, decode_base64_audio(require(obj, "audio", ""), "audio"))
    if kind == "conversation.item.create":
        check_keys(obj, ("type", "event_id", "item", "previous_item_id"), "")
        previous = obj.get("previous_item_id")
        if previous is not None:
            get_str(previous, "previous_item_id")
        item = parse_item(require(obj, "item", ""), input_format=input_format, new_id=new_id)
        return ItemCreate(eid, item, previous)
    if kind == "conversation.item.truncate":
        check_keys(obj, ("type", "event_id", "item_id", "content_index", "audio_end_ms"), "")
        return ItemTruncate(
            eid,
            get_str(require(obj, "item_id", ""), "item_id"),
            get_int(require(obj, "content_index", ""), "content_index", lo=0),
            get_int(require(obj, "audio_end_ms", ""), "audio_end_ms", lo=0),
        )
    if kind == "response.create":
        check_keys(obj, ("type", "event_id", "response"), "")
        raw = obj.get("response")
        params = ResponseParams() if raw is None else _parse_params(raw, input_format, new_id)
        return ResponseCreate(eid, params)
    check_keys(obj, ("type", "event_id", "response_id"), "")  # response.cancel
    response_id = obj.get("response_id")
    return ResponseCancel(eid, None if response_id is None else get_str(response_id, "response_id"))


_PARAM_KEYS: Final = (
    "audio",
    "conversation",
    "input",
    "instructions",
    "max_output_tokens",
    "metadata",
    "output_modalities",
    "parallel_tool_calls",
    "prompt",
    "reasoning",
    "tool_choice",
    "tools",
)


def _parse_params(
    raw: Any, input_format: AudioFormat, new_id: Callable[[str], str]
) -> ResponseParams:
    obj = get_object(raw, "response")
    check_keys(obj, _PARAM_KEYS, "response")
    fields: dict[str, Any] = {}
    if obj.get("instructions") is not None:
        fields["instructions"] = get_str(obj["instructions"], "response.instructions")
    if obj.get("output_modalities") is not None:
        fields["output_modalities"] = check_modalities(
            obj["output_modalities"], "response.output_modalities"
        )
    if obj.get("conversation") is not None:
        fields["conversation"] = get_choice(
            obj["conversation"], "response.conversation", ["auto", "none"]
        )
    if obj.get("metadata") is not None:
        fields["metadata"] = _check_metadata(obj["metadata"], "response.metadata")
    if obj.get("max_output_tokens") is not None:
        fields["max_output_tokens"] = check_max_output_tokens(
            obj["max_output_tokens"], "response.max_output_tokens"
        )
    if obj.get("tools") is not None:
        fields["tools"] = check_tools(obj["tools"], "response.tools")
    if obj.get("tool_choice") is not None:
        fields["tool_choice"] = check_tool_choice(obj["tool_choice"], "response.tool_choice")
    if obj.get("audio") is not None:
        audio = get_object(obj["audio"], "response.audio")
        check_keys(audio, ["output"], "response.audio")
        out = get_object(audio.get("output", {}), "response.audio.output")
        check_keys(out, ["format", "voice"], "response.audio.output")
        if "format" in out:
            fields["output_format"] = check_format(out["format"], "response.audio.output.format")
        if "voice" in out:
            fields["voice"] = get_str(out["voice"], "response.audio.output.voice", nonempty=True)
    if obj.get("input") is not None:
        fields["input"] = _parse_input(obj["input"], input_format, new_id)
    return ResponseParams(**fields)


def _check_metadata(value: Any, path: str) -> dict[str, str]:
    meta = get_object(value, path)
    if len(meta) > 16:
        raise InvalidRequest(
            f"Invalid '{path}': at most 16 key-value pairs, got {len(meta)}.",
            code="invalid_value",
            param=path,
        )
    for key, item in meta.items():
        if len(key) > 64:
            raise InvalidRequest(
                f"Invalid '{path}': key {show(key)} is longer than 64 characters.",
                code="invalid_value",
                param=path,
            )
        get_str(item, f"{path}.{key}")
    return dict(meta)


def _parse_input(
    value: Any, input_format: AudioFormat, new_id: Callable[[str], str]
) -> list[StoredItem | str]:
    if not isinstance(value, list):
        raise InvalidRequest(
            "Invalid type for 'response.input': expected an array.",
            code="invalid_type",
            param="response.input",
        )
    result: list[StoredItem | str] = []
    for i, entry in enumerate(value):
        path = f"response.input[{i}]"
        obj = get_object(entry, path)
        if obj.get("type") == "item_reference":
            check_keys(obj, ["type", "id"], path)
            result.append(get_str(require(obj, "id", path), f"{path}.id", nonempty=True))
        else:
            result.append(parse_item(obj, input_format=input_format, new_id=new_id, path=path))
    return result
