"""What a browser caller hears of the model's audio: the paced outbound track's queue, sans-I/O.

Model audio (24 kHz PCM16, ``audio/pcm``) is queued per item; the track takes one 20 ms frame
per tick of its own clock (:mod:`.track`), silence when nothing is queued. What has been handed
to the track is what the caller hears, a jitter buffer later, so playback accounting is exact to
the frame: :class:`~services.media.vocabulary.Played` increments at least every ``report_ms``
of an item (and at its end), and a barge-in (:meth:`Playout.interrupt`) empties the queue in
the same tick and says how much of the item playing then was handed out. Nothing here reads a
clock: time advances one :meth:`Playout.next_frame` at a time.
"""

from __future__ import annotations

import dataclasses
from collections import deque

from services.media.vocabulary import PlaybackCut, Played

RATE = 24_000
FRAME_MS = 20
BYTES_PER_MS = RATE * 2 // 1000
FRAME_BYTES = FRAME_MS * BYTES_PER_MS


@dataclasses.dataclass(slots=True)
class _Item:
    item_id: str
    content_index: int
    queued: bytearray = dataclasses.field(default_factory=bytearray)
    done: bool = False  # the model finished the item's audio
    handed_bytes: int = 0
    reported_bytes: int = 0


class Playout:
    def __init__(self, *, report_ms: int = 100) -> None:
        self._items: deque[_Item] = deque()
        self._report_bytes = report_ms * BYTES_PER_MS
        self._silence = bytes(FRAME_BYTES)
        self.frames = 0
        self.silent_frames = 0

    @property
    def queued_ms(self) -> float:
        return sum(len(i.queued) for i in self._items) / BYTES_PER_MS

    @property
    def playing(self) -> bool:
        return any(i.queued for i in self._items)

    def push(self, item_id: str, content_index: int, pcm: bytes) -> None:
        item = self._find(item_id, content_index)
        if item is None:
            item = _Item(item_id, content_index)
            self._items.append(item)
        item.queued += pcm

    def done(self, item_id: str, content_index: int = 0) -> None:
        item = self._find(item_id, content_index)
        if item is not None:
            item.done = True

    def next_frame(self) -> tuple[bytes, list[Played]]:
        """The next 20 ms for the track, and the playback to report now."""
        self.frames += 1
        played: list[Played] = []
        while self._items and not self._items[0].queued and self._items[0].done:
            self._report(self._items.popleft(), played)  # its end: the rest of its figure
        if not self._items or not self._items[0].queued:
            self.silent_frames += 1
            return self._silence, played
        head = self._items[0]
        take = bytes(head.queued[:FRAME_BYTES])
        del head.queued[:FRAME_BYTES]
        head.handed_bytes += len(take)
        if head.handed_bytes - head.reported_bytes >= self._report_bytes:
            self._report(head, played)
        if not head.queued and head.done:
            self._report(self._items.popleft(), played)
        if len(take) < FRAME_BYTES:
            take += self._silence[: FRAME_BYTES - len(take)]  # the model is behind: pad
        return take, played

    def interrupt(self) -> tuple[PlaybackCut, list[Played]]:
        """Barge-in: drop everything queued. Returns what the caller had heard of each item
        still in the queue (for the truncation) and the playback not yet reported."""
        played: list[Played] = []
        heard: list[tuple[str, int, int]] = []
        for item in self._items:
            if item.handed_bytes:
                heard.append((item.item_id, item.content_index, item.handed_bytes // BYTES_PER_MS))
                self._report(item, played)
        self._items.clear()
        return PlaybackCut(tuple(heard)), played

    def _find(self, item_id: str, content_index: int) -> _Item | None:
        for item in reversed(self._items):  # the newest item is the likely one
            if item.item_id == item_id and item.content_index == content_index:
                return item
        return None

    @staticmethod
    def _report(item: _Item, played: list[Played]) -> None:
        delta = item.handed_bytes - item.reported_bytes
        if delta > 0:
            played.append(Played(item.item_id, item.content_index, delta / BYTES_PER_MS))
            item.reported_bytes = item.handed_bytes
