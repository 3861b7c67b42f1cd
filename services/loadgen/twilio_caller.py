"""One simulated Twilio caller's media stream, sans-I/O: feed messages and ``now``, get messages.

:class:`TwilioCaller` behaves toward the ingress as Twilio does on a bidirectional stream
(reference/telephony.md §1): ``connected`` and ``start`` first, then one 20 ms ``media`` message
per tick (160 bytes of μ-law; ``chunk`` from 1, ``timestamp`` in ms since the start, both on the
20 ms grid), ``stop`` last; received audio plays in real time through a
:class:`~services.loadgen.playback.TwilioPlaybackBuffer`, which decides when marks are echoed.

The script of a call: the caller speaks first (``opening_ms`` of its voice, if any), then
listens (silence), and, if a barge-in is planned, speaks up again for ``barge_in_ms`` as soon
as model audio plays after ``barge_in_after_s``. After ``duration_s`` it stops sending and
drains: it keeps playing and answering until every frame is echoed (or excused by a clear) and
playback is idle, or ``drain_s`` has passed; then it sends ``stop``.

The driver calls :meth:`TwilioCaller.tick` at :attr:`TwilioCaller.next_tick_at` (late is fine:
due ticks are caught up, each frame keeping its grid timestamp, and the lateness is recorded as
the load generator's own overload) and :meth:`TwilioCaller.receive` for every message.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from typing import Final

from services.loadgen.audio import FRAME_BYTES, FRAME_MS, SILENCE
from services.loadgen.frame_tags import TAG_BYTES, TagScanner, tag_frame
from services.loadgen.measurements import BargeIn, CallStats, EchoLedger
from services.loadgen.playback import TwilioPlaybackBuffer
from services.loadgen.script import CallerScript
from services.loadgen.voice import Voice
from services.loadgen.wire import (
    PlayClear,
    PlayMark,
    PlayMedia,
    StreamIdentity,
    TwilioCallerCodec,
)

__all__ = ["CallerPhase", "TwilioCaller"]

_FRAME_S = FRAME_MS / 1000
_SILENT_FRAME = bytes([SILENCE]) * FRAME_BYTES


class CallerPhase(enum.Enum):
    CONNECTING = "connecting"
    STREAMING = "streaming"
    DRAINING = "draining"
    ENDED = "ended"


# Module-level aliases: reading an Enum member off its class takes ~60 ns in Python 3.11 (a
# global, ~1 ns), and the per-frame paths test the phase several times.
_CONNECTING: Final = CallerPhase.CONNECTING
_STREAMING: Final = CallerPhase.STREAMING
_DRAINING: Final = CallerPhase.DRAINING
_ENDED: Final = CallerPhase.ENDED


class TwilioCaller:
    def __init__(
        self, identity: StreamIdentity, script: CallerScript, parameters: Mapping[str, str]
    ) -> None:
        self.script = script
        self.codec = TwilioCallerCodec(identity)
        self.playback = TwilioPlaybackBuffer()
        self.stats = CallStats(echo=EchoLedger() if script.echo else None)
        if script.barge_in_after_s is not None:
            self.stats.barge_in = BargeIn(after_s=script.barge_in_after_s)
        self.phase = _CONNECTING
        self.ended_by: str | None = None  # "caller" after our stop, "ingress" if it hung up
        self._parameters = dict(parameters)
        self._scanner = TagScanner()
        self._attributed: int | None = None  # the frame whose echo the next byte belongs to
        self._started_at = 0.0
        self._tick = 0  # index of the next tick on the 20 ms grid
        self._drain_until = math.inf
        self._voice = Voice(script, self.stats)
        self._frames = script.frames  # computed, so read once

    # --- driver interface --------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.phase is _ENDED

    @property
    def next_tick_at(self) -> float:
        return self._started_at + self._tick * _FRAME_S

    def open(self, now: float) -> list[str]:
        """The WebSocket is open: Twilio's first two messages; the tick grid starts at ``now``."""
        if self.phase is not _CONNECTING:
            raise RuntimeError(f"open() while {self.phase.value}")
        self.phase = _STREAMING
        self._started_at = now
        return [self.codec.connected(), self.codec.start(self._parameters)]

    def tick(self, now: float) -> list[str]:
        """Everything due by ``now``: media frames, mark echoes, and ``stop`` at the end."""
        out: list[str] = []
        stats = self.stats
        while self.phase is not _ENDED and self.phase is not _CONNECTING:
            grid = self._started_at + self._tick * _FRAME_S  # next_tick_at
            if grid > now:
                break
            lag_ms = (now - grid) * 1000
            if lag_ms > stats.max_tick_lag_ms:
                stats.max_tick_lag_ms = lag_ms
            echoed = self.playback.tick()
            if echoed:
                out += self._echo_marks(echoed)
            if self.phase is _STREAMING:
                if self._tick < self._frames:
                    out.append(self._media_frame(self._tick, now))
                else:
                    self._stop_sending(grid, now)
            if self.phase is _DRAINING and self._drained(grid):
                out.append(self.codec.stop())
                self.phase = _ENDED
                self.ended_by = "caller"
            self._tick += 1
        return out

    def receive(self, message: str | bytes, now: float) -> list[str]:
        """One message from the ingress; returns what Twilio answers at once (mark echoes).

        Raises :class:`~services.errors.MediaStreamProtocolError` for a malformed message.
        """
        if self.phase is _CONNECTING or self.phase is _ENDED:
            return []
        event = self.codec.parse(message)
        if isinstance(event, PlayMedia):
            self._on_audio(event.payload, now)
            return []
        if isinstance(event, PlayMark):
            self.stats.marks_received += 1
            return self._echo_marks(self.playback.add_mark(event.name))
        if isinstance(event, PlayClear):
            return self._on_clear(now)
        self.stats.unknown_messages += 1
        return []

    def peer_closed(self) -> None:
        """The ingress closed the WebSocket (it hung up) before our ``stop``."""
        if not self.done:
            self.phase = _ENDED
            self.ended_by = "ingress"

    # --- sending -----------------------------------------------------------------------------

    def _stop_sending(self, grid: float, now: float) -> None:
        self.phase = _DRAINING
        self._drain_until = grid + self.script.drain_s
        barge = self.stats.barge_in
        if barge is not None and barge.started_at is not None and barge.ended_at is None:
            barge.ended_at = now  # the call's end cut the burst short

    def _media_frame(self, index: int, now: float) -> str:
        frame = (
            self._voice.frame()
            if self._voice.speaking(index, now, self.playback.is_playing)
            else _SILENT_FRAME
        )
        stats = self.stats
        if stats.echo is not None:
            frame = tag_frame(frame, index)
            stats.echo.on_sent(index, now)
        stats.frames_sent += 1
        return self.codec.media(chunk=index + 1, timestamp_ms=index * FRAME_MS, payload=frame)

    def _echo_marks(self, names: list[str]) -> list[str]:
        self.stats.marks_echoed += len(names)
        return [self.codec.mark(name) for name in names]

    def _drained(self, grid: float) -> bool:
        if grid >= self._drain_until:
            return True
        echo = self.stats.echo
        if echo is not None and echo.lost():
            return False
        return self.playback.pending_bytes == 0 and self.playback.pending_marks == 0

    # --- receiving ---------------------------------------------------------------------------

    def _on_audio(self, payload: bytes, now: float) -> None:
        stats = self.stats
        stats.media_received += 1
        stats.audio_bytes_received += len(payload)
        if stats.first_audio_at is None:
            stats.first_audio_at = now
        self.playback.add_audio(len(payload))
        echo = stats.echo
        if echo is None:
            self._count_stale_untagged(len(payload), now)
            return
        # Which frame each byte echoes matters only for stale audio, i.e. after a barge-in's
        # clear; before that, only the latest frame is kept.
        barge = stats.barge_in
        attribute = barge is not None and barge.cleared_at is not None
        position = 0
        for end, sequence in self._scanner.feed(payload):
            start = max(position, end - TAG_BYTES)  # the tag's own bytes belong to its frame
            if attribute:
                self._attribute(start - position)
            position = start
            self._attributed = sequence
            echo.on_echo(sequence, now)
        if attribute:
            self._attribute(len(payload) - position)

    def _count_stale_untagged(self, nbytes: int, now: float) -> None:
        """Without tags: audio between the barge-in's clear and the end of the caller's burst."""
        barge = self.stats.barge_in
        if barge is None or barge.cleared_at is None:
            return
        if barge.ended_at is None or now <= barge.ended_at:
            barge.stale_bytes += nbytes

    def _attribute(self, nbytes: int) -> None:
        """``nbytes`` of received audio carry the echo of frame ``self._attributed``."""
        barge = self.stats.barge_in
        if (
            nbytes > 0
            and barge is not None
            and barge.cleared_at is not None
            and barge.first_sequence is not None
            and self._attributed is not None
            and self._attributed < barge.first_sequence
        ):
            barge.stale_bytes += nbytes

    def _on_clear(self, now: float) -> list[str]:
        self.stats.clears_received += 1
        if self.stats.echo is not None:
            self.stats.echo.on_clear(now)
        barge = self.stats.barge_in
        if barge is not None and barge.started_at is not None and barge.cleared_at is None:
            barge.cleared_at = now
        return self._echo_marks(self.playback.clear())
