"""One simulated SIP caller's media, sans-I/O: RTP datagrams and ``now`` in, datagrams out.

:class:`RtpCaller` plays the same :class:`~services.loadgen.script.CallerScript` as the
Twilio caller, over RTP instead of a media stream (RFC 3550; PCMU, RFC 3551 §4.5.14): one
160-byte μ-law packet every 20 ms on its own grid, its voice for the opening and a barge-in and
silence otherwise; in echo mode every frame carries its sequence tag (:mod:`.frame_tags`), and
the tags found in what comes back feed the same :class:`~.measurements.EchoLedger`, so the
report's numbers (:mod:`.report`) mean what they mean for Twilio.

What differs from a media stream, and how it is read:

* The ingress sends a packet every 20 ms whether the agent talks or not (codec silence when
  idle), and the caller hears each as it arrives: a packet of pure μ-law silence (``0xFF``) is
  *idle*, any other is model audio and is counted and played (the Twilio playback buffer's
  byte model, ticked with our grid, says whether audio is playing for a barge-in).
* RTP has no ``clear``: on a barge-in the ingress's pacer drops its queue and the caller
  hears the agent stop. So the cut is inferred, as the first packet after the barge-in's first
  speech frame that breaks what was playing. In echo mode that is exact: the first packet that
  does not carry the next frame's tag (an idle one, or one whose tag skips frames), confirmed
  when a later tag skips frames; an idle packet followed by the next frame after all was a
  pacer tick that ran before the echo arrived. With a talking model (no tags) it is the first
  of :data:`CUT_RUN` idle packets in a row (the local model's tone speech has 40 ms gaps). The
  cut counts as the ``clear`` of the measurements. :attr:`RtpCaller.heard_before_cut_ms` is
  the model audio received by then from its first packet (what a truncation of the first
  response should say): in echo mode the tagged packets; without tags the span from the first
  to the last model-audio packet, since a talking model's speech has silent stretches (exact
  while the model sends ahead of real time, as the local model does, so that the pacer never
  runs dry inside a response).
* Stale audio is wider than for Twilio: in echo mode, audio after the cut that carries any
  frame sent before the caller's speech burst *ended*. The interrupted response went on
  echoing the caller's speech; callray must not play it (the model was told the item was cut),
  so over SIP that audio counts too. Without tags it is, as for Twilio, model audio after the
  cut while the caller still speaks.
* No marks: RTP acknowledges nothing (played audio is what the pacer sent).

After ``duration_s`` the caller stops sending and drains (every frame echoed or excused by a
cut, or ``drain_s`` passed), then :attr:`done`: the driver sends BYE. The ingress's BYE
first is :meth:`RtpCaller.peer_hung_up`.
"""

from __future__ import annotations

import math
from typing import Final

from services.errors import RtpError
from services.loadgen.audio import FRAME_BYTES, FRAME_MS, SILENCE
from services.loadgen.frame_tags import TAG_BYTES, TagScanner, tag_frame
from services.loadgen.measurements import BargeIn, CallStats, EchoLedger
from services.loadgen.playback import BYTES_PER_MS, TwilioPlaybackBuffer
from services.loadgen.script import CallerScript
from services.loadgen.twilio_caller import CallerPhase
from services.loadgen.voice import Voice
from services.telephony.rtp import RtpPacket, RtpSender

__all__ = ["CUT_RUN", "RtpCaller"]

#: Idle packets in a row that mean the agent's audio was cut (see the module docstring).
CUT_RUN: Final = 3
PCMU: Final = 0  # RFC 3551 §6

_FRAME_S = FRAME_MS / 1000
_IDLE = bytes([SILENCE]) * FRAME_BYTES
_CONNECTING: Final = CallerPhase.CONNECTING
_STREAMING: Final = CallerPhase.STREAMING
_DRAINING: Final = CallerPhase.DRAINING
_ENDED: Final = CallerPhase.ENDED


class RtpCaller:
    def __init__(self, script: CallerScript, *, sender: RtpSender | None = None) -> None:
        self.script = script
        self.sender = sender or RtpSender(PCMU)
        self.playback = TwilioPlaybackBuffer()
        self.stats = CallStats(echo=EchoLedger() if script.echo else None)
        if script.barge_in_after_s is not None:
            self.stats.barge_in = BargeIn(after_s=script.barge_in_after_s)
        self.phase = _CONNECTING
        self.ended_by: str | None = None  # "caller" when done on its own, "ingress" on its BYE
        self.close_reason: str | None = None
        self.idle_received = 0
        # Idle packets between model audio while we stream: with an echoing model each is a
        # pacer tick the echo missed, which delays the rest of the call by a frame (the queue
        # then drains no faster than it fills).
        self.underruns = 0
        self.bad_packets = 0  # unparseable, or not PCMU
        self._scanner = TagScanner()
        self._attributed: int | None = None  # the frame whose echo the next byte belongs to
        self._idle_run = 0
        self._idle_since = 0.0
        self._next_sequence = 0  # the tag that would continue what is playing
        self._break_at: float | None = None  # the first packet that did not continue it
        self.heard_before_cut_ms: float | None = None
        self._packets = 0  # received from the ingress
        self._first_audio_packet: int | None = None
        self._last_audio_packet = 0
        self._started_at = 0.0
        self._tick = 0
        self._drain_until = math.inf
        self._voice = Voice(script, self.stats)
        self._frames = script.frames

    # --- driver interface --------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.phase is _ENDED

    @property
    def next_tick_at(self) -> float:
        return self._started_at + self._tick * _FRAME_S

    def open(self, now: float) -> None:
        """The call is up: the 20 ms grid starts at ``now``."""
        if self.phase is not _CONNECTING:
            raise RuntimeError(f"open() while {self.phase.value}")
        self.phase = _STREAMING
        self._started_at = now

    def tick(self, now: float) -> list[bytes]:
        """The RTP datagrams due by ``now`` (late ticks catch up on the grid; the lateness is the
        load generator's own, in ``stats.max_tick_lag_ms``)."""
        out: list[bytes] = []
        stats = self.stats
        while self.phase is _STREAMING or self.phase is _DRAINING:
            grid = self._started_at + self._tick * _FRAME_S
            if grid > now:
                break
            lag_ms = (now - grid) * 1000
            if lag_ms > stats.max_tick_lag_ms:
                stats.max_tick_lag_ms = lag_ms
            self.playback.tick()
            if self.phase is _STREAMING:
                if self._tick < self._frames:
                    out.append(self._packet(self._tick, now))
                else:
                    self._stop_sending(grid, now)
            if self.phase is _DRAINING and self._drained(grid):
                self._end_cut(now)
                self.phase = _ENDED
                self.ended_by = "caller"
            self._tick += 1
        return out

    def receive(self, datagram: bytes, now: float) -> None:
        """One datagram from the ingress's RTP port."""
        if self.phase is _CONNECTING or self.phase is _ENDED:
            return
        try:
            packet = RtpPacket.parse(datagram)
        except RtpError:
            self.bad_packets += 1
            return
        if packet.payload_type != PCMU:
            self.bad_packets += 1
            return
        payload = packet.payload
        self._packets += 1
        if payload == _IDLE:
            self._on_idle(now)
        else:
            self._idle_run = 0
            self._on_audio(payload, now)

    def peer_hung_up(self, reason: str | None) -> None:
        """The ingress sent BYE before we were done."""
        if not self.done:
            self.phase = _ENDED
            self.ended_by = "ingress"
            self.close_reason = reason

    # --- sending -----------------------------------------------------------------------------

    def _stop_sending(self, grid: float, now: float) -> None:
        self.phase = _DRAINING
        self._drain_until = grid + self.script.drain_s
        barge = self.stats.barge_in
        if barge is not None and barge.started_at is not None and barge.ended_at is None:
            barge.ended_at = now

    def _packet(self, index: int, now: float) -> bytes:
        frame = (
            self._voice.frame()
            if self._voice.speaking(index, now, self.playback.is_playing)
            else _IDLE
        )
        stats = self.stats
        if stats.echo is not None:
            frame = tag_frame(frame, index)
            stats.echo.on_sent(index, now)
        stats.frames_sent += 1
        return self.sender.packet(frame)

    def _drained(self, grid: float) -> bool:
        if grid >= self._drain_until:
            return True
        echo = self.stats.echo
        if echo is not None and echo.lost():
            return False
        return self.playback.pending_bytes == 0

    # --- receiving ---------------------------------------------------------------------------

    def _on_idle(self, now: float) -> None:
        self.idle_received += 1
        if self.phase is _STREAMING and self.stats.first_audio_at is not None:
            self.underruns += 1
        if self._break_at is None:
            self._break_at = now
        if self._idle_run == 0:
            self._idle_since = now
        self._idle_run += 1
        if self._idle_run == CUT_RUN and self.stats.echo is None:
            self._maybe_cut(self._idle_since)

    def _end_cut(self, now: float) -> None:
        """The call ends with audio broken off and frames never echoed: that was the cut, if
        any (idle after the last frame came back is just the end of the call)."""
        echo = self.stats.echo
        if echo is not None and self._break_at is not None:
            if self._next_sequence < echo.sent:
                self._maybe_cut(self._break_at)
        elif self.stats.echo is None and self._idle_run:
            self._maybe_cut(self._idle_since)

    def _on_tag(self, sequence: int, now: float) -> None:
        expected = self._next_sequence
        if sequence == expected:
            self._break_at = None  # what looked like a break was a late echo
        elif sequence > expected:
            self._maybe_cut(now if self._break_at is None else self._break_at)
            self._break_at = None
        self._next_sequence = max(expected, sequence + 1)

    def _maybe_cut(self, at: float) -> None:
        barge = self.stats.barge_in
        if barge is None or barge.started_at is None or barge.cleared_at is not None:
            return
        # Audio plays when a barge-in starts, so a break under way then began at most a
        # packet or two before it: the cut is not earlier than the speech.
        at = max(at, barge.started_at)
        barge.cleared_at = at
        if self.stats.echo is not None:  # every packet of the echo carries a tag: exact
            self.heard_before_cut_ms = self.stats.audio_bytes_received / BYTES_PER_MS
        elif self._first_audio_packet is not None:  # silent stretches of the speech count too
            span = self._last_audio_packet - self._first_audio_packet + 1
            self.heard_before_cut_ms = span * FRAME_MS
        self.stats.clears_received += 1
        if self.stats.echo is not None:
            self.stats.echo.on_clear(at)

    def _on_audio(self, payload: bytes, now: float) -> None:
        stats = self.stats
        stats.media_received += 1
        if stats.first_audio_at is None:
            stats.first_audio_at = now
            self._first_audio_packet = self._packets
        self._last_audio_packet = self._packets
        self.playback.add_audio(len(payload))
        echo = stats.echo
        if echo is None:
            stats.audio_bytes_received += len(payload)
            barge = stats.barge_in  # without tags, as for Twilio: audio before the burst ends
            if barge is not None and barge.cleared_at is not None:
                if barge.ended_at is None or now <= barge.ended_at:
                    barge.stale_bytes += len(payload)
            return
        position = 0
        for end, sequence in self._scanner.feed(payload):
            start = max(position, end - TAG_BYTES)  # the tag's own bytes belong to its frame
            self._attribute(start - position)
            position = start
            self._on_tag(sequence, now)  # before this packet counts: it may be the first cut
            self._attributed = sequence
            echo.on_echo(sequence, now)
        self._attribute(len(payload) - position)
        stats.audio_bytes_received += len(payload)

    def _attribute(self, nbytes: int) -> None:
        """``nbytes`` of audio carry the echo of frame ``self._attributed``: stale if they came
        after the cut and that frame was sent before the barge-in's burst ended."""
        barge = self.stats.barge_in
        if (
            nbytes > 0
            and barge is not None
            and barge.cleared_at is not None
            and self._attributed is not None
            and self._attributed < self._voice.burst_end
        ):
            barge.stale_bytes += nbytes
