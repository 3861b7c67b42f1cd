"""What a caller hears of the model's audio: a paced outbound queue with playback accounting,
sans-I/O, shared by every ingress that owns its own playout clock (WebRTC, SIP/RTP).

Model audio is queued per item; the ingress's pacer takes one frame per tick of its own clock
(``frame_ms`` of audio, the codec's silence when nothing is queued). What has been handed to the
pacer is what the caller hears, a jitter buffer later, so playback accounting is exact to the
frame: :class:`~services.media.vocabulary.Played` increments at least every ``report_ms`` of an
item (and at its end), and a barge-in (:meth:`Playout.interrupt`) empties the queue in the same
tick and says how much of the item playing then was handed out; audio of a cut item that is
still on its way from the model is dropped when it comes. Nothing here reads a clock: time
advances one :meth:`Playout.next_frame` at a time.

The audio's framing is a :class:`FrameFormat`: 24 kHz PCM16 (``audio/pcm``, a WebRTC track's
input) by default, or G.711 passed through to RTP (``audio/pcmu``/``audio/pcma``: 8 kHz, one byte
a sample, 160 bytes per 20 ms, RFC 3551 §4.5.14), whose silence is a codec byte, not zero.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Final

from services.media.vocabulary import AudioFormatName, PlaybackCut, Played

# G.711's code for a zero sample (ITU-T G.711; reference/telephony.md §5.1): what a pacer sends
# when idle and what a jitter buffer fills a lost packet with. 0x00 would be a loud click.
ULAW_SILENCE: Final = 0xFF
ALAW_SILENCE: Final = 0xD5


@dataclasses.dataclass(frozen=True, slots=True)
class FrameFormat:
    """How an audio stream is cut into paced frames: ``rate`` samples a second of
    ``sample_bytes`` bytes each, ``frame_ms`` a frame, ``silence_byte`` repeated is silence."""

    name: AudioFormatName
    rate: int
    sample_bytes: int
    silence_byte: int
    frame_ms: int = 20

    @property
    def bytes_per_ms(self) -> int:
        return self.rate * self.sample_bytes // 1000

    @property
    def frame_bytes(self) -> int:
        return self.bytes_per_ms * self.frame_ms

    def silence(self, nbytes: int) -> bytes:
        return bytes((self.silence_byte,)) * nbytes


PCM24K: Final = FrameFormat("audio/pcm", 24_000, 2, 0x00)
PCMU: Final = FrameFormat("audio/pcmu", 8_000, 1, ULAW_SILENCE)
PCMA: Final = FrameFormat("audio/pcma", 8_000, 1, ALAW_SILENCE)
FRAME_FORMATS: Final[dict[AudioFormatName, FrameFormat]] = {f.name: f for f in (PCM24K, PCMU, PCMA)}


@dataclasses.dataclass(slots=True)
class _Item:
    item_id: str
    content_index: int
    queued: bytearray = dataclasses.field(default_factory=bytearray)
    done: bool = False  # the model finished the item's audio
    handed_bytes: int = 0
    reported_bytes: int = 0


class Playout:
    """One call's outbound queue; the contract is the module's docstring."""

    def __init__(self, fmt: FrameFormat = PCM24K, *, report_ms: int = 100) -> None:
        self.format = fmt
        self._items: deque[_Item] = deque()
        self._bytes_per_ms = fmt.bytes_per_ms
        self._frame_bytes = fmt.frame_bytes
        self._report_bytes = report_ms * fmt.bytes_per_ms
        self._silence = fmt.silence(fmt.frame_bytes)
        self.frames = 0
        self.silent_frames = 0
        # Items a barge-in cut: audio of theirs still in flight from the model must not play
        # (the model was told they were truncated; the Twilio path drops it the same way).
        # Item ids are unique in a conversation, so keeping them for the call is safe.
        self._cut: set[str] = set()
        self.dropped_bytes = 0

    @property
    def queued_ms(self) -> float:
        return sum(len(i.queued) for i in self._items) / self._bytes_per_ms

    @property
    def playing(self) -> bool:
        return any(i.queued for i in self._items)

    def push(self, item_id: str, content_index: int, audio: bytes) -> None:
        if item_id in self._cut:
            self.dropped_bytes += len(audio)
            return
        item = self._find(item_id, content_index)
        if item is None:
            item = _Item(item_id, content_index)
            self._items.append(item)
        item.queued += audio

    def done(self, item_id: str, content_index: int = 0) -> None:
        item = self._find(item_id, content_index)
        if item is not None:
            item.done = True

    def next_frame(self) -> tuple[bytes, list[Played]]:
        """The next frame for the pacer, and the playback to report now."""
        self.frames += 1
        played: list[Played] = []
        while self._items and not self._items[0].queued and self._items[0].done:
            self._report(self._items.popleft(), played)  # its end: the rest of its figure
        if not self._items or not self._items[0].queued:
            self.silent_frames += 1
            return self._silence, played
        size = self._frame_bytes
        head = self._items[0]
        take = bytes(head.queued[:size])
        del head.queued[:size]
        head.handed_bytes += len(take)
        if head.handed_bytes - head.reported_bytes >= self._report_bytes:
            self._report(head, played)
        if not head.queued and head.done:
            self._report(self._items.popleft(), played)
        if len(take) < size:
            take += self._silence[: size - len(take)]  # the model is behind: pad
        return take, played

    def interrupt(self) -> tuple[PlaybackCut, list[Played]]:
        """Barge-in: drop everything queued. Returns what the caller had heard of each item
        still in the queue (for the truncation) and the playback not yet reported."""
        played: list[Played] = []
        heard: list[tuple[str, int, int]] = []
        for item in self._items:
            if item.handed_bytes:
                ms = item.handed_bytes // self._bytes_per_ms
                heard.append((item.item_id, item.content_index, ms))
                self._report(item, played)
            if not item.done:  # more of it may be on its way
                self._cut.add(item.item_id)
        self._items.clear()
        return PlaybackCut(tuple(heard)), played

    def _find(self, item_id: str, content_index: int) -> _Item | None:
        for item in reversed(self._items):  # the newest item is the likely one
            if item.item_id == item_id and item.content_index == content_index:
                return item
        return None

    def _report(self, item: _Item, played: list[Played]) -> None:
        delta = item.handed_bytes - item.reported_bytes
        if delta > 0:
            played.append(Played(item.item_id, item.content_index, delta / self._bytes_per_ms))
            item.reported_bytes = item.handed_bytes
