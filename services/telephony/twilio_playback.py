"""What the caller of one Twilio call has heard of the model's audio, from Twilio ``mark`` echoes.

Sans-I/O (STYLE.md, practice 1): the ingress feeds model audio, mark echoes and barge-ins in, and
gets back what to send to Twilio, :class:`~services.media.vocabulary.Played` increments for the
session, and the truncations for ``conversation.item.truncate``. Nothing here reads a clock; time
advances only when Twilio says audio has played.

This ports the playback bookkeeping of the OpenAI Agents JS Twilio transport (AJS
``TwilioRealtimeTransport.ts``; telephony.md §2.1-§2.2, realtime-protocol.md §5.2 and §9.4), not
Pipecat's wall-clock estimate, which overshoots whenever Twilio has buffered seconds of audio
(telephony.md §2.5). Twilio plays ``media`` in the order received and echoes a ``mark`` once the
audio queued before it has finished playing, or at once when a ``clear`` drops it (telephony.md
§1.3). A mark sent after every media message therefore acknowledges playback up to that point.

Two differences from AJS, both deliberate:

* AJS sends each model delta as one media message with a mark. We send the whole 20 ms frames
  (160 bytes of 8 kHz μ-law) of a delta in media messages of at most ``chunk_ms`` each, and a
  mark after a message once at least ``mark_ms`` of the item's audio went out unmarked (and
  after a held-back tail, where the item's audio pauses), so acknowledged playback has
  ``mark_ms`` resolution whatever the delta size. Every mark is a message each way (ours, then
  Twilio's echo): 20 ms frames with a mark each made 150 messages per second per call on the
  caller leg. The sub-frame tail waits for the item's next audio or its ``audio_done``.
* AJS tells stale marks apart by remembering every name pending at a ``clear``. Our names carry the
  generation, so a mark from an older generation is recognised by its name alone.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Final, Literal

from services.media.vocabulary import Played

__all__ = [
    "BYTES_PER_MS",
    "FRAME_BYTES",
    "TRUNCATE_SLACK_MS",
    "Interruption",
    "ItemPlayback",
    "MarkOutcome",
    "MarkResult",
    "Outbound",
    "SendMark",
    "SendMedia",
    "Truncation",
    "TwilioPlayback",
]

BYTES_PER_MS: Final = 8
"""μ-law at 8 kHz is one byte per sample (AJS ``TWILIO_MULAW_BYTES_PER_MILLISECOND``)."""
FRAME_MS: Final = 20
FRAME_BYTES: Final = FRAME_MS * BYTES_PER_MS
TRUNCATE_SLACK_MS: Final = 50
"""Added to the acknowledged time at a barge-in (AJS ``#createTruncationSnapshots``).

A mark comes back only after the *whole* frame before it has played and the echo has crossed the
network, so when the caller starts speaking they have already heard part of the audio after the
last echoed mark: the acknowledged figure lags by up to one frame plus the echo's transit. AJS
covers that lag with a fixed 50 ms (the reference gives no derivation; this is our reading). It is
capped at what was sent, because the server rejects an ``audio_end_ms`` beyond the audio it
produced (realtime-protocol.md §5.2)."""

# "<item>:<sentMs>:g<gen>:m<seq>" or "done:<item>:g<gen>:m<seq>" (AJS ``#createMarkName``). Only
# the generation is read back; the mark's meaning comes from our own record of what we sent.
# Digits are bounded so a hostile name cannot make int() raise (Python caps int parsing at 4300).
_MARK_SUFFIX: Final = re.compile(r".+:g(?P<gen>[0-9]{1,18}):m[0-9]{1,18}")


# ----- what goes to Twilio ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class SendMedia:
    """A Twilio ``media`` message: raw μ-law, no header (the transport base64-encodes it)."""

    payload: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class SendMark:
    """A Twilio ``mark`` message; Twilio echoes ``name`` when the audio before it has played."""

    name: str


Outbound = SendMedia | SendMark


# ----- results ---------------------------------------------------------------------------------

MarkOutcome = Literal["played", "done", "stale", "unknown", "malformed"]
"""``played``: an audio mark of the current generation; ``done``: the item finished playing;
``stale``: a mark from before the last clear (played *or* dropped, we cannot tell, so ignored);
``unknown``: well-formed but not a mark we are waiting for; ``malformed``: not one of our names."""


@dataclasses.dataclass(frozen=True, slots=True)
class MarkResult:
    outcome: MarkOutcome
    played: Played | None = None
    """How much more of the item the caller heard; None when playback did not advance."""
    item_id: str | None = None
    content_index: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Truncation:
    """One ``conversation.item.truncate``: the caller heard ``audio_end_ms`` of this content."""

    item_id: str
    content_index: int
    audio_end_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class Interruption:
    truncations: tuple[Truncation, ...]
    clear: bool
    """Twilio may still hold audio of ours: send ``{"event": "clear"}`` now."""


@dataclasses.dataclass(frozen=True, slots=True)
class ItemPlayback:
    """A snapshot of one item's playback, for tests and metrics."""

    item_id: str
    content_index: int
    sent_ms: float
    played_ms: float
    buffered_bytes: int
    done_sent: bool


# ----- internal state --------------------------------------------------------------------------

_Key = tuple[str, int]


@dataclasses.dataclass(slots=True, eq=False)
class _Item:
    """One (item, content_index) whose audio is playing or queued (AJS ``TwilioPlaybackItem``).

    Counted in bytes, not ms, so sums stay exact; ms = bytes / 8."""

    item_id: str
    content_index: int
    sent_bytes: int = 0
    marked_bytes: int = 0
    played_bytes: int = 0
    remainder: bytearray = dataclasses.field(default_factory=bytearray)
    done_sent: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class _PendingMark:
    item: _Item
    end_bytes: int
    kind: Literal["audio", "done"]


class TwilioPlayback:
    """Playback tracker for one Twilio media stream. Not thread-safe; one owner per call."""

    def __init__(
        self,
        *,
        truncate_slack_ms: float = TRUNCATE_SLACK_MS,
        chunk_ms: int = FRAME_MS,
        mark_ms: int = FRAME_MS,
    ) -> None:
        for name, value in (("chunk_ms", chunk_ms), ("mark_ms", mark_ms)):
            if value < FRAME_MS or value % FRAME_MS:
                raise ValueError(f"{name} must be a positive multiple of {FRAME_MS}, got {value}")
        self._slack_ms = truncate_slack_ms
        self._chunk_bytes = chunk_ms * BYTES_PER_MS
        self._mark_bytes = mark_ms * BYTES_PER_MS
        self._generation = 1
        self._sequence = 0
        self._items: dict[_Key, _Item] = {}  # insertion order = Twilio's playback order
        self._pending: dict[str, _PendingMark] = {}
        # Items cut off by a barge-in. Their late deltas must not reach the caller (AJS keeps
        # discarded response ids for the same reason). Item ids are unique for the conversation,
        # so keeping them for the call is safe; it grows by a few ids per barge-in.
        self._discarded: set[str] = set()
        self._dropped_bytes = 0

    # ----- model → Twilio ------------------------------------------------------------------------

    def on_model_audio(self, item_id: str, content_index: int, audio: bytes) -> list[Outbound]:
        """Frame one model audio delta for Twilio; audio of an interrupted item is dropped."""
        if item_id in self._discarded:
            self._dropped_bytes += len(audio)
            return []
        key = (item_id, content_index)
        out: list[Outbound] = []
        # Twilio plays in arrival order, so another item's held-back tail must go out before this
        # audio or the caller would hear it late.
        for other_key, other in self._items.items():
            if other_key != key and other.remainder:
                self._flush(other, out)
        item = self._items.get(key)
        if item is None:
            item = self._items[key] = _Item(item_id, content_index)
        item.remainder += audio
        whole = len(item.remainder) - len(item.remainder) % FRAME_BYTES
        chunk = self._chunk_bytes
        for start in range(0, whole, chunk):
            self._send(item, bytes(item.remainder[start : min(start + chunk, whole)]), out)
        del item.remainder[:whole]
        return out

    def on_audio_done(self, item_id: str, content_index: int = 0) -> list[Outbound]:
        """``response.output_audio.done``: send the held-back tail, then a ``done`` mark."""
        item = self._items.get((item_id, content_index))
        if item is None or item.done_sent:
            # No audio was ever sent for it (or it was interrupted): nothing to complete (AJS).
            return []
        out: list[Outbound] = []
        self._flush(item, out)
        item.done_sent = True
        out.append(self._mark(item, "done"))
        return out

    def _flush(self, item: _Item, out: list[Outbound]) -> None:
        if item.remainder:
            # The item's audio pauses here (another item starts, or it is done): mark it.
            self._send(item, bytes(item.remainder), out, mark=True)
            item.remainder.clear()

    def _send(self, item: _Item, payload: bytes, out: list[Outbound], mark: bool = False) -> None:
        item.sent_bytes += len(payload)
        out.append(SendMedia(payload))
        if mark or item.sent_bytes - item.marked_bytes >= self._mark_bytes:
            item.marked_bytes = item.sent_bytes
            out.append(self._mark(item, "audio"))

    def _mark(self, item: _Item, kind: Literal["audio", "done"]) -> SendMark:
        self._sequence += 1
        suffix = f"g{self._generation}:m{self._sequence}"
        if kind == "done":
            name = f"done:{item.item_id}:{suffix}"
        else:
            name = f"{item.item_id}:{item.sent_bytes // BYTES_PER_MS}:{suffix}"
        self._pending[name] = _PendingMark(item, item.sent_bytes, kind)
        return SendMark(name)

    # ----- Twilio → us ---------------------------------------------------------------------------

    def on_mark(self, name: object) -> MarkResult:
        """A Twilio ``mark`` echo (AJS ``#handleTwilioMark``).

        ``name`` is typed ``object`` because it comes straight off the wire (a missing or non-string
        ``mark.name`` is possible); anything that is not one of our names is reported, never raised.
        """
        if not isinstance(name, str) or (match := _MARK_SUFFIX.fullmatch(name)) is None:
            return MarkResult("malformed")
        if int(match["gen"]) < self._generation:
            # Sent before the last clear. Twilio echoes dropped marks too, so this says nothing
            # about what the caller heard (telephony.md §1.3).
            return MarkResult("stale")
        mark = self._pending.pop(name, None)
        if mark is None:
            return MarkResult("unknown")
        item = mark.item
        if self._items.get((item.item_id, item.content_index)) is not item:
            return MarkResult("unknown")  # its item already completed; nothing left to update
        played = self._advance(item, mark.end_bytes)
        if mark.kind == "audio":
            return MarkResult("played", played, item.item_id, item.content_index)
        del self._items[(item.item_id, item.content_index)]
        return MarkResult("done", played, item.item_id, item.content_index)

    def _advance(self, item: _Item, end_bytes: int) -> Played | None:
        # played = max(played, mark end) (AJS): echoes arrive in send order on one TCP stream, but
        # a regression must never produce a negative increment.
        if end_bytes <= item.played_bytes:
            return None
        delta = end_bytes - item.played_bytes
        item.played_bytes = end_bytes
        return Played(item.item_id, item.content_index, delta / BYTES_PER_MS)

    # ----- barge-in ------------------------------------------------------------------------------

    def interrupt(self) -> Interruption:
        """Snapshot truncations, start a new mark generation and drop everything queued.

        AJS ``#createTruncationSnapshots``: the first outstanding item is the one the caller is
        hearing now, even if no mark has come back yet, so it gets ``played + slack``; a later item
        with nothing acknowledged is still queued behind it and the caller heard none of it.
        """
        if not self._items:
            return Interruption((), clear=False)
        truncations: list[Truncation] = []
        for index, item in enumerate(self._items.values()):
            sent_ms = item.sent_bytes / BYTES_PER_MS
            played_ms = item.played_bytes / BYTES_PER_MS
            end = min(sent_ms, played_ms + self._slack_ms) if index == 0 or played_ms > 0 else 0
            truncations.append(
                Truncation(item.item_id, item.content_index, max(0, math.floor(end)))
            )
            self._discarded.add(item.item_id)
        # Twilio echoes every pending mark when it clears; the new generation makes them stale.
        self._generation += 1
        self._items.clear()
        self._pending.clear()
        return Interruption(tuple(truncations), clear=True)

    # ----- queries -------------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def dropped_bytes(self) -> int:
        """Audio of interrupted items discarded after the barge-in."""
        return self._dropped_bytes

    def playing(self) -> bool:
        """Whether the caller is hearing, or is about to hear, model audio."""
        return any(
            item.sent_bytes > item.played_bytes or item.remainder for item in self._items.values()
        )

    def queued_ms(self) -> float:
        """Audio sent to Twilio that Twilio has not yet acknowledged as played."""
        unacked = sum(item.sent_bytes - item.played_bytes for item in self._items.values())
        return unacked / BYTES_PER_MS

    def buffered_bytes(self) -> int:
        """Sub-frame tails held back here, not yet sent to Twilio."""
        return sum(len(item.remainder) for item in self._items.values())

    def pending_marks(self) -> int:
        return len(self._pending)

    def item(self, item_id: str, content_index: int = 0) -> ItemPlayback | None:
        item = self._items.get((item_id, content_index))
        if item is None:
            return None
        return ItemPlayback(
            item.item_id,
            item.content_index,
            item.sent_bytes / BYTES_PER_MS,
            item.played_bytes / BYTES_PER_MS,
            len(item.remainder),
            item.done_sent,
        )
