"""The outbound RTP packetizer for one call, sans-I/O: payload frames in, datagrams out.

The ingress's pacer takes a frame from its :class:`~services.media.playout.Playout` every
``frame_ms`` of its monotonic clock and hands it to :meth:`RtpSender.packet`, which returns the
datagram to send to :attr:`~services.telephony.rtp.latch.RtpLatch.remote`. The sender owns the
header fields (RFC 3550 §5.1):

* the sequence number goes up by one per packet; the timestamp by the frame's samples (G.711:
  one byte a sample, so +160 per 20 ms at 8 kHz, RFC 3551 §4.5.14);
* the SSRC and the initial sequence number and timestamp are random (RFC 3550 §5.1, §8.1), drawn
  from the injected ``randbits`` so tests are deterministic;
* the marker bit is set on the first packet of a talkspurt (RFC 3551 §4.1): the very first
  packet, and the first after :meth:`RtpSender.skip` (time that passed with nothing sent, when
  silence is suppressed). A pacer that sends the codec's silence when idle, as ours does, never
  skips, so its packets carry no other marker; ``marker=True`` forces one (a new talkspurt the
  caller's jitter buffer should resync on, e.g. after a barge-in cut).

``packets`` and ``octets`` are the sender's counts for an RTCP sender report (RFC 3550 §6.4.1).
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Callable
from typing import Final

from services.telephony.rtp.packet import VERSION

__all__ = ["RtpSender"]

_HEADER: Final = struct.Struct("!BBHII")


class RtpSender:
    """One outbound RTP stream; the contract is the module's docstring."""

    def __init__(
        self,
        payload_type: int,
        *,
        sample_bytes: int = 1,
        ssrc: int | None = None,
        randbits: Callable[[int], int] = secrets.randbits,
    ) -> None:
        self.payload_type = payload_type
        self._sample_bytes = sample_bytes
        self.ssrc = randbits(32) if ssrc is None else ssrc
        self.sequence = randbits(16)  # the next packet's
        self.timestamp = randbits(32)  # the next packet's
        self._talkspurt = True
        self.packets = 0
        self.octets = 0

    def packet(self, payload: bytes, *, marker: bool = False) -> bytes:
        """The datagram carrying ``payload``, the frame that follows the previous one."""
        second = self.payload_type | (0x80 if marker or self._talkspurt else 0)
        header = _HEADER.pack(VERSION << 6, second, self.sequence, self.timestamp, self.ssrc)
        self._talkspurt = False
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + len(payload) // self._sample_bytes) & 0xFFFF_FFFF
        self.packets += 1
        self.octets += len(payload)
        return header + payload

    def skip(self, samples: int) -> None:
        """``samples`` of time passed with nothing sent: the next packet starts a talkspurt."""
        self.timestamp = (self.timestamp + samples) & 0xFFFF_FFFF
        self._talkspurt = True
