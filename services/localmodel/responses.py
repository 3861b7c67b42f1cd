"""One model response: its event sequence, its pacing, and how it ends.

Event order (reference/realtime-protocol.md, sections 4.3 and 5.1), for an audio message::

    response.created → response.output_item.added → conversation.item.added
    → response.content_part.added → N x (response.output_audio.delta
      + response.output_audio_transcript.delta) → response.output_audio.done
    → response.output_audio_transcript.done → response.content_part.done
    → response.output_item.done → conversation.item.done → response.done

A text message uses ``response.output_text.delta/done`` and a ``text`` part; a function call sends
``response.function_call_arguments.delta/done`` between the item events. An out-of-band response
(``conversation: "none"``) sends no ``conversation.item.*`` events.

Pacing: audio goes out in ``chunk_ms`` deltas, delta k at ``start + k * chunk_ms / speed``, so the
stream runs ``speed`` times faster than real time, as the real API runs faster than real time.
Text deltas (one per word) use the same interval. The transcript is cut across the audio deltas in
proportion to the audio sent, so a truncated item's transcript matches what was heard.

Cancelling ends the open item as ``incomplete`` with the audio and transcript sent so far, then
sends ``response.done`` with ``status: "cancelled"`` (reason ``turn_detected`` or
``client_cancelled``).
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from .audio import AudioFormat
from .conversation import Conversation, StoredItem
from .outbox import AudioPart, Outbox
from .usage import response_usage, text_tokens

__all__ = ["Response", "ResponseSetup"]

MAX_ECHO_ITEM_MS: Final = 10 * 60 * 1000
CancelReason = Literal["turn_detected", "client_cancelled"]


@dataclass(frozen=True)
class ResponseSetup:
    """Everything fixed when a response starts (session settings merged with the overrides)."""

    id: str
    conversation: Conversation | None  # None: out-of-band, nothing is written to a conversation
    modality: Literal["audio", "text"]
    output_format: AudioFormat
    voice: str
    max_output_tokens: int | str
    metadata: dict[str, str] | None
    chunk_ms: int
    speed: float
    context_tokens: tuple[int, int]  # (text, audio) tokens the response reads


def _b64(data: bytes | bytearray) -> str:
    return base64.b64encode(data).decode("ascii")


class Response:
    """A response with one output item; :meth:`advance` emits whatever is due at ``now``."""

    def __init__(
        self, setup: ResponseSetup, out: Outbox, now: float, new_id: Callable[[str], str]
    ) -> None:
        self.setup = setup
        self.id = setup.id
        self._emit = out.emit
        self._emit_audio = out.audio_delta
        self._audio_part: AudioPart | None = None  # the delta fields of the current item
        self._new_id = new_id
        self.status = "in_progress"
        self._status_details: dict[str, Any] | None = None
        self._items: list[StoredItem] = []
        self._item: StoredItem | None = None  # the item being produced
        self._text = ""  # full planned text (transcript for audio)
        self._audio: bytes | bytearray | None = None  # full planned audio, output format
        self._words: list[str] = []
        self._sent_bytes = 0
        self._sent_chars = 0
        self._sent_words = 0
        self._stream_start = now
        self._open_ended = False  # echo: audio is pushed until finish()
        self._emit({"type": "response.created", "response": self.wire()})

    # ----- what the response produces -----------------------------------------------------

    def start_message(self, text: str, audio: bytes | None = None) -> None:
        """Speak (or write) ``text``; ``audio`` may come later through :meth:`provide_audio`."""
        self._text = text
        self._words = re.findall(r"\S+\s*", text)
        # The event's part and the item's content name the same thing differently (section 11).
        part: dict[str, Any]
        if self.setup.modality == "audio":
            part, content = {"type": "audio", "transcript": ""}, {"type": "output_audio"}
            content["transcript"] = ""
        else:
            part, content = {"type": "text", "text": ""}, {"type": "output_text", "text": ""}
        self._begin_item(
            {"type": "message", "role": "assistant", "status": "in_progress", "content": []}
        )
        self._current().item["content"].append(content)
        self._emit({"type": "response.content_part.added", **self._part_ids(), "part": part})
        if audio is not None:
            self.provide_audio(audio, self._stream_start)

    def start_echo(self) -> None:
        """An open audio message whose audio arrives through :meth:`push_audio`."""
        self._open_ended = True
        self.start_message("")
        self._audio = bytearray()

    @property
    def waiting_for_audio(self) -> bool:
        return (
            self.status == "in_progress"
            and self.setup.modality == "audio"
            and self._item is not None
            and self._audio is None
        )

    @property
    def text(self) -> str:
        return self._text

    def provide_audio(self, audio: bytes, now: float) -> None:
        self._audio = audio
        self._stream_start = now

    def push_audio(self, data: bytes) -> None:
        """Echo: send ``data`` at once as the next audio delta."""
        if not data or self.status != "in_progress":
            return
        assert isinstance(self._audio, bytearray)
        if self.setup.output_format.duration_ms(len(self._audio)) < MAX_ECHO_ITEM_MS:
            self._audio += data  # kept for retrieve/truncate, up to a bound (a call may be long)
        self._send_audio(data)

    def start_function_call(self, name: str, arguments: str, call_id: str) -> None:
        """A complete function call: every event is sent now, then ``response.done``."""
        item = self._begin_item(
            {
                "type": "function_call",
                "status": "in_progress",
                "name": name,
                "call_id": call_id,
                "arguments": "",
            }
        )
        ids = {"response_id": self.id, "item_id": item.id, "output_index": self._index()}
        half = max(1, len(arguments) // 2)
        for piece in (arguments[:half], arguments[half:]):
            if piece:
                self._emit(
                    {
                        "type": "response.function_call_arguments.delta",
                        **ids,
                        "call_id": call_id,
                        "delta": piece,
                    }
                )
        self._emit(
            {
                "type": "response.function_call_arguments.done",
                **ids,
                "call_id": call_id,
                "name": name,
                "arguments": arguments,
            }
        )
        item.item["arguments"] = arguments
        self._end_item("completed")
        self._finish("completed", None)

    # ----- time ---------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.status != "in_progress"

    def _interval(self) -> float:
        return self.setup.chunk_ms / 1000 / self.setup.speed

    def _chunk_bytes(self) -> int:
        return self.setup.output_format.bytes_for_ms(self.setup.chunk_ms)

    def next_deadline(self) -> float | None:
        if self.done or self._item is None or self._open_ended:
            return None
        if self.setup.modality == "audio":
            if self._audio is None:
                return None
            sent_chunks = math.ceil(self._sent_bytes / self._chunk_bytes())
        else:
            sent_chunks = self._sent_words
        return self._stream_start + sent_chunks * self._interval()

    def advance(self, now: float) -> None:
        """Send every delta due by ``now``; finish the response after the last one."""
        deadline = self.next_deadline()
        while deadline is not None and deadline <= now:
            if self.setup.modality == "audio":
                assert self._audio is not None
                chunk = self._audio[self._sent_bytes : self._sent_bytes + self._chunk_bytes()]
                if chunk:
                    self._send_audio(chunk)
                if self._sent_bytes >= len(self._audio):
                    self.finish()
            elif self._sent_words < len(self._words):
                word = self._words[self._sent_words]
                self._sent_words += 1
                self._sent_chars += len(word)
                self._emit(
                    {"type": "response.output_text.delta", **self._part_ids(), "delta": word}
                )
            else:
                self.finish()
            deadline = self.next_deadline()

    # ----- ending -------------------------------------------------------------------------

    def finish(self) -> None:
        """Complete normally (echo: on commit, clear or speech stopped)."""
        if self.done:
            return
        self._close_message()
        self._end_item("completed")
        self._finish("completed", None)

    def cancel(self, reason: CancelReason) -> None:
        if self.done:
            return
        if self._item is not None:
            self._close_message()
            self._end_item("incomplete")
        self._finish("cancelled", {"type": "cancelled", "reason": reason})

    # ----- helpers ------------------------------------------------------------------------

    def _current(self) -> StoredItem:
        assert self._item is not None
        return self._item

    def _index(self) -> int:
        return len(self._items) - 1

    def _part_ids(self) -> dict[str, Any]:
        return {
            "response_id": self.id,
            "item_id": self._current().id,
            "output_index": self._index(),
            "content_index": 0,
        }

    def _send_audio(self, chunk: bytes | bytearray) -> None:
        self._sent_bytes += len(chunk)
        part = self._audio_part
        if part is None:
            part = self._audio_part = AudioPart(**self._part_ids())
        self._emit_audio(part, _b64(chunk))
        if self._open_ended or self._audio is None:
            return  # an echo has no transcript
        ids = self._part_ids()
        # The transcript keeps pace with the audio, so a cut item's text matches what was heard.
        target = round(len(self._text) * self._sent_bytes / max(1, len(self._audio)))
        if target > self._sent_chars:
            delta = self._text[self._sent_chars : target]
            self._sent_chars = target
            self._emit({"type": "response.output_audio_transcript.delta", **ids, "delta": delta})

    def _begin_item(self, fields: dict[str, Any]) -> StoredItem:
        item = StoredItem({"id": self._new_id("item"), "object": "realtime.item", **fields})
        self._items.append(item)
        self._item = item
        self._audio_part = None
        self._emit(
            {
                "type": "response.output_item.added",
                "response_id": self.id,
                "output_index": self._index(),
                "item": item.wire(),
            }
        )
        conversation = self.setup.conversation
        if conversation is not None:
            previous = conversation.add(item)
            self._emit(
                {
                    "type": "conversation.item.added",
                    "previous_item_id": previous,
                    "item": item.wire(),
                }
            )
        return item

    def _close_message(self) -> None:
        """The part's closing events, with what was actually sent."""
        item = self._current()
        if item.item["type"] != "message":
            return
        ids = self._part_ids()
        sent = self._text[: self._sent_chars]
        if self.setup.modality == "audio":
            item.audio[0] = bytes((self._audio or b"")[: self._sent_bytes])
            item.formats[0] = self.setup.output_format
            item.item["content"][0]["transcript"] = sent
            self._emit({"type": "response.output_audio.done", **ids})
            self._emit({"type": "response.output_audio_transcript.done", **ids, "transcript": sent})
            part: dict[str, Any] = {"type": "audio", "transcript": sent}
        else:
            item.item["content"][0]["text"] = sent
            self._emit({"type": "response.output_text.done", **ids, "text": sent})
            part = {"type": "text", "text": sent}
        self._emit({"type": "response.content_part.done", **ids, "part": part})

    def _end_item(self, status: str) -> None:
        item = self._current()
        item.item["status"] = status
        self._emit(
            {
                "type": "response.output_item.done",
                "response_id": self.id,
                "output_index": self._index(),
                "item": item.wire(),
            }
        )
        conversation = self.setup.conversation
        if conversation is not None and item.id in conversation:
            previous = _previous_id(conversation, item.id)
            self._emit(
                {
                    "type": "conversation.item.done",
                    "previous_item_id": previous,
                    "item": item.wire(),
                }
            )
        self._item = None

    def _finish(self, status: str, details: dict[str, Any] | None) -> None:
        self.status = status
        self._status_details = details
        self._emit({"type": "response.done", "response": self.wire()})

    def usage(self) -> dict[str, Any]:
        calls = [i.item for i in self._items if i.item["type"] == "function_call"]
        out_text = text_tokens(self._text[: self._sent_chars]) + sum(
            text_tokens(call["name"] + call["arguments"]) for call in calls
        )
        audio_ms = self.setup.output_format.duration_ms(self._sent_bytes)
        return response_usage(*self.setup.context_tokens, out_text, audio_ms)

    def wire(self) -> dict[str, Any]:
        """The ``RealtimeResponse`` object of ``response.created``/``response.done``."""
        setup = self.setup
        conversation = setup.conversation
        return {
            "object": "realtime.response",
            "id": self.id,
            "status": self.status,
            "status_details": self._status_details,
            "output": [item.wire() for item in self._items] if self.done else [],
            "conversation_id": None if conversation is None else conversation.id,
            "output_modalities": [setup.modality],
            "max_output_tokens": setup.max_output_tokens,
            "audio": {"output": {"format": setup.output_format.to_wire(), "voice": setup.voice}},
            "usage": self.usage() if self.done else None,
            "metadata": setup.metadata,
        }


def _previous_id(conversation: Conversation, item_id: str) -> str | None:
    previous = None
    for item in conversation:
        if item.id == item_id:
            return previous
        previous = item.id
    return None
