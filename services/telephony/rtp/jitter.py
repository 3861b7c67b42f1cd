"""The receive jitter buffer for a SIP caller's G.711 audio, sans-I/O: packets in, audio bytes out.

Design: push-only, zero added delay when nothing is lost or reordered. :meth:`JitterBuffer.push`
returns at once the audio that became playable: a packet that is next in sequence is released on
arrival (with any later ones it completes); one that arrives early is held until the packets
before it arrive. A missing packet is given up for lost when ``window`` packets after it are
held and one more arrives, or when the oldest held packet has waited ``window + 1`` packet
times (the stream paused: the adapter calls :meth:`expire` at :attr:`deadline`); then its time
is filled with the codec's silence and the held packets go out. So the buffer never holds more
than ``window`` packets (60 ms at 20 ms ptime), a packet overtaken by up to ``window`` later ones
is still played, and delay is added only behind a hole, only until it is given up. This beats a
pull buffer with a fixed prefetch here: the audio goes to a model, not a sound card, so there is
no playout clock to smooth for, and every millisecond held is a millisecond of reply latency.

Positions are RTP sequence numbers (RFC 3550 §5.1), unwrapped across 65535 → 0. Durations come
from timestamps, never from an assumed ptime, so 20 ms/160-byte and 30 ms/240-byte packets
(sipp's ``g711a.pcap``) both work: before each packet's payload goes the silence for the gap
between where the previous one ended and where it starts (a lost packet's time, or an RFC 4733
event's that replaced the audio). Packets of another payload type in the same stream
(telephone-event, comfort noise) take their sequence position, so they are not waited for as
losses, but play nothing; the adapter hands them to their own receiver.

Resynchronisation (start over from a packet, nothing filled before it; counted in ``resyncs``):

* ``ssrc``: a new synchronisation source (RFC 3550 §8: the peer restarted, moved or swapped media);
  what was held of the old one is flushed first, and its stragglers are dropped as late;
* ``marker``: the first packet of a talkspurt (RFC 3551 §4.1); the sender sent nothing during
  the silence before it, which is not ours to fill;
* ``ts_jump``: a timestamp gap over ``max_fill_ms`` or backwards: not a loss, a sender that
  jumped; seconds of filled silence would only hand the model a burst of nothing;
* ``seq_jump``: a sequence number more than ``MAX_DROPOUT`` ahead or ``MAX_MISORDER`` behind
  (RFC 3550 Appendix A.1's bounds): the sender restarted its numbering.

Drops (``drops``, the metric's reasons): ``duplicate`` (a position already held or played) and
``late`` (a position already given up for lost). :attr:`depth` is the packets held now.
"""

from __future__ import annotations

from typing import Final

from services.errors import UserError
from services.media.playout import PCMU, FrameFormat
from services.telephony.rtp.packet import RtpPacket

__all__ = ["MAX_DROPOUT", "MAX_MISORDER", "JitterBuffer"]

# RFC 3550 Appendix A.1: a jump further than these is a restart, not loss or reordering.
MAX_DROPOUT: Final = 3000
MAX_MISORDER: Final = 100

_SEQ_MASK: Final = 0xFFFF
_TS_MASK: Final = 0xFFFF_FFFF
_TS_HALF: Final = 1 << 31


class JitterBuffer:
    """One RTP stream's receive buffer; the contract is the module's docstring."""

    def __init__(
        self,
        payload_type: int,
        fmt: FrameFormat = PCMU,
        *,
        window: int = 3,
        max_fill_ms: float = 200.0,
    ) -> None:
        if window < 1:
            raise UserError(f"a jitter buffer's window is at least 1 packet, not {window}")
        self.payload_type = payload_type
        self.format = fmt
        self.window = window
        self._silence = bytes((fmt.silence_byte,))
        self._sample_bytes = fmt.sample_bytes
        self._clock_rate = fmt.rate  # G.711's RTP clock is its sample rate (RFC 3551 §4.5.14)
        self._max_fill = int(max_fill_ms * fmt.rate / 1000)  # in timestamp units
        self._ssrc: int | None = None
        self._next = 0  # extended sequence number of the next position to release
        self._next_ts: int | None = None  # where the next audio starts; None: take the packet's
        self._held: dict[int, tuple[RtpPacket | None, float]] = {}  # position → (audio, arrival)
        self._lost: set[int] = set()  # positions given up, to tell late from duplicate
        self._old_ssrc: int | None = None
        self._old_until = 0.0
        self._frame_s = 0.02  # the last packet's duration: the time rule's unit
        self.drops = {"duplicate": 0, "late": 0}
        self.resyncs = {"ssrc": 0, "marker": 0, "ts_jump": 0, "seq_jump": 0}
        self.filled_bytes = 0  # silence put in for lost or replaced audio

    @property
    def depth(self) -> int:
        return len(self._held)

    @property
    def deadline(self) -> float | None:
        """When :meth:`expire` would give up a missing packet (None: nothing is held)."""
        if not self._held:
            return None
        return min(arrival for _, arrival in self._held.values()) + self._max_wait

    @property
    def _max_wait(self) -> float:
        return (self.window + 1) * self._frame_s

    def push(self, packet: RtpPacket, now: float) -> bytes:
        """Take one packet of the stream (any payload type); the audio now playable, in order."""
        if packet.ssrc == self._ssrc and not self._held:
            if packet.sequence == self._next & _SEQ_MASK:  # the fast path: next, nothing held
                self._next += 1
                return self._play(packet) if packet.payload_type == self.payload_type else b""
        out: list[bytes] = []
        if packet.ssrc != self._ssrc:
            if packet.ssrc == self._old_ssrc and now < self._old_until:
                self.drops["late"] += 1
                return b""
            if self._ssrc is not None:
                self.resyncs["ssrc"] += 1
                out += self._flush()
                self._old_ssrc, self._old_until = self._ssrc, now + self._max_wait
            self._restart(packet)
        elif self._held:
            out += self._expire(now)
        delta = (packet.sequence - self._next) & _SEQ_MASK
        if delta >= 0x8000:
            delta -= 0x10000
        if delta > MAX_DROPOUT or delta < -MAX_MISORDER:
            self.resyncs["seq_jump"] += 1
            out += self._flush()
            self._restart(packet)
            delta = 0
        position = self._next + delta
        if delta < 0 or position in self._held:
            self.drops["late" if position in self._lost else "duplicate"] += 1
        else:
            audio = packet if packet.payload_type == self.payload_type else None
            self._held[position] = (audio, now)
            out += self._drain()
        return b"".join(out)

    def expire(self, now: float) -> bytes:
        """Give up missing packets whose wait is over (call at :attr:`deadline`)."""
        return b"".join(self._expire(now))

    def flush(self) -> bytes:
        """Everything held, in order, holes given up (hold, hang-up, the end of a stream)."""
        return b"".join(self._flush())

    # ----- internals ------------------------------------------------------------------------

    def _restart(self, packet: RtpPacket) -> None:
        self._ssrc = packet.ssrc
        self._next = packet.sequence
        self._next_ts = None
        self._lost.clear()

    def _drain(self) -> list[bytes]:
        out: list[bytes] = []
        held = self._held
        while held:
            entry = held.pop(self._next, None)
            if entry is not None:
                self._next += 1
                if entry[0] is not None:
                    out.append(self._play(entry[0]))
            elif len(held) > self.window:
                self._give_up_to(min(held))  # window + 1 packets came after the hole
            else:
                break
        return out

    def _expire(self, now: float) -> list[bytes]:
        out: list[bytes] = []
        while self._held and now >= min(a for _, a in self._held.values()) + self._max_wait:
            self._give_up_to(min(self._held))
            out += self._drain()
        return out

    def _flush(self) -> list[bytes]:
        out: list[bytes] = []
        while self._held:
            self._give_up_to(min(self._held))
            out += self._drain()
        return out

    def _give_up_to(self, position: int) -> None:
        # Only the last MAX_MISORDER positions can still arrive without a seq_jump resync.
        self._lost.update(range(max(self._next, position - MAX_MISORDER), position))
        self._next = position
        if len(self._lost) > 4 * MAX_MISORDER:
            self._lost = {p for p in self._lost if p >= position - MAX_MISORDER}

    def _play(self, packet: RtpPacket) -> bytes:
        payload = packet.payload
        samples = len(payload) // self._sample_bytes
        if samples:
            self._frame_s = samples / self._clock_rate
        expected, self._next_ts = self._next_ts, (packet.timestamp + samples) & _TS_MASK
        if expected is None:
            return payload
        if packet.marker:
            self.resyncs["marker"] += 1
            return payload
        gap = (packet.timestamp - expected) & _TS_MASK
        if gap == 0:
            return payload
        if gap >= _TS_HALF or gap > self._max_fill:
            self.resyncs["ts_jump"] += 1
            return payload
        fill = gap * self._sample_bytes
        self.filled_bytes += fill
        return self._silence * fill + payload
