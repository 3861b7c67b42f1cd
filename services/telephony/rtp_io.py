"""The I/O half of RTP: one UDP port per call, and one pacer for every call's audio. Shared by
our SIP ingress (:mod:`services.gateway.sip_ingress`) and the local model's SIP front
(:mod:`services.localmodel.sip_front`), so neither imports the other's module.

The protocol work is sans-I/O in :mod:`services.telephony.rtp`; this module only moves bytes:

* :class:`RtpStream` is one call's port (an ``asyncio.DatagramProtocol``). A datagram goes
  through the latch (foreign sources dropped unparsed), the DTMF receiver (telephone-events) and
  the jitter buffer, and the in-order G.711 payload goes to ``on_audio`` as it is: PCMU and PCMA
  pass straight through to the model (``audio/pcmu`` / ``audio/pcma``), with no transcoding.
* :class:`Pacer` is one task for all calls: every 20 ms of a monotonic clock it asks each
  stream for its next frame (:class:`~services.media.playout.Playout`: codec silence when idle)
  and sends it. A barge-in's ``clear`` therefore takes effect at the next tick, and the
  playback reported is the audio sent, exact to the packet. One timer for a hundred calls
  rather than a hundred timers: each tick sends them all, and its lateness is measured
  (``callray_ingress_added_seconds{transport="sip",direction="out"}``).
* :class:`RtpPorts` hands out even ports (RFC 3550 §11: RTP on an even port, RTCP on the odd
  one above, which we do not send) from ``CALLRAY_RTP_PORTS``, so a firewall can be opened for
  exactly that range.

Drops and the jitter buffer's depth are counted per stream and added to the metrics once a
second by the pacer, not per packet.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from services.media.playout import Playout
from services.media.vocabulary import Played
from services.observability import metrics
from services.telephony.rtp import G711_PAYLOAD_TYPES, DtmfReceiver, JitterBuffer, RtpLatch
from services.telephony.rtp.sender import RtpSender
from services.telephony.sip.offer_answer import NegotiatedAudio

logger = logging.getLogger(__name__)

FRAME_S = 0.02
# A stall longer than this restarts the pacer's clock instead of sending a burst to catch up.
MAX_CATCH_UP_S = 0.2


class RtpStream(asyncio.DatagramProtocol):
    """One call's RTP port; ``on_audio`` gets the caller's in-order G.711, ``on_dtmf`` digits,
    ``on_played`` what the pacer sent of the model's audio. What is sent comes from the stream's
    own :attr:`playout`, or from ``frames`` (one codec frame and what it played, per tick) for
    an owner that keeps the audio itself (the local model's ``SipSession``)."""

    def __init__(
        self,
        audio: NegotiatedAudio,
        *,
        on_audio: Callable[[bytes], None],
        on_dtmf: Callable[[str], None],
        on_played: Callable[[list[Played]], None],
        clock: Callable[[], float] = time.monotonic,
        frames: Callable[[], tuple[bytes, list[Played]]] | None = None,
    ) -> None:
        fmt = G711_PAYLOAD_TYPES[0 if audio.codec == "PCMU" else 8]
        self.format = fmt
        self.playout = Playout(fmt)
        self._frames = frames or self.playout.next_frame
        self._on_audio = on_audio
        self._on_dtmf = on_dtmf
        self._on_played = on_played
        self._clock = clock
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.last_rtp_at = clock()
        self._reported: Counter[str] = Counter()
        self._negotiate(audio, first=True)

    def _negotiate(self, audio: NegotiatedAudio, *, first: bool = False) -> None:
        self.audio = audio
        types = {audio.payload_type}
        if audio.telephone_event is not None:
            types.add(audio.telephone_event)
        announced = (audio.remote_address, audio.remote_port)
        if first:
            self.latch = RtpLatch(announced, types)
            self.jitter = JitterBuffer(audio.payload_type, self.format)
            self.dtmf = DtmfReceiver()
            self.sender = RtpSender(audio.payload_type)
        else:
            self.latch.payload_types = frozenset(types)
            self.latch.reannounce(announced)

    def renegotiate(self, audio: NegotiatedAudio) -> None:
        """A re-INVITE or UPDATE (hold, resume, a new address): same codec, new direction."""
        was_sending = self.audio.sends
        self._negotiate(audio)
        if was_sending and not audio.sends:
            logger.info("call on hold: RTP out stops")
        if not audio.receives:
            self.jitter.flush()  # held: what is queued from before is not passed on
        self.last_rtp_at = self._clock()

    @property
    def on_hold(self) -> bool:
        return not self.audio.receives

    # ----- asyncio.DatagramProtocol --------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        now = self._clock()
        packet = self.latch.accept(data, (addr[0], addr[1]), now)
        if packet is None:
            return
        self.last_rtp_at = now
        if packet.payload_type == self.audio.telephone_event:
            digit = self.dtmf.push(packet, now)
            if digit is not None:
                self._on_dtmf(digit)
        audio = self.jitter.push(packet, now)  # telephone-events keep their sequence slot
        if audio and self.audio.receives:
            self._on_audio(audio)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable for a sendto: the caller's port is gone; the RTP watchdog or a
        # BYE ends the call, nothing to do here.
        logger.debug("RTP socket error: %s", exc)

    # ----- the pacer's side ----------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """One 20 ms frame out, and any caller audio the jitter buffer gave up waiting for."""
        deadline = self.jitter.deadline
        if deadline is not None and now >= deadline:
            audio = self.jitter.expire(now)
            if audio and self.audio.receives:
                self._on_audio(audio)
        remote = self.latch.remote
        if not self.audio.sends or remote is None or self.transport is None:
            # On hold the model's audio waits (nothing is reported heard that was not sent);
            # the RTP clock runs on, so the first packet after it is a new talkspurt.
            self.sender.skip(self.format.frame_bytes // self.format.sample_bytes)
            return
        frame, played = self._frames()
        if played:
            self._on_played(played)
        self.transport.sendto(self.sender.packet(frame), remote)

    def report(self) -> None:
        """Add this stream's drops since the last report to the metrics (once a second)."""
        counts: Counter[str] = Counter(self.latch.drops)
        counts.update(self.jitter.drops)
        counts.update({f"dtmf_{k}": v for k, v in self.dtmf.drops.items()})
        for reason, total in counts.items():
            delta = total - self._reported[reason]
            if delta > 0:
                metrics.rtp_dropped(reason, delta)
        self._reported = counts
        metrics.jitter_depth(self.jitter.depth)

    def close(self) -> None:
        if self.transport is not None:
            self.report()
            self.transport.close()
            self.transport = None


class Pacer:
    """Every stream's next frame, every 20 ms of one monotonic clock; asleep while there is
    no stream (a SIP port that takes no calls costs no wake-ups)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_late: Callable[[float], None] | None = None,
    ) -> None:
        self.streams: set[RtpStream] = set()  # add() and remove(), so the pacer wakes
        self._busy = asyncio.Event()
        self._clock = clock
        self._sleep = sleep
        self._on_late = on_late
        self.ticks = 0

    def add(self, stream: RtpStream) -> None:
        self.streams.add(stream)
        self._busy.set()

    def remove(self, stream: RtpStream) -> None:
        self.streams.discard(stream)
        if not self.streams:
            self._busy.clear()

    async def run(self) -> None:
        due = self._clock()
        next_report = due + 1.0
        while True:
            if not self.streams:
                self._busy.clear()
                await self._busy.wait()
                due = self._clock()  # a new first stream: the clock starts again
            now = self._clock()
            if due > now:
                await self._sleep(due - now)
                now = self._clock()
            late = now - due
            if late > MAX_CATCH_UP_S:
                due, late = now, 0.0  # the loop stalled: start again rather than burst
            if self._on_late is not None:
                self._on_late(late)
            for stream in list(self.streams):
                try:
                    stream.tick(now)
                except Exception:  # one call's bug must not silence the others
                    logger.exception("an RTP stream failed its tick; it is dropped")
                    self.remove(stream)
            if now >= next_report:
                next_report = now + 1.0
                for stream in self.streams:
                    stream.report()
            self.ticks += 1
            due += FRAME_S


class RtpPorts:
    """Even UDP ports in ``first..last`` on ``host``, tried round-robin from after the last one
    bound, so a port just released is the last to be reused."""

    def __init__(self, host: str, first: int, last: int) -> None:
        self.host = host
        self.first = first + (first % 2)  # RTP on even ports (RFC 3550 §11)
        self.last = last
        self._next = self.first

    async def open(self, stream: RtpStream) -> None:
        loop = asyncio.get_running_loop()
        count = max(0, (self.last - self.first) // 2 + 1)
        for _ in range(count):
            port = self._next
            self._next = port + 2 if port + 2 <= self.last else self.first
            try:
                await loop.create_datagram_endpoint(
                    lambda: stream, local_addr=(self.host, port), reuse_port=False
                )
                return
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
        raise OSError(errno.EADDRINUSE, f"no free RTP port in {self.first}-{self.last}")
