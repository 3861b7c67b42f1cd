"""The agent's side of a call's transcript, as the caller heard it. Sans-I/O.

The model sends an item's transcript (``response.output_audio_transcript.done``) when it has
generated the audio, which is seconds before the caller has heard it: the model runs faster
than real time and the ingress plays the audio in real time. A caller who cuts in hears only part of
the item, and the model then forgets the rest (``conversation.item.truncate`` removes the
server's transcript: reference §5.2). A call log that wrote the text at once would say the
agent said what the caller never heard.

So a line is held until its item is settled, then released once:

* **heard out**: the model finished the item's audio and the ingress reported all of it
  played (within one frame): ``interrupted`` False;
* **cut**: the model confirmed a truncation (``conversation.item.truncated``) at
  ``heard_ms``: ``interrupted`` True, with what was heard (the words are not split, since the
  API gives no timings for them; ``heard_ms`` of ``audio_ms`` says how much was said);
* **no audio here**: an item with no audio through this session (the model plays it itself,
  as for browser calls straight to the model) is released with its text;
* **overdue**: the item's audio has had time to play out (its length since its first audio,
  plus ``OVERDUE_GRACE_S``) and no one said it was cut: released as heard. That covers an
  ingress that reports no playback, and a report lost with a moving call;
* **the call ended**: whatever is held is released as it stands.
"""

from __future__ import annotations

import dataclasses

# Playback is reported per frame (RTP, a WebRTC track) or per mark (Twilio): within one 20 ms
# frame of what was received is heard out.
HEARD_OUT_SLACK_MS = 20.0
# Items followed at once (a response has a few): past this, the oldest is forgotten.
MAX_ITEMS = 32
# Beyond an item's own length: the jitter buffers, the ingress's queue, a slow report.
OVERDUE_GRACE_S = 2.0


@dataclasses.dataclass(frozen=True, slots=True)
class Line:
    item_id: str
    text: str
    interrupted: bool
    heard_ms: int | None  # of the item's audio, when it was cut
    audio_ms: int


@dataclasses.dataclass(slots=True)
class _Item:
    text: str | None = None
    received_ms: float = 0.0
    played_ms: float = 0.0
    audio_done: bool = False
    cut_at: int | None = None
    started_at: float | None = None  # the item's first audio


class HeldTranscripts:
    def __init__(self, bytes_per_ms: float) -> None:
        self._bytes_per_ms = bytes_per_ms
        self._items: dict[str, _Item] = {}

    @property
    def held(self) -> int:
        return sum(1 for item in self._items.values() if item.text is not None)

    def audio(self, item_id: str, nbytes: int, now: float) -> None:
        item = self._item(item_id)
        if item.started_at is None:
            item.started_at = now
        item.received_ms += nbytes / self._bytes_per_ms

    def next_due(self) -> float | None:
        """When :meth:`overdue` would next release a held line (None: none is held)."""
        return min((self._due(i) for i in self._items.values() if i.text is not None), default=None)

    def overdue(self, now: float) -> list[Line]:
        """Held lines whose audio has had time to play out: taken as heard."""
        late = [k for k, i in self._items.items() if i.text is not None and self._due(i) <= now]
        return [self._line(k, self._items.pop(k)) for k in late]

    @staticmethod
    def _due(item: _Item) -> float:
        started = item.started_at if item.started_at is not None else 0.0
        return started + item.received_ms / 1000 + OVERDUE_GRACE_S

    def audio_done(self, item_id: str) -> list[Line]:
        self._item(item_id).audio_done = True
        return self._settle(item_id)

    def played(self, item_id: str, ms: float) -> list[Line]:
        item = self._items.get(item_id)
        if item is None:
            return []
        item.played_ms += ms
        return self._settle(item_id)

    def text(self, item_id: str, text: str) -> list[Line]:
        self._item(item_id).text = text
        return self._settle(item_id)

    def cut(self, item_id: str, heard_ms: int) -> list[Line]:
        item = self._items.get(item_id)
        if item is None:
            return []  # not ours (a user item), or long settled
        item.cut_at = heard_ms
        return self._settle(item_id)

    def flush(self) -> list[Line]:
        lines = [self._line(i, item) for i, item in self._items.items() if item.text is not None]
        self._items.clear()
        return lines

    def _item(self, item_id: str) -> _Item:
        item = self._items.get(item_id)
        if item is None:
            if len(self._items) >= MAX_ITEMS:  # audio whose transcript never came: forget it
                del self._items[next(iter(self._items))]
            item = self._items[item_id] = _Item()
        return item

    def _settle(self, item_id: str) -> list[Line]:
        item = self._items[item_id]
        if item.text is None:
            return []
        settled = (
            item.cut_at is not None
            or item.received_ms == 0
            or (item.audio_done and item.played_ms >= item.received_ms - HEARD_OUT_SLACK_MS)
        )
        if not settled:
            return []
        del self._items[item_id]
        return [self._line(item_id, item)]

    @staticmethod
    def _line(item_id: str, item: _Item) -> Line:
        assert item.text is not None
        return Line(
            item_id,
            item.text,
            interrupted=item.cut_at is not None,
            heard_ms=item.cut_at,
            audio_ms=round(item.received_ms),
        )
