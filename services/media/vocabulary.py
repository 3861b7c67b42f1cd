"""The call vocabulary: what flows between an ingress and a call's session.

:class:`CallSpec` opens a call (through the router, over Ray); **inputs** go ingress → session
(caller audio is plain ``bytes``; :data:`CallInput` is everything else) and **commands** go
session → ingress (:data:`Command`), both over the media channel (:mod:`services.media.channel`).
The session never knows its transport (STYLE.md, practice 2): it emits these commands and each
ingress adapter turns them into Twilio JSON, RTP or a WebRTC track. This module imports nothing
of callray's, so telephony codecs, the gateway and the runtime can all stand on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Final, Literal

AudioFormatName = Literal["audio/pcmu", "audio/pcma", "audio/pcm"]


@dataclasses.dataclass(frozen=True, slots=True)
class CallSpec:
    """Everything a host needs to open a call. ``caller`` holds provider metadata (numbers,
    SIDs); it is passed to the agent's context and never logged."""

    call_id: str
    transport: str = "test"
    audio_format: AudioFormatName = "audio/pcmu"
    agent: str | None = None
    caller: Mapping[str, str] = dataclasses.field(default_factory=dict)
    greet: bool = True
    # Which ingress's media channel this call's commands are pushed to: a host serves several
    # ingresses, each attached over its own channel.
    ingress_id: str = ""
    # The call was live on a host that was lost, and its ingress moved it here: the caller is
    # mid-conversation, so the agent says the line dropped instead of greeting.
    resumed: bool = False
    # The call runs at the model (a browser called it directly with a key we minted): the
    # session attaches to it by call id over a WebSocket sideband, runs its tools and writes its
    # events; no audio passes through callray.
    attach: bool = False


# ----- inputs: ingress → session -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


@dataclasses.dataclass(frozen=True, slots=True)
class Played:
    """The caller has heard ``ms`` more of an item's audio (from Twilio marks, RTP sent, ...)."""

    item_id: str
    content_index: int
    ms: float


@dataclasses.dataclass(frozen=True, slots=True)
class PlaybackCut:
    """The ingress stopped playback for a barge-in (Twilio ``clear``): ``heard`` is, per item
    and content index, the ms the caller had acknowledged at that moment. The session truncates
    with these, fresher than its own tracker by the hop's delay."""

    heard: tuple[tuple[str, int, int], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class CallerHungUp:
    reason: str = "caller_hangup"


# Transports whose ingress reports how a transfer went (our SIP UAS: the REFER's NOTIFYs): the
# call goes on after a Transfer until the ingress ends it (success) or says TransferFailed.
TRANSFER_REPORTED: Final = frozenset({"sip"})


@dataclasses.dataclass(frozen=True, slots=True)
class TransferFailed:
    """A transfer the agent asked for did not happen (a SIP REFER refused, or the far end's
    final status in the NOTIFY was not 2xx): the call goes on and the agent is told."""

    target: str
    status: int


CallInput = Dtmf | Played | PlaybackCut | CallerHungUp | TransferFailed


# ----- commands: session → ingress ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class PlayAudio:
    call_id: str
    data: bytes
    item_id: str
    content_index: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class AudioDone:
    """The model finished an item's audio: the ingress flushes what it still buffers for it."""

    call_id: str
    item_id: str
    content_index: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class ClearPlayback:
    """Drop audio queued for the caller at once (barge-in)."""

    call_id: str
    # Wall-clock time the session reacted to the caller's speech: the ingress measures how long
    # the clear took to go out (callray_barge_in_clear_seconds). Not part of its identity.
    speech_at: float = dataclasses.field(default=0.0, compare=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Hangup:
    call_id: str
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Transfer:
    call_id: str
    target: str


@dataclasses.dataclass(frozen=True, slots=True)
class CallEnded:
    """The session is gone; the ingress releases the call's media."""

    call_id: str
    reason: str


# The end reason of a session whose call went on on another host (moved off a lost or drained
# host): its call event is ``call.moved``, not ``call.ended``.
MOVED = "moved"


@dataclasses.dataclass(frozen=True, slots=True)
class MoveCall:
    """The host is being emptied (a drain past its deadline): the ingress moves the call to
    another host, as for a lost host, and the session here stays until the router closes it."""

    call_id: str
    reason: str


Command = PlayAudio | AudioDone | ClearPlayback | Hangup | Transfer | CallEnded | MoveCall


def is_audio(item: bytes | CallInput | Command) -> bool:
    """Whether ``item`` is audio, which is only worth its moment: under backpressure audio may
    be dropped (oldest first); every other input and command changes a call's state and never
    is."""
    return isinstance(item, bytes | PlayAudio)
