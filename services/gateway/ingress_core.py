"""What every ingress does for a call, whatever the provider: the seam each adapter plugs into.

An adapter (Twilio media streams today; WebRTC and SIP next) terminates its provider's media and
signalling and gives the core one :class:`MediaLeg` per call. The core does the rest, once:

* **open** the call: the single-use token claimed cluster-wide (when the adapter redeemed one),
  admission and placement through the router, the media channel to the chosen host; a refusal
  comes back as :class:`Busy` (play the busy signal) or :class:`Refused` (close with the reason);
* **caller → session**: audio (:meth:`IngressCore.caller_audio`) and control inputs — playback
  heard, DTMF (:meth:`IngressCore.caller_input`) — over the host's media channel;
* **session → caller**: each command goes to its call's leg: audio and its end to play, a
  barge-in to stop playback at once (what the caller had heard then goes back to the session,
  which truncates with it), hang-up and transfer to the provider, the session's end to close;
* **the end**, from either side: the session is told the caller hung up
  (:meth:`IngressCore.caller_gone`), and :meth:`IngressCore.release` forgets the call;
* **a lost host**: when the media channel to a host cannot be re-established for
  ``MediaSettings.host_lost_s``, each live call on it is moved: the router places it on another
  host (``move_call``), where a new session resumes it, and the caller hears a gap, not a
  hang-up. A host being emptied (a drain past its deadline) asks for the same with
  :class:`MoveCall`. From the move's start commands for the call are taken from its new host
  only, so a host that was slow rather than dead cannot speak into it;
* **never dead air**: a call with no session to move to, or none within
  ``MediaSettings.no_session_s``, hears the unavailable announcement (:mod:`.announcement`)
  from the ingress itself and then ends, with the reason.

Playback accounting is the adapter's (it knows what "played" means on its media: Twilio marks,
RTP sent, a track's clock); the core only carries the figures.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from services.config import MediaSettings
from services.errors import TransportError
from services.gateway import announcement
from services.gateway.token_ledger import TokenLedger
from services.media.channel_client import Locate, MediaChannelClient
from services.media.vocabulary import (
    TRANSFER_REPORTED,
    AudioDone,
    CallEnded,
    CallerHungUp,
    CallInput,
    CallSpec,
    ClearPlayback,
    Command,
    Hangup,
    MoveCall,
    PlayAudio,
    PlaybackCut,
    Transfer,
)
from services.observability import metrics
from services.runtime.placement import Rejected
from services.telephony.stream_tokens import RedeemedToken

logger = logging.getLogger(__name__)


class RouterPort(Protocol):
    async def open_call(self, spec: CallSpec) -> Any: ...

    async def move_call(self, spec: CallSpec, from_host: str) -> Any: ...


class MediaLeg(Protocol):
    """An adapter's side of one call."""

    def play(self, command: PlayAudio) -> None:
        """Queue model audio for the caller (with the adapter's playback accounting)."""

    def audio_done(self, command: AudioDone) -> None:
        """The model finished an item's audio: flush what is held back for it."""

    def interrupt(self) -> PlaybackCut:
        """Barge-in: stop playback now, dropping media queued for the caller, and say what
        the caller had heard of each item at this moment."""

    def control(self, command: Hangup | Transfer) -> None:
        """Hang up or transfer through the provider (or just end the media if it cannot)."""

    def end(self, reason: str) -> None:
        """The session is gone: close the caller's media, saying why."""


@dataclasses.dataclass(frozen=True, slots=True)
class Busy:
    """Admission refused the call: the adapter plays its busy signal, then hangs up."""

    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Refused:
    """The call may not open at all (duplicate, token reused or uncheckable): close the media
    with ``code`` (RFC 6455 §7.4.1 numbering) and ``reason``."""

    code: int
    reason: str


# The host id of a call being moved: no host's commands match it until the move lands.
MOVING = ""
ANNOUNCEMENT_ITEM = "callray:announcement"


@dataclasses.dataclass(slots=True, eq=False)
class IngressCall:
    spec: CallSpec
    leg: MediaLeg
    link: MediaChannelClient
    host_id: str
    ended: bool = False

    @property
    def moving(self) -> bool:
        return self.host_id == MOVING


class IngressCore:
    def __init__(
        self,
        *,
        ingress_id: str,
        router: RouterPort,
        locate_channel: Callable[[Any], Locate],
        ledger: TokenLedger | None = None,
        media: MediaSettings | None = None,
    ) -> None:
        self.ingress_id = ingress_id
        self._router = router
        self._locate_channel = locate_channel
        # None: single use is enforced per process only (one ingress, or tests without Redis).
        self._ledger = ledger
        self._media = media or MediaSettings()
        # Loaded now: a bad CALLRAY_UNAVAILABLE_ANNOUNCEMENT fails the start, not a call.
        self._announcement = announcement.load(self._media.unavailable_announcement)
        self._links: dict[str, MediaChannelClient] = {}
        self.calls: dict[str, IngressCall] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for link in self._links.values():
            await link.close()

    # ----- open ----------------------------------------------------------------------------------

    async def open(
        self, spec: CallSpec, leg: MediaLeg, token: RedeemedToken | None = None
    ) -> IngressCall | Busy | Refused:
        """Claim the token, place the call and attach it to its host's channel."""
        if spec.call_id in self.calls:
            return Refused(1008, "call already streaming")
        if token is not None and self._ledger is not None:
            refused = await self._claim(self._ledger, token)
            if refused is not None:
                return refused
        spec = dataclasses.replace(spec, ingress_id=self.ingress_id)
        result = await self._router.open_call(spec)
        if isinstance(result, Rejected):
            logger.info("call refused: %s", result.reason)
            return Busy(result.reason)
        link = self._link(result.host_id, result.host)
        call = IngressCall(spec, leg, link, result.host_id)
        link.calls.add(spec.call_id)
        self.calls[spec.call_id] = call
        return call

    def _link(self, host_id: str, host: Any) -> MediaChannelClient:
        link = self._links.get(host_id)
        if link is None:
            link = MediaChannelClient(
                self._locate_channel(host),
                ingress_id=self.ingress_id,
                dispatch=lambda command: self._dispatch(command, host_id),
                interval_s=self._media.channel_interval_ms / 1000,
                on_lost=lambda: self._host_lost(host_id),
                lost_after_s=self._media.host_lost_s,
            )
            link.start()
            self._links[host_id] = link
        return link

    async def _claim(self, ledger: TokenLedger, token: RedeemedToken) -> Refused | None:
        try:
            first = await ledger.claim(token.nonce, token.expires_ms)
        except TransportError as exc:
            # Fail closed (see token_ledger): 1011, the server could not fulfil the request; the
            # Redis detail stays in our log, not in the peer's close frame.
            logger.error("refused a media stream: the token could not be checked: %s", exc)
            return Refused(1011, "stream token could not be checked")
        if not first:
            logger.warning("refused a media stream: its token was already used on another ingress")
            return Refused(1008, "stream token was already used")
        return None

    # ----- caller → session ----------------------------------------------------------------------

    def caller_audio(self, call_id: str, audio: bytes) -> None:
        call = self.calls.get(call_id)
        if call is not None and not call.ended and not call.moving:
            call.link.send(call_id, audio)

    def caller_input(self, call_id: str, message: CallInput) -> None:
        call = self.calls.get(call_id)
        if call is not None and not call.ended and not call.moving:
            call.link.send(call_id, message)

    def caller_gone(self, call_id: str, reason: str) -> None:
        """The caller's side ended (hung up, stream closed): the session ends the call."""
        call = self.calls.get(call_id)
        if call is not None and not call.ended:
            call.ended = True
            call.link.send(call_id, CallerHungUp(reason))

    def release(self, call_id: str, leg: MediaLeg) -> None:
        """The adapter is done with the call's media: forget it (only if it is still ``leg``'s:
        a refused duplicate must not release the stream it duplicated)."""
        call = self.calls.get(call_id)
        if call is None or call.leg is not leg:
            return
        if not call.ended:
            self.caller_gone(call_id, "stream_closed")
        del self.calls[call_id]
        call.link.calls.discard(call_id)

    # ----- a lost host ---------------------------------------------------------------------------

    def _host_lost(self, host_id: str) -> None:
        link = self._links.pop(host_id, None)
        if link is None:
            return
        moving = [c for c in self.calls.values() if c.host_id == host_id and not c.ended]
        if not moving:  # e.g. a drained host, released: nothing of ours was on it
            logger.info("media channel to session host %s is gone; no calls were on it", host_id)
            return
        logger.error("session host %s lost: moving its %d calls", host_id, len(moving))
        for call in moving:
            self._start_move(call, host_id)

    def _start_move(self, call: IngressCall, host_id: str) -> None:
        call.host_id = MOVING  # from now on the old host cannot speak into the call
        task = asyncio.ensure_future(self._move(call, host_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _move(self, call: IngressCall, host_id: str) -> None:
        call_id = call.spec.call_id
        spec = dataclasses.replace(call.spec, greet=False, resumed=True)
        move = asyncio.ensure_future(self._router.move_call(spec, host_id))
        done, _ = await asyncio.wait({move}, timeout=self._media.no_session_s)
        if not done:
            logger.error(
                "no session took the call within %g s of leaving %s",
                self._media.no_session_s,
                host_id,
                extra={"call_id": call_id},
            )
            self._announce_and_end(call, "no_session")
            # The router may still place it: end what that opens, nobody is left to hear it.
            move.add_done_callback(lambda m: self._abandon(call_id, m))
            return
        try:
            result = move.result()
        except Exception as exc:  # the router itself unreachable
            logger.error("could not move call off %s: %s", host_id, exc, extra={"call_id": call_id})
            result = Rejected("router_unreachable")
        if self.calls.get(call_id) is not call or call.ended:
            self._abandon(call_id, move)  # the caller hung up meanwhile
            return
        if isinstance(result, Rejected):
            self._announce_and_end(call, "no_capacity")
            return
        call.link.calls.discard(call_id)
        call.link = self._link(result.host_id, result.host)
        call.host_id = result.host_id
        call.link.calls.add(call_id)

    def _abandon(self, call_id: str, move: asyncio.Future[Any]) -> None:
        """A move that landed after its caller was gone: end the session it opened."""
        if move.cancelled() or move.exception() is not None:
            return
        result = move.result()
        if not isinstance(result, Rejected):
            self._link(result.host_id, result.host).send(call_id, CallerHungUp("caller_hangup"))

    def _announce_and_end(self, call: IngressCall, reason: str) -> None:
        """Never dead air: the caller hears the announcement, then the call ends (``reason``)."""
        call.ended = True
        metrics.call_announced(call.spec.transport, reason)
        leg = call.leg
        leg.interrupt()  # whatever the lost session had queued goes first
        call_id = call.spec.call_id
        leg.play(
            PlayAudio(
                call_id, self._announcement.encoded(call.spec.audio_format), ANNOUNCEMENT_ITEM
            )
        )
        leg.audio_done(AudioDone(call_id, ANNOUNCEMENT_ITEM))
        # The adapter paces (or the provider buffers) what it was handed: end once it has played.
        asyncio.get_running_loop().call_later(self._announcement.seconds + 0.3, leg.end, reason)

    # ----- session → caller ----------------------------------------------------------------------

    def _dispatch(self, command: Command, host_id: str) -> None:
        call = self.calls.get(command.call_id)
        if call is None or call.host_id != host_id:
            return  # not this host's call (any more): a host the call moved off cannot speak
        leg = call.leg
        if isinstance(command, PlayAudio):
            leg.play(command)
        elif isinstance(command, AudioDone):
            leg.audio_done(command)
        elif isinstance(command, ClearPlayback):
            cut = leg.interrupt()
            if cut.heard and command.speech_at > 0:
                metrics.barge_in_clear(
                    call.spec.transport, max(0.0, time.time() - command.speech_at)
                )
            # Sent even when nothing was playing, so the session never waits for it.
            call.link.send(command.call_id, cut)
        elif isinstance(command, Hangup | Transfer):
            # The session ends the call itself once it has sent this, unless the transfer's
            # outcome is reported back (TRANSFER_REPORTED): the call goes on until then.
            if isinstance(command, Hangup) or call.spec.transport not in TRANSFER_REPORTED:
                call.ended = True
            leg.control(command)
        elif isinstance(command, CallEnded):
            call.ended = True
            leg.end(command.reason)
        elif isinstance(command, MoveCall) and not call.ended:
            logger.info(
                "host %s hands the call off (%s)",
                host_id,
                command.reason,
                extra={"call_id": command.call_id},
            )
            self._start_move(call, host_id)
