"""DTMF digits from RTP telephone-events (RFC 4733), sans-I/O: packets in, one digit per key press.

Payload (RFC 4733 §2.3): ``event`` (8 bits) | ``E`` end (1) | ``R`` reserved (1) | ``volume``
(6, -dBm0) | ``duration`` (16, timestamp units). Events 0-15 are the DTMF keys (§3): 0-9,
``*`` (10), ``#`` (11), A-D (12-15); others (flash, tones) are counted and ignored.

One key press is many packets: the timestamp is the event's start and stays the same in every
update (§2.3, §2.5.1), the duration grows, and the final packet (E set) is sent three times
(§2.5.1; some senders give the repeats new sequence numbers, sipp's captures repeat the same
one). So :class:`DtmfReceiver` keys an event by (SSRC, timestamp) and emits its digit on the
**first packet** it sees of it, whatever that packet is: the digit reaches the agent about one
packet time after the key went down instead of after the key comes up (typically 100-250 ms
later), and if the end packets are all lost the digit is still delivered. The cost is that a
press too short to be a valid digit is reported anyway; the sender already decided it was one.
An event longer than the duration field holds (0xFFFF units, ~8 s at 8 kHz) is cut into
segments, each starting where the previous one ended (§2.5.1): a new timestamp for the same key
that starts within a second of where a segment that ran to within a second of that limit ended
is the same key press and emits nothing. A packet whose timestamp is older than the current
event's (a straggler after the next press began) emits nothing either.

Floods: at most ``max_per_second`` digits a second per call (a token bucket of that size,
refilled at that rate on the injected ``now``); the excess is dropped and counted (``flood``).
A human presses keys at most ~10 times a second (ITU-T Q.24's 40 ms tone + 40 ms pause is 12.5).
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Final

from services.errors import RtpError
from services.telephony.rtp.packet import RtpPacket

__all__ = ["DIGITS", "DtmfReceiver", "TelephoneEvent"]

DIGITS: Final = "0123456789*#ABCD"  # RFC 4733 §3: event code → key
_EVENT: Final = struct.Struct("!BBH")
_TS_MASK: Final = 0xFFFF_FFFF
_TS_HALF: Final = 1 << 31
_SEGMENT: Final = 0xFFFF  # the longest duration one segment reports (§2.5.1)
_SLACK: Final = 8000  # a second at 8 kHz


@dataclasses.dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One RFC 4733 §2.3 payload."""

    event: int
    end: bool
    volume: int  # 0-63, the power level in -dBm0
    duration: int  # in timestamp units since the event's start

    @property
    def digit(self) -> str | None:
        return DIGITS[self.event] if self.event < len(DIGITS) else None

    @classmethod
    def parse(cls, payload: bytes) -> TelephoneEvent:
        if len(payload) < 4:
            raise RtpError(f"telephone-event payload of {len(payload)} bytes", reason="dtmf")
        event, flags, duration = _EVENT.unpack_from(payload)
        return cls(event, bool(flags & 0x80), flags & 0x3F, duration)

    def serialize(self) -> bytes:
        return _EVENT.pack(self.event, (0x80 if self.end else 0) | self.volume, self.duration)

    __bytes__ = serialize


class DtmfReceiver:
    """One call's telephone-event receiver; the contract is the module's docstring."""

    def __init__(self, *, max_per_second: float = 10.0) -> None:
        self.max_per_second = max_per_second
        self._tokens = max_per_second
        self._refilled_at: float | None = None
        self._ssrc: int | None = None
        self._timestamp = 0  # the current event's (segment's) start
        self._event = -1
        self._duration = 0  # the longest duration seen of the current segment
        self.digits = 0
        self.drops = {"dtmf": 0, "event": 0, "flood": 0}

    def push(self, packet: RtpPacket, now: float) -> str | None:
        """Take one telephone-event packet; the key pressed if it starts a new event."""
        try:
            event = TelephoneEvent.parse(packet.payload)
        except RtpError:
            self.drops["dtmf"] += 1
            return None
        if packet.ssrc == self._ssrc:
            ahead = (packet.timestamp - self._timestamp) & _TS_MASK
            if ahead == 0:
                self._duration = max(self._duration, event.duration)
                return None
            if ahead >= _TS_HALF:
                return None  # a straggler of an earlier event
            if event.event == self._event and self._continues(ahead):
                self._timestamp, self._duration = packet.timestamp, event.duration
                return None
        self._ssrc, self._timestamp = packet.ssrc, packet.timestamp
        self._event, self._duration = event.event, event.duration
        digit = event.digit
        if digit is None:
            self.drops["event"] += 1
            return None
        if not self._take_token(now):
            self.drops["flood"] += 1
            return None
        self.digits += 1
        return digit

    def _continues(self, ahead: int) -> bool:
        """§2.5.1: a segment that ran to the duration field's limit, and one that starts
        where it ended (a second of slack each way, for lost updates)."""
        return self._duration >= _SEGMENT - _SLACK and abs(ahead - self._duration) <= _SLACK

    def _take_token(self, now: float) -> bool:
        if self._refilled_at is not None:
            elapsed = max(0.0, now - self._refilled_at)
            self._tokens = min(self.max_per_second, self._tokens + elapsed * self.max_per_second)
        self._refilled_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
