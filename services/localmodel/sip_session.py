"""The engine side of one accepted SIP call in the local model: between the SIP front's RTP and
the call's sidebands, so that the front only moves bytes.

As OpenAI's SIP connector holds a call (reference/telephony.md §4.1): the caller's audio and the
model's are G.711 μ-law on RTP, 20 ms a packet (RFC 3551 §4.5.14); events go only to sidebands
(``/v1/realtime?call_id=``, :mod:`.sideband`), which see every event from when they attach and
whose client events are handled as the session's own (reference/realtime-protocol.md §6.5).

The front's side (all synchronous, on the event loop):

* :meth:`SipSession.caller_audio`: each RTP payload (``audio/pcmu``, after the front's jitter
  buffer), fed to the engine as track audio (:meth:`RealtimeEngine.append_audio` converts it to
  the session's input format);
* :meth:`SipSession.start_audio`: ``send(frame)`` is then called every 20 ms of the session's
  clock with 160 bytes of μ-law (the codec's silence, ``0xFF``, when the model is quiet), for
  the front to put in an RTP packet; a front with its own pacer calls :meth:`next_frame` instead;
* :meth:`SipSession.dtmf`: the end of an RFC 4733 event; the sidebands get
  ``input_audio_buffer.dtmf_event_received`` (§4.2: SIP only, no ``event_id``).

The model's audio goes through the same :class:`.OutputAudioBuffer` as a WebRTC session's (so
the sidebands get ``output_audio_buffer.started``/``stopped``/``cleared``, and a barge-in or a
sideband's ``output_audio_buffer.clear`` truncates at what was handed out), at 24 kHz, and is
cut to 8 kHz μ-law a frame at a time. Nothing loops here: the pacer, the engine's deadline, the
front and the sidebands each call in. :meth:`SipSession.end` is final and closes the sidebands.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from services.aio import Cancellable, Timers

from .audio import PCM, PCMU, AudioConverter, convert
from .engine import RealtimeEngine
from .engine_session import EngineSession
from .session_io import SessionIO

__all__ = ["FRAME_BYTES", "FRAME_S", "SipSession"]

log = logging.getLogger(__name__)

FRAME_S: Final = 0.02
FRAME_BYTES: Final = 160  # 20 ms of 8 kHz μ-law
DTMF_KEYS: Final = frozenset("0123456789*#ABCD")
# A pacer that fell this far behind (a stalled loop) starts again from now instead of
# sending the missed frames in a burst.
MAX_LAG_S: Final = 0.2


class SipSession(EngineSession):
    def __init__(
        self,
        call_id: str,
        engine: RealtimeEngine,
        io: SessionIO,
        *,
        clock: Callable[[], float] | None = None,
        timers: Timers | None = None,
        unix_clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` (seconds, monotonic) and ``timers`` pace the audio and the engine; both
        default to the running loop's. ``unix_clock`` stamps DTMF events."""
        super().__init__(call_id, engine, io, clock=clock, timers=timers)
        self._unix_clock = unix_clock
        self._caller = AudioConverter(PCMU, PCM)
        self._send_audio: Callable[[bytes], None] | None = None
        self._next_frame_at = 0.0
        self._pacer: Cancellable | None = None
        self.frames_out = 0
        self.after()  # session.created: no sideband yet to hear it

    # ----- the SIP front ----------------------------------------------------------------------

    def caller_audio(self, payload: bytes) -> None:
        """One RTP payload of the caller's μ-law audio."""
        if not self.ended.is_set():
            self.audio_in(self._caller.feed(payload))

    def start_audio(self, send: Callable[[bytes], None]) -> None:
        """Call ``send`` with each 20 ms frame of the model's μ-law audio, from now on."""
        if self._send_audio is not None:
            return
        self._send_audio = send
        self._next_frame_at = self._clock()
        self._pace()

    def next_frame(self) -> bytes:
        """The next 20 ms of the model's audio (160 bytes of μ-law), as the caller hears it."""
        pcm, played = self.playout.next_frame()
        self.played(played)
        self.frames_out += 1
        return convert(pcm, PCM, PCMU)

    def dtmf(self, digit: str) -> None:
        """The caller pressed ``digit`` (the end of an RFC 4733 event)."""
        if self.ended.is_set() or digit not in DTMF_KEYS:
            return
        event = {
            "type": "input_audio_buffer.dtmf_event_received",
            "event": digit,
            "received_at": int(self._unix_clock()),
        }
        self.send(event)

    # ----- the end ----------------------------------------------------------------------------

    def end(self, reason: str) -> None:
        """End the session (once): its audio stops, its sidebands are closed (1000)."""
        if self.end_reason is not None:
            return
        self.end_reason = reason
        log.info("local model: SIP session %s ended: %s", self.call_id, reason)
        if self._pacer is not None:
            self._pacer.cancel()
        self._pacer = None
        self.stop_timer()
        self.io.close()
        self.close_listeners()
        self.ended.set()

    # ----- inside -----------------------------------------------------------------------------

    def _pace(self) -> None:
        self._pacer = None
        if self.ended.is_set() or self._send_audio is None:
            return
        self._send_audio(self.next_frame())
        self._next_frame_at += FRAME_S
        now = self._clock()
        if self._next_frame_at < now - MAX_LAG_S:
            self._next_frame_at = now
        self._pacer = self._timers.call_later(max(0.0, self._next_frame_at - now), self._pace)
