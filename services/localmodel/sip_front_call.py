"""One call of the local model's SIP front: its RTP port and our side of its SDP (RFC 3264); the
signalling is :mod:`.sip_front`'s.

* :func:`plan` checks an INVITE's offer before any call exists: the session takes G.711 μ-law
  only (``audio/pcmu``), so an offer without PCMU is an :class:`SdpError` (488). An INVITE
  without SDP (a late offer) is planned as PCMU, to nowhere until the ACK brings the answer.
* :meth:`FrontCall.open` binds the call's RTP port (:class:`~services.telephony.rtp_io.
  RtpStream`: latch, RFC 4733, jitter buffer) to the session: the caller's payloads to
  ``caller_audio``, digits to ``dtmf``, and each pacer tick's frame from ``next_frame``.
* :meth:`FrontCall.local_sdp` is our answer to an offer (the stream follows it: hold, resume, a
  new address), or our offer for a late one; :meth:`FrontCall.reoffer` answers a re-INVITE or
  UPDATE with a new version (RFC 3264 §8); :meth:`FrontCall.take_answer` applies the ACK's
  answer to our offer.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Final

from services.telephony.rtp_io import RtpPorts, RtpStream
from services.telephony.sip import offer_answer
from services.telephony.sip.offer_answer import NegotiatedAudio
from services.telephony.sip.uas_events import UasCall

from .sip_session import SipSession

__all__ = ["CODECS", "FrontCall", "plan"]

CODECS: Final[tuple[offer_answer.Codec, ...]] = ("PCMU",)  # what a SipSession takes
# A late offer's audio until the ACK answers ours: nothing is sent to 0.0.0.0:0.
_UNANSWERED: Final = NegotiatedAudio("PCMU", 0, None, 20, "0.0.0.0", 0, "sendrecv")


def plan(offer: bytes, host: str) -> NegotiatedAudio:
    """What a call on ``offer`` will send and receive; :class:`SdpError` for a 488."""
    if not offer:
        return _UNANSWERED
    return offer_answer.answer(
        offer.decode("utf-8", "replace"),
        local_ip=host,
        rtp_port=9,  # a placeholder: the real answer names the port bound for the call
        session_id=1,
        session_version=1,
        codecs_preference=CODECS,
    ).audio


@dataclasses.dataclass(eq=False, slots=True)
class FrontCall:
    call_id: str
    uas: UasCall
    host: str  # where RTP binds, and what our SDP names
    session: SipSession | None = None
    stream: RtpStream | None = None
    sdp: bytes = b""  # ours, as last sent
    version: int = 1  # our SDP's o= version
    refer_to: str | None = None  # a REFER asked for before the ACK: sent once it comes
    ended: bool = False

    async def open(
        self, session: SipSession, ports: RtpPorts | None, clock: Callable[[], float]
    ) -> RtpStream:
        """Bind the call's RTP port (from ``ports``, else any free one) to ``session``; raises
        OSError when none is free."""
        self.session = session
        stream = RtpStream(
            plan(self.uas.offer, self.host),
            on_audio=session.caller_audio,
            on_dtmf=session.dtmf,
            on_played=lambda _played: None,  # the session accounts for its own playback
            clock=clock,
            frames=lambda: (session.next_frame(), []),
        )
        if ports is not None:
            await ports.open(stream)
        else:
            await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: stream, local_addr=(self.host, 0)
            )
        self.stream = stream
        return stream

    def local_sdp(self, offer: bytes) -> bytes:
        """Our answer to ``offer``, or our offer when it is empty; SdpError: 488."""
        assert self.stream is not None
        session_id = int.from_bytes(self.uas.to_tag.encode()[:6].ljust(6, b"0"), "big") % 10**9
        if not offer:
            return offer_answer.offer(
                self.host,
                self.stream.port,
                session_id=session_id,
                session_version=self.version,
                codecs=CODECS,
            ).encode()
        answer = offer_answer.answer(
            offer.decode("utf-8", "replace"),
            local_ip=self.host,
            rtp_port=self.stream.port,
            session_id=session_id,
            session_version=self.version,
            codecs_preference=CODECS,
        )
        self.stream.renegotiate(answer.audio)
        return answer.sdp.encode()

    def reoffer(self, offer: bytes) -> bytes:
        """Our answer to a re-INVITE's or UPDATE's offer (none: our SDP as it is); a refused
        one (SdpError) leaves the version and the stream as they were."""
        if not offer:
            return self.sdp
        self.version += 1
        try:
            self.sdp = self.local_sdp(offer)
        except Exception:
            self.version -= 1
            raise
        return self.sdp

    def take_answer(self, answer: bytes) -> None:
        """The ACK's answer to our late-offer SDP (SdpError if it cannot be used)."""
        assert self.stream is not None
        audio = offer_answer.accept_answer(answer.decode("utf-8", "replace"), self.sdp.decode())
        self.stream.renegotiate(audio)

    def close(self) -> None:
        self.ended = True
        if self.stream is not None:
            self.stream.close()
