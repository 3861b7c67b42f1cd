"""Sans-I/O media-stream framing per telephony provider (Twilio today), behind one interface.

Feed each received WebSocket frame to a serializer's ``parse`` and get one typed event; call its
``encode_*`` methods and send the frames they return. See :mod:`.base` for the contract and for
what an interruption (``clear``) flushes.
"""

from services.telephony.media_streams.base import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DtmfReceived,
    MarkReceived,
    MediaReceived,
    MediaStreamSerializer,
    OutboundKind,
    StreamConnected,
    StreamEvent,
    StreamStarted,
    StreamStopped,
    UnknownStreamEvent,
)
from services.telephony.media_streams.twilio import TwilioSerializer

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DtmfReceived",
    "MarkReceived",
    "MediaReceived",
    "MediaStreamSerializer",
    "OutboundKind",
    "StreamConnected",
    "StreamEvent",
    "StreamStarted",
    "StreamStopped",
    "TwilioSerializer",
    "UnknownStreamEvent",
]
