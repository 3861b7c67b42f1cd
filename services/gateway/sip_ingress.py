"""The SIP adapter on the ingress seam: PBXs and trunks call us over SIP/UDP with G.711 RTP.

The SIP work is the sans-I/O :class:`~services.telephony.sip.uas.UserAgentServer`; the RTP work
is :mod:`services.telephony.rtp_io`. This module is the thin part between them and the
:class:`~.ingress_core.IngressCore`:

* one UDP socket for SIP (``CALLRAY_SIP_HOST``/``PORT``), and one timer task that sleeps until
  the core's next deadline (retransmissions, session timers) or the next datagram;
* an INVITE → 100 Trying (the transaction layer) → its SDP answered (``488`` + ``Warning`` when
  nothing in it can be used) → an RTP port → admission through the router, which connects the
  model session → ``200 OK``. Busy → ``503`` + ``Retry-After``, so a trunk fails over to
  another node; CANCEL meanwhile → the seat is given back;
* the call's media: caller G.711 passed through to the model (``audio/pcmu`` or
  ``audio/pcma``), model audio out through the shared pacer, DTMF (RFC 4733 or SIP INFO),
  hold (re-INVITE/UPDATE ``sendonly``/``inactive``: no RTP out, caller audio not passed on);
* the agent's hang-up → BYE; its transfer → REFER, then BYE once the caller's NOTIFY says the
  transfer reached 2xx, else the agent is told (``TransferFailed``) and the call goes on;
* the caller's BYE, CANCEL, or no RTP for ``CALLRAY_SIP_RTP_TIMEOUT_S`` (not on hold) → the
  caller hung up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import secrets
import time
from collections import Counter
from typing import Any, Literal

from services.config import SipSettings
from services.errors import SdpError
from services.gateway.front_door import SourceRate
from services.gateway.ingress_core import Busy, IngressCore, Refused
from services.media.vocabulary import (
    AudioDone,
    CallSpec,
    Dtmf,
    Hangup,
    PlayAudio,
    PlaybackCut,
    Played,
    Transfer,
    TransferFailed,
)
from services.observability import metrics
from services.observability.log_limits import LogLimiter
from services.telephony.rtp_io import Pacer, RtpPorts, RtpStream
from services.telephony.sip import offer_answer
from services.telephony.sip.digest import DigestAuthority
from services.telephony.sip.offer_answer import NegotiatedAudio
from services.telephony.sip.register import Registration
from services.telephony.sip.transaction import Dropped, Send
from services.telephony.sip.uas import UasSettings, UserAgentServer
from services.telephony.sip.uas_events import (
    CallCancelled,
    CallConfirmed,
    CallEnded,
    DtmfInfo,
    IncomingCall,
    Output,
    Reoffer,
    TransferResult,
    UasCall,
)
from services.telephony.sip_io import UasEndpoint

logger = logging.getLogger(__name__)

CALL_PREFIX = "sip_"
AUDIO_FORMATS: dict[str, Literal["audio/pcmu", "audio/pcma"]] = {
    "PCMU": "audio/pcmu",
    "PCMA": "audio/pcma",
}


class SipLeg:
    """One SIP call as the core's :class:`~.ingress_core.MediaLeg`."""

    def __init__(self, ingress: SipIngress, call: UasCall, stream: RtpStream, call_id: str) -> None:
        self.ingress = ingress
        self.call = call
        self.stream = stream
        self.call_id = call_id
        self.session_version = 1
        self.sdp = b""  # ours, as last sent
        self.transfer_target: str | None = None
        self.ended = False

    def play(self, command: PlayAudio) -> None:
        self.stream.playout.push(command.item_id, command.content_index, command.data)

    def audio_done(self, command: AudioDone) -> None:
        self.stream.playout.done(command.item_id, command.content_index)

    def interrupt(self) -> PlaybackCut:
        cut, played = self.stream.playout.interrupt()
        self.played(played)  # before the cut, which the core sends on return
        return cut

    def control(self, command: Hangup | Transfer) -> None:
        if isinstance(command, Transfer):
            self.ingress.transfer(self, command.target)
        else:
            self.ingress.hang_up(self, command.reason)

    def end(self, reason: str) -> None:
        self.ingress.hang_up(self, reason)

    def played(self, played: list[Played]) -> None:
        for message in played:
            self.ingress.core.caller_input(self.call_id, message)


class SipIngress(UasEndpoint):
    def __init__(
        self,
        core: IngressCore,
        settings: SipSettings,
        *,
        secret: bytes | None = None,
        draining: Any = lambda: False,
    ) -> None:
        super().__init__(name="SIP")
        self.core = core
        self.settings = settings
        self._draining = draining
        authority = None
        users = dict(
            pair.split(":", 1) for pair in settings.auth_users.value.split(",") if ":" in pair
        )
        if users:
            authority = DigestAuthority(
                settings.auth_realm,
                secret or secrets.token_bytes(32),
                users,
                algorithms=settings.auth_algorithms,
            )
        allowed = tuple(ipaddress.ip_network(s, strict=False) for s in settings.allow_sources)
        self._advertise = settings.advertise_address or settings.host
        self._uas_settings = UasSettings(
            local=(settings.host, 0),  # the port is known once bound (start)
            advertise=settings.advertise_address,
            allow_sources=allowed if (allowed or authority) else None,
            authority=authority,
        )
        self._rate = SourceRate(
            rate=settings.invites_per_source_s, burst=2 * settings.invites_per_source_s
        )
        self.pacer = Pacer(on_late=lambda s: metrics.ingress_added("sip", "out", s))
        self._ports = RtpPorts(settings.host, *settings.rtp_ports)
        self.legs: dict[str, SipLeg] = {}  # by the UAS call's key
        self._counted: Counter[tuple[str, str, int]] = Counter()
        self._log = LogLimiter(logger)
        self._registration_state = ""

    # ----- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> int:
        hint = "set CALLRAY_SIP_PORT to a free port, or to off"
        await self.bind(self.settings.host, self.settings.port or 0, hint)
        local = (self.settings.host, self.port)
        self.uas = UserAgentServer(
            dataclasses.replace(self._uas_settings, local=local),
            allow_invite=self._rate.allow,
            registration=self._registration(local),
        )
        self.start_timers()
        self.spawn(self.pacer.run())
        self.spawn(self._watchdog())
        logger.info("SIP listening on udp %s:%d", self.settings.host, self.port)
        return self.port

    def _registration(self, local: tuple[str, int]) -> Registration | None:
        s = self.settings
        if s.registrar is None:
            return None
        host = f"[{self._advertise}]" if ":" in self._advertise else self._advertise
        return Registration(
            registrar=s.registrar,
            aor=f"sip:{s.register_user or 'callray'}@{s.registrar[0]}",
            contact=f"sip:callray@{host}:{local[1]}",
            sent_by=local,
            username=s.register_user,
            password=s.register_password.value,
            expires=s.register_expires,
        )

    async def stop(self) -> None:
        for leg in list(self.legs.values()):
            self.hang_up(leg, "ingress_stopped")
        await asyncio.sleep(0)  # the BYEs leave before the socket closes
        for leg in list(self.legs.values()):
            leg.stream.close()
        await self.close()

    # ----- timers ----------------------------------------------------------------------------

    def after_tick(self) -> None:
        self._flush_counts()
        self._report_registration()

    async def _watchdog(self) -> None:
        """No RTP for rtp_timeout_s (not on hold): the caller is gone (a dead trunk, a lost BYE)."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for leg in list(self.legs.values()):
                stream = leg.stream
                if stream.on_hold or leg.call.state != "confirmed":
                    continue
                if now - stream.last_rtp_at > self.settings.rtp_timeout_s:
                    logger.info("no RTP for %.0f s: taken as hung up", self.settings.rtp_timeout_s)
                    self._caller_gone(leg, "rtp_timeout")
                    self.hang_up(leg, "rtp_timeout")

    # ----- the UAS's outputs ---------------------------------------------------------------------

    def apply(self, outputs: list[Output]) -> None:
        for item in outputs:
            if isinstance(item, Send):
                self.send(item)
            elif isinstance(item, IncomingCall):
                self.spawn(self._answer(item.call))
            elif isinstance(item, CallConfirmed):
                self._confirmed(item)
            elif isinstance(item, Reoffer):
                self._reoffer(item)
            elif isinstance(item, CallCancelled):
                leg = self.legs.get(item.call.key)
                if leg is not None:
                    self._caller_gone(leg, "caller_cancelled")
            elif isinstance(item, CallEnded):
                self._ended(item)
            elif isinstance(item, DtmfInfo):
                leg = self.legs.get(item.call.key)
                if leg is not None:
                    self.core.caller_input(leg.call_id, Dtmf(item.digit))
            elif isinstance(item, TransferResult):
                self._transfer_result(item)
            elif isinstance(item, Dropped):
                metrics.sip_message("in", "dropped", item.status)
                self._log.warning(item.source[0], item.reason, "SIP input dropped: %s", item.detail)

    def _report_registration(self) -> None:
        registration = self.uas.registration if self.uas is not None else None
        if registration is None or registration.state == self._registration_state:
            return
        self._registration_state = registration.state
        metrics.sip_registered(registration.state == "registered")
        if registration.state == "failed":
            logger.warning("SIP registration failed: %s", registration.reason)
        elif registration.state == "registered":
            logger.info(
                "registered with %s:%d for %d s", *registration.registrar, registration.granted
            )

    def _flush_counts(self) -> None:
        assert self.uas is not None
        for key, total in self.uas.messages.items():
            delta = total - self._counted[key]
            if delta:
                direction, method, code = key
                for _ in range(delta):
                    metrics.sip_message(direction, method, code)
                self._counted[key] = total

    # ----- a call --------------------------------------------------------------------------------

    async def _answer(self, call: UasCall) -> None:
        try:
            await self._incoming(call)
        except Exception:  # a bug answering one INVITE: that call gets 500, the rest go on
            logger.exception("an INVITE could not be answered")
            leg = self.legs.get(call.key)
            if leg is not None:
                self._release(leg, "setup_failed")
            if self.uas is not None:
                self.apply(self.uas.reject(call, 500, time.monotonic()))

    async def _incoming(self, call: UasCall) -> None:
        assert self.uas is not None
        uas, began = self.uas, time.monotonic()

        def finish(out: list[Output], code: int) -> None:
            self.apply(out)
            metrics.sip_invite(code, time.monotonic() - began)

        if self._draining():
            finish(uas.reject(call, 503, time.monotonic(), retry_after=5), 503)
            return
        try:
            audio = self._plan(call)
        except SdpError as exc:
            finish(uas.reject(call, 488, time.monotonic(), warning=str(exc)), 488)
            return
        call_id = CALL_PREFIX + secrets.token_hex(12)
        legs: list[SipLeg] = []
        stream = RtpStream(
            audio,
            on_audio=lambda pcm: self.core.caller_audio(call_id, pcm),
            on_dtmf=lambda digit: self.core.caller_input(call_id, Dtmf(digit)),
            on_played=lambda played: legs[0].played(played),
        )
        try:
            await self._ports.open(stream)
        except OSError:
            logger.warning("no free RTP port: an INVITE is refused")
            finish(uas.reject(call, 503, time.monotonic(), retry_after=5), 503)
            return
        leg = SipLeg(self, call, stream, call_id)
        legs.append(leg)
        self.legs[call.key] = leg
        spec = CallSpec(call_id, transport="sip", audio_format=AUDIO_FORMATS[audio.codec])
        opened = await self.core.open(spec, leg)
        now = time.monotonic()
        if isinstance(opened, Busy | Refused):
            self.legs.pop(call.key, None)
            stream.close()
            finish(
                uas.reject(call, 503 if isinstance(opened, Busy) else 403, now, retry_after=5), 503
            )
            return
        if call.state != "offered":  # cancelled while the model session opened
            self._release(leg, "caller_cancelled")
            return
        leg.sdp = self._sdp(call, leg)
        # Our call id in the 200, so the PBX's records can name the call as our events do.
        finish(uas.accept(call, leg.sdp, now, [("X-Callray-Call-Id", call_id)]), 200)
        self.pacer.add(stream)

    def _plan(self, call: UasCall) -> NegotiatedAudio:
        """What we will send and receive (checked before a port is taken, so an offer we cannot
        use costs nothing); for a late offer, PCMU until the ACK's answer."""
        if call.offer:
            return offer_answer.answer(
                call.offer.decode("utf-8", "replace"),
                local_ip=self._advertise,
                rtp_port=9,  # a placeholder: the real answer names the port bound next
                session_id=1,
                session_version=1,
            ).audio
        return NegotiatedAudio("PCMU", 0, None, 20, "0.0.0.0", 0, "sendrecv")

    def _sdp(self, call: UasCall, leg: SipLeg, offer: bytes | None = None) -> bytes:
        session_id = int.from_bytes(call.to_tag.encode()[:6].ljust(6, b"0"), "big") % 10**9
        text = (offer if offer is not None else call.offer).decode("utf-8", "replace")
        if not text:  # late offer: ours goes in the 200 OK, theirs comes in the ACK
            return offer_answer.offer(
                self._advertise,
                leg.stream.port,
                session_id=session_id,
                session_version=leg.session_version,
                codecs=("PCMU",),
            ).encode()
        answer = offer_answer.answer(
            text,
            local_ip=self._advertise,
            rtp_port=leg.stream.port,
            session_id=session_id,
            session_version=leg.session_version,
            codecs_preference=(leg.stream.audio.codec,),
        )
        leg.stream.renegotiate(answer.audio)
        return answer.sdp.encode()

    def _confirmed(self, event: CallConfirmed) -> None:
        leg = self.legs.get(event.call.key)
        if leg is None or event.call.offer:
            return
        try:  # a late offer: the caller's answer to ours
            audio = offer_answer.accept_answer(
                event.sdp.decode("utf-8", "replace"), leg.sdp.decode()
            )
        except SdpError as exc:
            logger.warning("a late offer's answer cannot be used: %s", exc)
            self._caller_gone(leg, "bad_sdp")
            self.hang_up(leg, "bad_sdp")
            return
        leg.stream.renegotiate(audio)

    def _reoffer(self, event: Reoffer) -> None:
        assert self.uas is not None
        leg = self.legs.get(event.call.key)
        now = time.monotonic()
        if leg is None:
            self.apply(self.uas.refuse_reoffer(event, 481, "no such call", now))
            return
        if not event.sdp:
            # A session refresh by UPDATE carries no offer and gets no answer (RFC 3311 §5.2);
            # a re-INVITE without SDP asks for our offer: the current one (RFC 3264 §8).
            body = b"" if event.request.method == "UPDATE" else leg.sdp
            self.apply(self.uas.answer_reoffer(event, body, now))
            return
        leg.session_version += 1
        try:
            sdp = self._sdp(event.call, leg, offer=event.sdp)
        except SdpError as exc:
            leg.session_version -= 1
            self.apply(self.uas.refuse_reoffer(event, 488, str(exc), now))
            return
        leg.sdp = sdp
        logger.info("call %s: %s", leg.call_id, "on hold" if leg.stream.on_hold else "media on")
        self.apply(self.uas.answer_reoffer(event, sdp, now))

    def _ended(self, event: CallEnded) -> None:
        leg = self.legs.get(event.call.key)
        if leg is None:
            return
        reason = {"caller_hangup": "caller_hangup", "bye_sent": "ended"}.get(
            event.reason, event.reason
        )
        self._release(leg, reason)

    # ----- the session's commands ----------------------------------------------------------------

    def hang_up(self, leg: SipLeg, reason: str) -> None:
        if leg.ended or self.uas is None:
            return
        now = time.monotonic()
        if leg.call.state == "offered":
            self.apply(self.uas.reject(leg.call, 480, now))
        elif leg.call.state != "ended":
            self.apply(self.uas.bye(leg.call, now, reason))
        self._release(leg, reason)

    def transfer(self, leg: SipLeg, target: str) -> None:
        assert self.uas is not None
        if target.startswith("queue:"):  # the agents' queues: the configured URI, or the PBX's
            queue = target.removeprefix("queue:").lower()
            host, port = leg.call.source
            target = dict(self.settings.transfer_targets).get(queue, f"sip:{queue}@{host}:{port}")
        try:
            out = self.uas.refer(leg.call, target, time.monotonic())
        except Exception as exc:  # not confirmed yet, or a target REFER cannot carry
            logger.warning("transfer not sent: %s", exc)
            self.core.caller_input(leg.call_id, TransferFailed(target, 400))
            return
        leg.transfer_target = target
        self.apply(out)

    def _transfer_result(self, event: TransferResult) -> None:
        leg = self.legs.get(event.call.key)
        if leg is None:
            return
        target, leg.transfer_target = leg.transfer_target or "", None
        if 200 <= event.status < 300:
            self._caller_gone(leg, "transferred")
            self.hang_up(leg, "transferred")
        else:
            self.core.caller_input(leg.call_id, TransferFailed(target, event.status))

    def _caller_gone(self, leg: SipLeg, reason: str) -> None:
        self.core.caller_gone(leg.call_id, reason)

    def _release(self, leg: SipLeg, reason: str) -> None:
        if leg.ended:
            return
        leg.ended = True
        self.core.caller_gone(leg.call_id, reason)
        self.legs.pop(leg.call.key, None)
        self.pacer.remove(leg.stream)
        leg.stream.close()
        self.core.release(leg.call_id, leg)
