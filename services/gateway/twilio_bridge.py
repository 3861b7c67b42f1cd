"""One Twilio media stream ↔ one call's session, without sockets: the sans-I/O half of the
Twilio adapter (:mod:`.twilio_ingress` is the I/O half).

Inbound Twilio frames become actions for the adapter (open the call, forward media, tell the
session what was played or dialled, end); model audio and barge-ins become outbound frames. The
playback bookkeeping (media in chunks of ``chunk_ms``, a mark after each, barge-in ``clear``) is
:class:`~services.telephony.twilio_playback.TwilioPlayback`; framing is the injected
:class:`~services.telephony.media_streams.MediaStreamSerializer` (Twilio's by default), which is
how other providers' JSON media streams plug in.
"""

from __future__ import annotations

import dataclasses
import logging

from services.errors import MediaStreamProtocolError
from services.media.vocabulary import AudioDone, CallInput, Dtmf, PlayAudio, PlaybackCut
from services.telephony.media_streams import (
    DtmfReceived,
    MarkReceived,
    MediaReceived,
    MediaStreamSerializer,
    StreamConnected,
    StreamStarted,
    StreamStopped,
    TwilioSerializer,
    UnknownStreamEvent,
)
from services.telephony.stream_tokens import RedeemedToken, StreamTokens
from services.telephony.twilio_playback import SendMark, SendMedia, TwilioPlayback

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class OpenCall:
    call_id: str
    stream_id: str
    caller: dict[str, str]
    # Set when the stream's token was redeemed here: the gateway still has to claim it in the
    # cluster-wide ledger (I/O, so not in this bridge) before the call may open.
    token: RedeemedToken | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ForwardMedia:
    payload: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class ToSession:
    message: CallInput


@dataclasses.dataclass(frozen=True, slots=True)
class EndStream:
    """Close the media stream (with <Connect><Stream>, Twilio then ends the call)."""

    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Ignored:
    """An event Twilio may add one day (or a peer made up): nothing to do but say so, which the
    adapter does rate-limited per peer."""

    event: str


Action = OpenCall | ForwardMedia | ToSession | EndStream | Ignored


class TwilioBridge:
    def __init__(
        self,
        tokens: StreamTokens | None,
        *,
        serializer: MediaStreamSerializer | None = None,
        chunk_ms: int = 20,
        mark_ms: int = 20,
    ) -> None:
        self.serializer = serializer or TwilioSerializer()
        # No slack: the session truncates at what marks acknowledged, nothing guessed on top.
        self.playback = TwilioPlayback(truncate_slack_ms=0, chunk_ms=chunk_ms, mark_ms=mark_ms)
        self._tokens = tokens
        self.call_id: str | None = None
        self.stream_id: str | None = None

    # ----- Twilio → us -----------------------------------------------------------------------

    def receive(self, message: str | bytes) -> list[Action]:
        """Raises :class:`MediaStreamProtocolError` for a frame that cannot be used."""
        try:
            return self._receive(message)
        except MediaStreamProtocolError:
            raise
        except (ValueError, TypeError, KeyError, UnicodeError, RecursionError) as exc:
            # A parser bug must still close only this stream, with a reason and a log line.
            raise MediaStreamProtocolError(f"unusable frame ({type(exc).__name__})") from exc

    def _receive(self, message: str | bytes) -> list[Action]:
        event = self.serializer.parse(message)
        if isinstance(event, MediaReceived):
            return [ForwardMedia(event.payload)]
        if isinstance(event, MarkReceived):
            result = self.playback.on_mark(event.name)
            return [ToSession(result.played)] if result.played is not None else []
        if isinstance(event, StreamStarted):
            return [self._start(event)]
        if isinstance(event, DtmfReceived):
            return [ToSession(Dtmf(event.digit))]
        if isinstance(event, StreamStopped):
            return [EndStream("caller_hangup")]
        if isinstance(event, UnknownStreamEvent):
            return [Ignored(str(event.raw.get("event"))[:40])]
        if not isinstance(event, StreamConnected):
            logger.debug("ignoring Twilio event %s", type(event).__name__)
        return []

    def _start(self, event: StreamStarted) -> OpenCall:
        redeemed = None
        if self._tokens is not None:
            # Only a stream that Twilio opened from our own TwiML carries a valid, unused token.
            redeemed = self._tokens.redeem(event.custom_parameters.get("token", ""), event.call_id)
        self.call_id = event.call_id
        self.stream_id = event.stream_id
        caller = {k: v for k, v in event.custom_parameters.items() if k != "token"}
        caller["account_sid"] = event.account_id
        return OpenCall(event.call_id, event.stream_id, caller, redeemed)

    # ----- us → Twilio -----------------------------------------------------------------------

    def play(self, command: PlayAudio) -> list[str | bytes]:
        """Frames for a model audio delta (chunks with their marks)."""
        if self.stream_id is None:
            return []
        return self._frames(
            self.playback.on_model_audio(command.item_id, command.content_index, command.data)
        )

    def audio_done(self, command: AudioDone) -> list[str | bytes]:
        if self.stream_id is None:
            return []
        return self._frames(self.playback.on_audio_done(command.item_id, command.content_index))

    def interrupt(self) -> tuple[str | bytes | None, PlaybackCut]:
        """A barge-in: the ``clear`` frame to send (None when nothing of ours is playing) and
        what the caller had acknowledged as it goes out. The session truncates at this, fresher
        than its own tracker by the ingress → host hop."""
        interruption = self.playback.interrupt()
        cut = PlaybackCut(
            tuple((t.item_id, t.content_index, t.audio_end_ms) for t in interruption.truncations)
        )
        if not interruption.clear or self.stream_id is None:
            return None, cut
        return self.serializer.encode_clear(self.stream_id), cut

    def _frames(self, outbound: list[SendMedia | SendMark]) -> list[str | bytes]:
        assert self.stream_id is not None
        frames: list[str | bytes] = []
        for item in outbound:
            if isinstance(item, SendMedia):
                frames.append(self.serializer.encode_media(self.stream_id, item.payload))
            else:
                frames.append(self.serializer.encode_mark(self.stream_id, item.name))
        return frames


__all__ = [
    "Action",
    "EndStream",
    "ForwardMedia",
    "MediaStreamProtocolError",
    "OpenCall",
    "ToSession",
    "TwilioBridge",
]
