"""Server events on their way out of the engine: their ids, their order and their JSON text.

Every event gets an ``event_id`` when it is emitted and is kept as a dict, except
``response.output_audio.delta``. That one goes out for every 20 ms append in echo mode (and every
chunk of paced speech), so it is kept as its id, its part and its base64 audio, and serialised by
concatenation: :class:`AudioPart` renders the fields that are fixed for a content part once, with
``json.dumps``. The text is byte for byte what ``json.dumps`` makes of the event dict (default
separators; keys ``type, event_id, response_id, item_id, output_index, content_index, delta``):
event ids are ours (letters, digits and ``_``) and base64 needs no JSON escapes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

__all__ = ["AudioPart", "Outbox"]

AUDIO_DELTA: Final = "response.output_audio.delta"
_DELTA_HEAD: Final = '{"type": "' + AUDIO_DELTA + '", "event_id": "'


class AudioPart:
    """The fields every audio delta of one content part repeats, rendered once."""

    __slots__ = ("_tail", "ids")

    def __init__(
        self, response_id: str, item_id: str, output_index: int, content_index: int
    ) -> None:
        self.ids: dict[str, Any] = {
            "response_id": response_id,
            "item_id": item_id,
            "output_index": output_index,
            "content_index": content_index,
        }
        # '", "response_id": "resp_…", …, "content_index": 0, "delta": "'
        self._tail = '", ' + json.dumps(self.ids)[1:-1] + ', "delta": "'

    def delta_text(self, event_id: str, delta: str) -> str:
        return _DELTA_HEAD + event_id + self._tail + delta + '"}'

    def delta_event(self, event_id: str, delta: str) -> dict[str, Any]:
        return {"type": AUDIO_DELTA, "event_id": event_id, **self.ids, "delta": delta}


# A pending audio delta: (event_id, part, base64 audio).
_Delta = tuple[str, AudioPart, str]


class Outbox:
    """Emitted events, in order, until the adapter takes them as dicts or as JSON text."""

    def __init__(self, new_id: Callable[[str], str]) -> None:
        self._new_id = new_id
        self._pending: list[dict[str, Any] | _Delta] = []
        self.audio_sent = False  # any assistant audio yet (it fixes the voice, section 2.2)

    def emit(self, event: dict[str, Any]) -> None:
        """Queue ``event`` (``type`` first) with a new ``event_id`` after its type."""
        if event["type"] == AUDIO_DELTA:
            self.audio_sent = True
        self._pending.append({"type": event["type"], "event_id": self._new_id("event"), **event})

    def audio_delta(self, part: AudioPart, delta: str) -> None:
        """Queue ``response.output_audio.delta`` of ``part`` carrying ``delta`` (base64)."""
        self.audio_sent = True
        self._pending.append((self._new_id("event"), part, delta))

    def take_events(self) -> list[dict[str, Any]]:
        pending, self._pending = self._pending, []
        return [e if isinstance(e, dict) else e[1].delta_event(e[0], e[2]) for e in pending]

    def take_frames(self) -> list[str]:
        """The events as the JSON text frames to send, exactly ``json.dumps`` of each."""
        pending, self._pending = self._pending, []
        return [
            json.dumps(e) if isinstance(e, dict) else e[1].delta_text(e[0], e[2]) for e in pending
        ]
