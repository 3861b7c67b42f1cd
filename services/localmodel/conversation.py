"""Conversation items: validating the ones clients create, and the ordered store of one session.

Items are kept in their wire shape (``openai.types.realtime.ConversationItem``) minus audio bytes,
which live beside them: ``conversation.item.added``/``.done`` never carry audio, while
``conversation.item.retrieved`` does (reference/realtime-protocol.md, sections 3 and 4.1).
"""

from __future__ import annotations

import base64
import binascii
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from .audio import AudioFormat
from .validation import (
    InvalidRequest,
    check_keys,
    get_choice,
    get_object,
    get_str,
    require,
    type_error,
)

__all__ = ["Conversation", "StoredItem", "decode_base64_audio", "parse_item"]

_PART_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "input_text": ("type", "text"),
    "input_audio": ("type", "audio", "transcript"),
    "input_image": ("type", "image_url", "detail"),
    "output_text": ("type", "text"),
}
_ROLE_PARTS: Final[dict[str, tuple[str, ...]]] = {
    "system": ("input_text",),
    "user": ("input_text", "input_audio", "input_image"),
    "assistant": ("output_text",),  # output_audio cannot be created by a client (section 3)
}
_COMMON_KEYS: Final = ("id", "type", "object", "status")
MAX_AUDIO_MS: Final = 10 * 60 * 1000


@dataclass
class StoredItem:
    """An item as the conversation holds it; ``audio`` maps a content index to its bytes."""

    item: dict[str, Any]
    audio: dict[int, bytes] = field(default_factory=dict)
    formats: dict[int, AudioFormat] = field(default_factory=dict)

    @classmethod
    def user_audio(cls, item_id: str, audio: bytes, fmt: AudioFormat) -> StoredItem:
        """The user message a committed input audio buffer becomes (no transcript yet)."""
        item = {
            "id": item_id,
            "type": "message",
            "object": "realtime.item",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        return cls(item, audio={0: audio}, formats={0: fmt})

    @property
    def id(self) -> str:
        return str(self.item["id"])

    def wire(self) -> dict[str, Any]:
        return copy.deepcopy(self.item)

    def wire_with_audio(self) -> dict[str, Any]:
        item = self.wire()
        for index, data in self.audio.items():
            item["content"][index]["audio"] = base64.b64encode(data).decode("ascii")
        return item


def decode_base64_audio(value: Any, path: str) -> bytes:
    text = get_str(value, path)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(
            f"Invalid '{path}': expected base64-encoded audio bytes.",
            code="invalid_value",
            param=path,
        ) from exc


def parse_item(
    value: Any, *, input_format: AudioFormat, new_id: Callable[[str], str], path: str = "item"
) -> StoredItem:
    """Validate an item from ``conversation.item.create`` and complete it (id, object, status)."""
    obj = get_object(value, path)
    kind = get_choice(
        require(obj, "type", path),
        f"{path}.type",
        ["message", "function_call", "function_call_output"],
    )
    item_id = get_str(obj["id"], f"{path}.id", nonempty=True) if "id" in obj else new_id("item")
    if "object" in obj:
        get_choice(obj["object"], f"{path}.object", ["realtime.item"])
    status = "completed"
    if "status" in obj:
        status = get_choice(
            obj["status"], f"{path}.status", ["completed", "incomplete", "in_progress"]
        )
    head: dict[str, Any] = {
        "id": item_id,
        "type": kind,
        "object": "realtime.item",
        "status": status,
    }
    if kind == "function_call":
        check_keys(obj, (*_COMMON_KEYS, "name", "arguments", "call_id"), path)
        call_id = obj.get("call_id")
        return StoredItem(
            {
                **head,
                "name": get_str(require(obj, "name", path), f"{path}.name", nonempty=True),
                "call_id": new_id("call")
                if call_id is None
                else get_str(call_id, f"{path}.call_id"),
                "arguments": get_str(require(obj, "arguments", path), f"{path}.arguments"),
            }
        )
    if kind == "function_call_output":
        check_keys(obj, (*_COMMON_KEYS, "call_id", "output"), path)
        return StoredItem(
            {
                **head,
                "call_id": get_str(require(obj, "call_id", path), f"{path}.call_id", nonempty=True),
                "output": get_str(require(obj, "output", path), f"{path}.output"),
            }
        )
    check_keys(obj, (*_COMMON_KEYS, "role", "content"), path)
    role = get_choice(require(obj, "role", path), f"{path}.role", list(_ROLE_PARTS))
    content = require(obj, "content", path)
    if not isinstance(content, list):
        raise type_error(f"{path}.content", "an array", content)
    stored = StoredItem({**head, "role": role, "content": []})
    for i, raw in enumerate(content):
        stored.item["content"].append(_parse_part(raw, role, f"{path}.content[{i}]", i, stored))
        if i in stored.audio:
            stored.formats[i] = input_format
    return stored


def _parse_part(raw: Any, role: str, path: str, index: int, stored: StoredItem) -> dict[str, Any]:
    part = get_object(raw, path)
    kind = require(part, "type", path)
    if role == "assistant" and kind == "output_audio":
        raise InvalidRequest(
            "Assistant audio content cannot be created by the client; use 'output_text'.",
            code="invalid_value",
            param=f"{path}.type",
        )
    kind = get_choice(kind, f"{path}.type", _ROLE_PARTS[role])
    check_keys(part, _PART_KEYS[kind], path)
    if kind in ("input_text", "output_text"):
        return {"type": kind, "text": get_str(require(part, "text", path), f"{path}.text")}
    if kind == "input_image":
        url = get_str(require(part, "image_url", path), f"{path}.image_url", nonempty=True)
        detail = get_choice(part.get("detail", "auto"), f"{path}.detail", ["auto", "low", "high"])
        return {"type": kind, "image_url": url, "detail": detail}
    stored.audio[index] = decode_base64_audio(require(part, "audio", path), f"{path}.audio")
    transcript = part.get("transcript")
    if transcript is not None:
        get_str(transcript, f"{path}.transcript")
    return {"type": kind, "transcript": transcript}


def item_not_found(item_id: str, action: str) -> InvalidRequest:
    return InvalidRequest(
        f"Error {action} item: the item with id '{item_id}' does not exist.",
        code="item_not_found",
        param="item_id",
    )


class Conversation:
    """The default conversation of one session: items in order, addressable by id.

    Only the most recent ``MAX_AUDIO_MS`` of item audio is kept (newest items first): older
    items keep their transcripts but lose their audio bytes, so a long call (or a load test of
    hundreds) has bounded memory. Truncating such an old item fails as if it had no audio.
    """

    def __init__(self, conversation_id: str) -> None:
        self.id = conversation_id
        self._order: list[str] = []
        self._items: dict[str, StoredItem] = {}

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def __iter__(self) -> Iterator[StoredItem]:
        return (self._items[i] for i in self._order)

    def __len__(self) -> int:
        return len(self._order)

    @property
    def last_id(self) -> str | None:
        return self._order[-1] if self._order else None

    def get(self, item_id: str, action: str = "retrieving") -> StoredItem:
        if item_id not in self._items:
            raise item_not_found(item_id, action)
        return self._items[item_id]

    def add(self, stored: StoredItem, previous_item_id: str | None = None) -> str | None:
        """Insert after ``previous_item_id`` (``None`` = at the end, ``"root"`` = at the start).

        Returns the id of the item now before it, for the ``previous_item_id`` of the events.
        """
        if stored.id in self._items:
            raise InvalidRequest(
                f"Item with id '{stored.id}' already exists.", code="invalid_value", param="item.id"
            )
        if previous_item_id is None:
            position = len(self._order)
        elif previous_item_id == "root":
            position = 0
        elif previous_item_id in self._items:
            position = self._order.index(previous_item_id) + 1
        else:
            raise InvalidRequest(
                f"Previous item with id '{previous_item_id}' does not exist.",
                code="item_not_found",
                param="previous_item_id",
            )
        self._order.insert(position, stored.id)
        self._items[stored.id] = stored
        self._forget_old_audio()
        return self._order[position - 1] if position else None

    def _forget_old_audio(self) -> None:
        kept_ms = 0.0
        for item_id in reversed(self._order):
            stored = self._items[item_id]
            for index, data in list(stored.audio.items()):
                kept_ms += stored.formats[index].duration_ms(len(data))
                if kept_ms > MAX_AUDIO_MS:
                    del stored.audio[index], stored.formats[index]

    def delete(self, item_id: str) -> None:
        self.get(item_id, "deleting")
        self._order.remove(item_id)
        del self._items[item_id]

    def truncate(self, item_id: str, content_index: int, audio_end_ms: int) -> None:
        """Cut an assistant item's audio at ``audio_end_ms`` and its transcript in proportion,
        so the model's context matches what the caller heard (section 5.2)."""
        stored = self.get(item_id, "truncating")
        item = stored.item
        if item["type"] != "message" or item["role"] != "assistant":
            raise InvalidRequest(
                "Only assistant messages can be truncated.", code="invalid_value", param="item_id"
            )
        if content_index not in stored.audio:
            raise InvalidRequest(
                f"Content index {content_index} of item '{item_id}' has no audio.",
                code="invalid_value",
                param="content_index",
            )
        if item["status"] == "in_progress":
            raise InvalidRequest(
                "The item is still being generated; cancel the response before truncating it.",
                code="invalid_value",
                param="item_id",
            )
        audio, fmt = stored.audio[content_index], stored.formats[content_index]
        duration = fmt.duration_ms(len(audio))
        if audio_end_ms > duration:
            raise InvalidRequest(
                f"Audio content of {int(duration)}ms is already shorter than {audio_end_ms}ms",
                code="invalid_value",
                param="audio_end_ms",
            )
        stored.audio[content_index] = audio[: fmt.bytes_for_ms(audio_end_ms)]
        part = item["content"][content_index]
        transcript = part.get("transcript") or ""
        keep = int(len(transcript) * audio_end_ms / duration) if duration else 0
        part["transcript"] = transcript[:keep]
