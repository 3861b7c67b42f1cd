"""Conversation items as the local history sees them, converted from and to the wire shapes.

The GA item union (reference §3, "Item shapes"): ``message`` (system/user/assistant, with
``input_text``/``input_audio``/``output_text``/``output_audio`` parts), ``function_call`` and
``function_call_output``. Audio bytes are never kept in history, only transcripts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from services.errors import RealtimeProtocolError
from services.realtime.wire import JSON

PartType = Literal["input_text", "input_audio", "output_text", "output_audio"]


@dataclasses.dataclass(slots=True)
class ContentPart:
    type: PartType
    text: str | None = None
    transcript: str | None = None

    def to_wire(self) -> JSON:
        out: JSON = {"type": self.type}
        if self.type in ("input_text", "output_text"):
            out["text"] = self.text or ""
        elif self.transcript is not None:
            out["transcript"] = self.transcript
        return out


@dataclasses.dataclass(slots=True)
class MessageItem:
    item_id: str
    role: Literal["system", "user", "assistant"]
    content: list[ContentPart]
    status: str = "completed"
    type: Literal["message"] = "message"

    @property
    def text(self) -> str:
        """All text and transcripts of the item, in order."""
        return "".join((p.text or p.transcript or "") for p in self.content)

    def to_wire(self) -> JSON:
        return {
            "type": "message",
            "id": self.item_id,
            "role": self.role,
            "content": [p.to_wire() for p in self.content],
        }


@dataclasses.dataclass(slots=True)
class FunctionCallItem:
    item_id: str
    name: str
    call_id: str
    arguments: str
    output: str | None = None
    status: str = "in_progress"
    type: Literal["function_call"] = "function_call"

    def to_wire(self) -> JSON:
        return {
            "type": "function_call",
            "id": self.item_id,
            "name": self.name,
            "call_id": self.call_id,
            "arguments": self.arguments,
        }


@dataclasses.dataclass(slots=True)
class FunctionCallOutputItem:
    item_id: str
    call_id: str
    output: str
    type: Literal["function_call_output"] = "function_call_output"

    def to_wire(self) -> JSON:
        return {
            "type": "function_call_output",
            "id": self.item_id,
            "call_id": self.call_id,
            "output": self.output,
        }


RealtimeItem = MessageItem | FunctionCallItem | FunctionCallOutputItem
_ROLES = ("system", "user", "assistant")
_PART_TYPES = ("input_text", "input_audio", "output_text", "output_audio", "text", "audio")


def _str(data: JSON, key: str, default: str = "") -> str:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise RealtimeProtocolError(f"item field {key!r} must be a string", field=f"item.{key}")
    return value


def item_from_wire(data: Any) -> RealtimeItem | None:
    """Convert a wire item; ``None`` for item types history does not track (MCP items)."""
    if not isinstance(data, dict):
        raise RealtimeProtocolError("item must be a JSON object", field="item")
    kind = data.get("type")
    item_id = _str(data, "id")
    if kind == "message":
        role = data.get("role")
        if role not in _ROLES:
            raise RealtimeProtocolError(
                f"message item has invalid role {role!r}", field="item.role"
            )
        parts = []
        for raw in data.get("content") or []:
            if not isinstance(raw, dict) or raw.get("type") not in _PART_TYPES:
                continue
            ptype = raw["type"]
            # Beta-era names "text"/"audio" still appear on content parts of assistant items.
            if ptype == "text":
                ptype = "output_text"
            elif ptype == "audio":
                ptype = "output_audio"
            parts.append(
                ContentPart(
                    type=ptype,
                    text=raw.get("text") if isinstance(raw.get("text"), str) else None,
                    transcript=raw.get("transcript")
                    if isinstance(raw.get("transcript"), str)
                    else None,
                )
            )
        return MessageItem(item_id, role, parts, status=_str(data, "status", "completed"))
    if kind == "function_call":
        return FunctionCallItem(
            item_id,
            name=_str(data, "name"),
            call_id=_str(data, "call_id"),
            arguments=_str(data, "arguments"),
            status=_str(data, "status", "in_progress"),
        )
    if kind == "function_call_output":
        return FunctionCallOutputItem(
            item_id, call_id=_str(data, "call_id"), output=_str(data, "output")
        )
    return None
