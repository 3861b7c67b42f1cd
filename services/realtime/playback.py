"""Where playback of model audio is, so an interruption truncates exactly what was heard.

The server produces audio faster than real time and cannot know what the listener heard, so on a
barge-in the client sends ``conversation.item.truncate`` with the milliseconds actually played
(reference §5.2). Two sources for that figure:

* :class:`PlaybackTracker`: the application reports played audio (a sound card callback, Twilio
  ``mark`` echoes, RTP packets sent). This is exact; use it whenever playback is observable.
* :class:`WallClockPlayback`: the fallback of both Agents SDKs, assuming playback began at the
  first audio delta of the item and runs at real time.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Protocol


@dataclasses.dataclass(frozen=True, slots=True)
class PlaybackState:
    item_id: str
    content_index: int
    played_ms: float


class PlaybackSource(Protocol):
    def on_audio_received(self, item_id: str, content_index: int, ms: float) -> None: ...

    def state(self) -> PlaybackState | None: ...

    def reset(self) -> None: ...


class PlaybackTracker:
    """Playback reported by the application: call :meth:`on_play_ms` or :meth:`on_play_bytes`."""

    def __init__(self, bytes_per_ms: float = 48.0) -> None:
        self.bytes_per_ms = bytes_per_ms
        self._item: tuple[str, int] | None = None
        self._played_ms = 0.0

    def on_play_ms(self, item_id: str, content_index: int, ms: float) -> None:
        if self._item != (item_id, content_index):
            self._item = (item_id, content_index)
            self._played_ms = 0.0
        self._played_ms += ms

    def on_play_bytes(self, item_id: str, content_index: int, nbytes: int) -> None:
        self.on_play_ms(item_id, content_index, nbytes / self.bytes_per_ms)

    def on_audio_received(self, item_id: str, content_index: int, ms: float) -> None:
        # What was received says nothing about what was heard; nothing to do.
        return None

    def state(self) -> PlaybackState | None:
        if self._item is None:
            return None
        return PlaybackState(self._item[0], self._item[1], self._played_ms)

    def reset(self) -> None:
        self._item = None
        self._played_ms = 0.0


class WallClockPlayback:
    """Assumes playback of an item started at its first delta and runs in real time."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._item: tuple[str, int] | None = None
        self._started_at = 0.0

    def on_audio_received(self, item_id: str, content_index: int, ms: float) -> None:
        if self._item != (item_id, content_index):
            self._item = (item_id, content_index)
            self._started_at = self._clock()

    def state(self) -> PlaybackState | None:
        if self._item is None:
            return None
        return PlaybackState(
            self._item[0], self._item[1], (self._clock() - self._started_at) * 1000.0
        )

    def reset(self) -> None:
        self._item = None
