"""The jitter buffer for a browser caller's audio: aiortc's interface, without its stall. Sans-I/O.

aiortc gives every audio receiver ``JitterBuffer(capacity=16, prefetch=4)``
(``aiortc/rtcrtpreceiver.py``). That buffer costs latency three ways (reference/webrtc-sip.md
§2.6; ``bench/jitter.py``):

* it releases a frame only once ``prefetch`` later frames are complete, and it knows a frame is
  complete only when a packet with the next timestamp arrives: 4 → 80 ms, 1 and 0 → 20 ms;
* it stops at the first missing packet (``_remove_frame``), so one lost packet holds back every
  later one until the buffer overflows at 16 packets (320 ms);
* the receiver takes at most one frame per packet added, so time spent holding is never given
  back: after one loss the call keeps about 300 ms, and a reordered packet leaves its wait.

:class:`AudioJitterBuffer` keeps the receiver's interface, ``add(packet) -> (pli, frame)``,
the only call ``RTCRtpReceiver._handle_rtp_packet`` makes on it. It is for audio, where one RTP
packet carries one whole frame (Opus: RFC 7587 §4.2; G.711 likewise), so it need not wait for a
next timestamp. Positions are sequence numbers, unwrapped across 65535 → 0; the head is the
next position to hand out. On each packet added:

* a missing head is skipped once ``skip_after`` packets behind it have arrived (a run of
  missing heads at once); its packet, if it comes later, is dropped as late;
* the head, if present, is released once a packet ``prefetch`` positions after it has arrived;
* at most one frame comes out (the receiver's contract), so a wait is rarely given back: the
  depth settles at ``max(prefetch, skip_after - 1)`` packets. So ``skip_after`` defaults to
  ``prefetch + 1``: a lost packet then costs no latency at all, and a packet reordered by up
  to ``prefetch`` positions is still used. ``bench/jitter.py`` chose prefetch 1.

Nothing here reads a clock: time is the order in which packets are added (the receiver calls us
only then); ``on_release`` tells the I/O side each frame's RTP timestamp as it leaves, so the
ingress can time its own work from there (``callray_ingress_added_seconds``). A browser sends a
packet every 20 ms, as our answer does not ask for Opus DTX (RFC 7587 §6.1), so waiting for a
later packet is waiting 20 ms; only the last frame before a burst of losses waits for the burst
to end.
"""

from __future__ import annotations

from collections.abc import Callable

from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtpPacket

from services.errors import UserError

SEQUENCE_SPACE = 1 << 16
# As aiortc's MAX_MISORDER: a packet this far behind the head means the sender restarted its
# sequence numbers, not a late packet.
MAX_MISORDER = 100
# aiortc's private name for the receiver's buffer (name-mangled ``__jitter_buffer``);
# tests/unit/test_webrtc_jitter.py fails if aiortc renames it or stops building it there.
RECEIVER_FIELD = "_RTCRtpReceiver__jitter_buffer"


class AudioJitterBuffer:
    """One audio receiver's buffer; the contract is the module's docstring."""

    def __init__(
        self,
        *,
        prefetch: int = 1,
        skip_after: int | None = None,
        capacity: int = 16,
        on_release: Callable[[int], None] | None = None,
    ) -> None:
        skip = prefetch + 1 if skip_after is None else skip_after
        if prefetch < 0 or skip < 1 or capacity <= max(prefetch, skip):
            raise UserError(
                f"jitter buffer needs prefetch >= 0, skip_after >= 1 and capacity above both "
                f"(got {prefetch}, {skip}, {capacity})"
            )
        self.prefetch = prefetch
        self.skip_after = skip
        self._capacity = capacity
        self._on_release = on_release
        self._packets: dict[int, RtpPacket] = {}
        self._head: int | None = None
        self._newest = 0
        # Positions passed without a frame (lost or late), packets that came after their
        # position was passed, and frames thrown away by an overflow or a restart.
        self.skipped = 0
        self.late = 0
        self.dropped = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        """Take one packet; return aiortc's ``(pli_flag, frame)``, the flag always False (audio
        sends no picture-loss indications)."""
        if self._head is None:
            self._restart(packet.sequence_number)
        head = self._head
        assert head is not None
        ahead = (packet.sequence_number - head) % SEQUENCE_SPACE
        if ahead >= SEQUENCE_SPACE // 2:  # behind the head
            if SEQUENCE_SPACE - ahead < MAX_MISORDER:
                self.late += 1
                return False, self._release()  # it cannot advance the head, so it may drain
            self._restart(packet.sequence_number)
            head, ahead = packet.sequence_number, 0
        position = head + ahead
        if ahead >= self._capacity:  # beyond the buffer: give up the oldest positions to fit
            self._give_up_before(position - self._capacity + 1)
        if position in self._packets:
            self.late += 1  # a duplicate
        else:
            self._packets[position] = packet
            self._newest = max(self._newest, position)
        return False, self._release()

    def _release(self) -> JitterFrame | None:
        head = self._head
        assert head is not None
        # Every stored packet is behind a missing head, so their count is how many have arrived
        # behind it.
        while head not in self._packets and len(self._packets) >= self.skip_after:
            head += 1
            self.skipped += 1
        self._head = head
        packet = self._packets.get(head)
        if packet is None or self._newest - head < self.prefetch:
            return None
        del self._packets[head]
        self._head = head + 1
        if self._on_release is not None:
            self._on_release(packet.timestamp)
        # The receiver stores the depayloaded payload as ``_data`` (for audio, the payload).
        return JitterFrame(
            data=getattr(packet, "_data", packet.payload), timestamp=packet.timestamp
        )

    def _give_up_before(self, position: int) -> None:
        assert self._head is not None
        gone = [p for p in self._packets if p < position]
        for p in gone:
            del self._packets[p]
        self.dropped += len(gone)
        self.skipped += position - self._head - len(gone)
        self._head = position

    def _restart(self, sequence_number: int) -> None:
        self.dropped += len(self._packets)
        self._packets.clear()
        self._head = self._newest = sequence_number


def install(receiver: RTCRtpReceiver, buffer: AudioJitterBuffer) -> AudioJitterBuffer:
    """Make ``buffer`` the jitter buffer of an audio ``receiver``, before its first packet (at
    the latest when ``setRemoteDescription`` returns: RTP flows only once DTLS is up). The one
    place that writes aiortc's private field."""
    if not hasattr(receiver, RECEIVER_FIELD):
        raise UserError(f"this aiortc's RTCRtpReceiver has no {RECEIVER_FIELD}; see pyproject")
    setattr(receiver, RECEIVER_FIELD, buffer)
    return buffer
