"""RTP for the SIP ingress, sans-I/O: datagrams and ``now`` in, audio, digits and datagrams out.

One call's media, in the order an adapter wires it (the UDP socket and the pacer's clock live in
the adapter, not here):

* :class:`RtpLatch` (:mod:`.latch`): the source check and symmetric latching; datagrams from a
  foreign address are dropped before parsing, the rest parsed into :class:`RtpPacket`;
* :class:`RtpPacket` (:mod:`.packet`): RFC 3550 §5.1 parse/serialize, drops as
  :class:`~services.errors.RtpError` with a ``reason``;
* :class:`JitterBuffer` (:mod:`.jitter`): every packet of the stream; returns the audio payload
  bytes now playable, in order, gaps filled with the codec's silence;
* :class:`DtmfReceiver` (:mod:`.dtmf`): the telephone-event packets; one digit per key press;
* :class:`RtpSender` (:mod:`.sender`): frames from :class:`services.media.playout.Playout` (in
  the G.711 :data:`~services.media.playout.PCMU`/``PCMA`` format) into datagrams.

Static payload types (RFC 3551 §6): 0 is PCMU, 8 is PCMA, both 8 kHz; telephone-event is
dynamic (101 by habit) and comes from the SDP.
"""

from __future__ import annotations

from typing import Final

from services.media.playout import PCMA, PCMU, FrameFormat
from services.telephony.rtp.dtmf import DtmfReceiver, TelephoneEvent
from services.telephony.rtp.jitter import JitterBuffer
from services.telephony.rtp.latch import Address, RtpLatch
from services.telephony.rtp.packet import HeaderExtension, RtpPacket
from services.telephony.rtp.sender import RtpSender

__all__ = [
    "G711_PAYLOAD_TYPES",
    "Address",
    "DtmfReceiver",
    "HeaderExtension",
    "JitterBuffer",
    "RtpLatch",
    "RtpPacket",
    "RtpSender",
    "TelephoneEvent",
]

# RFC 3551 §6, table 4: the static payload types we pass through, and how each is framed.
G711_PAYLOAD_TYPES: Final[dict[int, FrameFormat]] = {0: PCMU, 8: PCMA}
