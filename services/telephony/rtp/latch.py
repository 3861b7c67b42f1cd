"""Symmetric RTP latching and the source check for one call's RTP port, sans-I/O.

A caller behind NAT announces in SDP an address its packets never come from, so we follow RFC
4961 (symmetric RTP) as SBCs do (reference/telephony.md §4.2, seen with baresip): send to where
the caller's packets come from. :class:`RtpLatch` starts out sending to the address the SDP
announced (:attr:`RtpLatch.remote`) and latches onto the source of the first **valid** packet
(it parses, and its payload type is one we negotiated), so stray or garbage datagrams cannot
steer our audio.

After that, a datagram from any other address is dropped, counted as ``source``, **before it is
parsed**: the check is one tuple comparison and one subtraction, so a flood of 5,000 packets/s
from a wrong source costs almost nothing (the issue's target: under 10% of a core).

Re-latching. While the latched source keeps sending, no other address can take the call over,
whatever its SSRC: that is what stops an attacker who found the port from injecting audio into
or stealing audio out of a live call ("RTP bleed"). Once the latched source has sent no valid
packet for ``relatch_after`` seconds (default 1 s), the next valid packet from another address
re-latches, new SSRC or not: a NAT that rebinds (the caller's router restarted, a mobile moved)
looks exactly like that, the old mapping silent and a new one appearing, and the caller's audio
comes back after a second instead of never. The price is that during a silence of the caller's
(hold without packets, a sender with silence suppression) the call is open to a take-over; only
SRTP closes that. A re-INVITE that moves the media to a new address (:meth:`RtpLatch.reannounce`)
unlatches at once, because the signalling, not the media, said so.

Drops (``drops``, the metric's reasons): ``source`` and ``payload_type`` here, and the parse
reasons of :meth:`~services.telephony.rtp.packet.RtpPacket.parse`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection

from services.errors import RtpError
from services.telephony.rtp.packet import MAX_PAYLOAD, RtpPacket

__all__ = ["Address", "RtpLatch"]

Address = tuple[str, int]


class RtpLatch:
    """One call's RTP source; the contract is the module's docstring."""

    def __init__(
        self,
        announced: Address | None,
        payload_types: Collection[int],
        *,
        relatch_after: float = 1.0,
        max_payload: int = MAX_PAYLOAD,
    ) -> None:
        self.announced = announced
        self.payload_types = frozenset(payload_types)
        self.relatch_after = relatch_after
        self.max_payload = max_payload
        self.source: Address | None = None
        self._last_valid = float("-inf")  # when the latched source last sent a valid packet
        self.relatches = 0
        self.drops: Counter[str] = Counter()

    @property
    def remote(self) -> Address | None:
        """Where to send our RTP: the latched source, else the address the SDP announced."""
        return self.source if self.source is not None else self.announced

    def accept(self, data: bytes, addr: Address, now: float) -> RtpPacket | None:
        """The packet if ``data`` from ``addr`` is valid RTP of this call; None if dropped."""
        source = self.source
        if addr != source and source is not None and now - self._last_valid < self.relatch_after:
            self.drops["source"] += 1  # the hot path of a flood: nothing parsed
            return None
        try:
            packet = RtpPacket.parse(data, max_payload=self.max_payload)
        except RtpError as exc:
            self.drops[exc.reason] += 1
            return None
        if packet.payload_type not in self.payload_types:
            self.drops["payload_type"] += 1
            return None
        if addr != source:
            if source is not None:
                self.relatches += 1
            self.source = addr
        self._last_valid = now
        return packet

    def reannounce(self, announced: Address | None) -> None:
        """A new SDP from the peer (re-INVITE, UPDATE, late offer): a new address unlatches."""
        if announced != self.announced:
            self.announced = announced
            self.source = None
            self._last_valid = float("-inf")
