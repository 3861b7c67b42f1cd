"""The session's local projection of the conversation, kept in the server's item order."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from services.realtime.items import (
    ContentPart,
    FunctionCallItem,
    FunctionCallOutputItem,
    MessageItem,
    PartType,
    RealtimeItem,
)


class History:
    def __init__(self) -> None:
        self.items: list[RealtimeItem] = []

    def __len__(self) -> int:
        return len(self.items)

    def get(self, item_id: str) -> RealtimeItem | None:
        return next((i for i in self.items if i.item_id == item_id), None)

    def _index(self, item_id: str) -> int | None:
        for n, item in enumerate(self.items):
            if item.item_id == item_id:
                return n
        return None

    def upsert(
        self,
        item: RealtimeItem,
        previous_item_id: str | None = None,
        *,
        authoritative: bool = False,
    ) -> bool:
        """Add or update ``item``; return True when it is new.

        An update from ``conversation.item.added/done`` may lack transcripts the history already
        has (transcription arrives separately), so those are kept unless ``authoritative`` (a
        retrieved item, e.g. after a truncation shortened its transcript).
        """
        at = self._index(item.item_id)
        if at is None:
            where = self._index(previous_item_id) if previous_item_id else None
            if previous_item_id == "root":
                self.items.insert(0, item)
            elif where is not None:
                self.items.insert(where + 1, item)
            else:
                self.items.append(item)
            return True
        old = self.items[at]
        if not authoritative:
            item = _keep_known(old, item)
        self.items[at] = item
        return False

    def delete(self, item_id: str) -> bool:
        at = self._index(item_id)
        if at is None:
            return False
        del self.items[at]
        return True

    def append_transcript(self, item_id: str, delta: str, *, text: bool = False) -> MessageItem:
        """Add model transcript (or text) to an assistant item, creating it if unseen yet."""
        item = self.get(item_id)
        if not isinstance(item, MessageItem):
            item = MessageItem(item_id, "assistant", [], status="in_progress")
            self.items.append(item)
        kind: PartType = "output_text" if text else "output_audio"
        part = next((p for p in item.content if p.type == kind), None)
        if part is None:
            part = ContentPart(kind, text="" if text else None, transcript=None if text else "")
            item.content.append(part)
        if text:
            part.text = (part.text or "") + delta
        else:
            part.transcript = (part.transcript or "") + delta
        return item

    def set_input_transcript(self, item_id: str, content_index: int, transcript: str) -> bool:
        item = self.get(item_id)
        if not isinstance(item, MessageItem):
            return False
        parts = [p for p in item.content if p.type == "input_audio"]
        if not parts:
            item.content.append(ContentPart("input_audio", transcript=transcript))
            return True
        part = item.content[content_index] if content_index < len(item.content) else parts[0]
        part.transcript = transcript
        return True

    def set_tool_output(self, call_id: str, output: str) -> FunctionCallItem | None:
        for n, item in enumerate(self.items):
            if isinstance(item, FunctionCallItem) and item.call_id == call_id:
                self.items[n] = dataclasses.replace(item, output=output, status="completed")
                return self.items[n]  # type: ignore[return-value]
        return None


def _keep_known(old: RealtimeItem, new: RealtimeItem) -> RealtimeItem:
    if isinstance(old, MessageItem) and isinstance(new, MessageItem):
        for n, part in enumerate(new.content):
            if n < len(old.content) and old.content[n].type == part.type:
                prev = old.content[n]
                if part.transcript is None and prev.transcript is not None:
                    part.transcript = prev.transcript
                if not part.text and prev.text:
                    part.text = prev.text
        if not new.content and old.content:
            new.content = old.content
    if isinstance(old, FunctionCallItem) and isinstance(new, FunctionCallItem) and old.output:
        return dataclasses.replace(new, output=old.output)
    return new


def replay_items(items: Sequence[RealtimeItem], limit: int) -> list[RealtimeItem]:
    """The conversation as items a new connection can be given (``conversation.item.create``),
    in order, for a session that lost its connection and opened another.

    Audio cannot be re-sent: a user turn is replayed as its transcript (``input_text``), an
    assistant turn as what it said (``output_text``, which is all a client may create for the
    assistant); a turn with no words yet is left out. Function calls keep their ids, and a call
    whose output is known only locally (the tool finished while the connection was down) gets
    its ``function_call_output``. Only the ``limit`` most recent items are kept, and an output
    whose call fell outside them is dropped with it (the server refuses an orphan output).
    """
    out: list[RealtimeItem] = []
    answered = {i.call_id for i in items if isinstance(i, FunctionCallOutputItem)}
    for item in items:
        if isinstance(item, MessageItem):
            text = item.text
            if not text.strip():
                continue
            kind: PartType = "output_text" if item.role == "assistant" else "input_text"
            out.append(MessageItem(item.item_id, item.role, [ContentPart(kind, text=text)]))
        elif isinstance(item, FunctionCallItem):
            out.append(dataclasses.replace(item, output=None))
            if item.output is not None and item.call_id not in answered:
                out.append(
                    FunctionCallOutputItem(f"out_{item.item_id}"[:32], item.call_id, item.output)
                )
        else:
            out.append(item)
    out = out[-limit:] if limit > 0 else []
    calls = {i.call_id for i in out if isinstance(i, FunctionCallItem)}
    return [i for i in out if not isinstance(i, FunctionCallOutputItem) or i.call_id in calls]
