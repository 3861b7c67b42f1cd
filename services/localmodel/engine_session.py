"""What a WebRTC session and a SIP session of the local model share: the engine between a
caller's audio and the session's event listeners.

:class:`EngineSession` feeds the engine (the caller's audio, client events from a channel or a
sideband, its own deadline timer), sends what it emitted to every listener (sidebands) and to
:meth:`EngineSession.deliver` (a WebRTC data channel; nothing for SIP), and puts the model's
audio through the :class:`.OutputAudioBuffer` onto a 24 kHz :class:`Playout` the transport
drains a frame at a time (a WebRTC track, a SIP pacer). A client's ``output_audio_buffer.clear``
empties it and truncates the item at what was handed out; the engine never sees it. Nothing
waits in a loop here: each caller of these methods feeds the engine and sends what it emitted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, Final, Protocol

from services.aio import Cancellable, Timers
from services.media.playout import PCM24K, Playout
from services.media.vocabulary import Played

from .engine import RealtimeEngine
from .output_audio_buffer import OutputAudioBuffer
from .session_io import SESSION_UPDATED, SessionIO

OUTPUT_CLEAR: Final = "output_audio_buffer.clear"


class Listener(Protocol):
    """Another party to the session's events (a sideband socket)."""

    def send(self, text: str) -> None: ...

    def close(self) -> None: ...


class EngineSession:
    def __init__(
        self,
        call_id: str,
        engine: RealtimeEngine,
        io: SessionIO,
        *,
        clock: Callable[[], float] | None = None,
        timers: Timers | None = None,
    ) -> None:
        """``clock`` (monotonic seconds) and ``timers`` default to the running loop's."""
        loop = asyncio.get_running_loop()  # made by a request handler, on the loop
        self.call_id = call_id
        self.engine = engine
        self.io = io
        self._clock: Callable[[], float] = clock or loop.time
        self._timers: Timers = timers or loop
        # A report per frame: the buffer's `started` goes out with the response's first frame.
        self.playout = Playout(report_ms=PCM24K.frame_ms)
        self.buffer = OutputAudioBuffer(self.playout, engine.new_id)
        self._listeners: set[Listener] = set()
        self._tick_timer: Cancellable | None = None
        self._tick_at: float | None = None
        self.ended = asyncio.Event()
        self.end_reason: str | None = None
        self.frames_in = 0

    # ----- listeners (.sideband.run_sideband) -----------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        self._listeners.add(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.discard(listener)

    def close_listeners(self) -> None:
        for listener in list(self._listeners):
            listener.close()
        self._listeners.clear()

    # ----- into the engine ------------------------------------------------------------------

    def receive_client(self, message: str | bytes) -> None:
        """A client event, from a data channel or a sideband."""
        if self.ended.is_set():
            return
        clear = _output_clear(message)
        if clear is not None:
            self.io.observe("client", clear)
            events, heard = self.buffer.clear()
            for item_id, content_index, ms in heard:
                self.engine.truncate_heard(item_id, content_index, ms)
            for event in events:
                self.send(event)
        else:
            obj = self.engine.receive_frame(message, self._clock())
            if obj is not None:
                self.io.observe("client", obj)
        self.after()

    def audio_in(self, pcm: bytes) -> None:
        """The caller's audio, in the format the engine appends (it converts)."""
        if self.ended.is_set():
            return
        self.frames_in += 1
        self.engine.append_audio(pcm, self._clock())
        self.after()

    def _tick(self) -> None:
        self._tick_timer, self._tick_at = None, None
        if self.ended.is_set():
            return
        self.engine.tick(self._clock())
        self.after()

    def stop_timer(self) -> None:
        if self._tick_timer is not None:
            self._tick_timer.cancel()
        self._tick_timer, self._tick_at = None, None

    # ----- out of the engine ----------------------------------------------------------------

    def after(self) -> None:
        """After the engine was fed: start its speech renderings, send what it emitted, and
        be woken at its next deadline."""
        self.io.start_renders(self.engine, self._tick)
        for event in self.engine.take_events():
            for out in self.buffer.route(event):
                self.send(out)
        deadline = self.engine.next_deadline()
        if self._tick_timer is not None and deadline != self._tick_at:
            self.stop_timer()
        if deadline is not None and self._tick_timer is None and not self.ended.is_set():
            self._tick_at = deadline
            self._tick_timer = self._timers.call_later(
                max(0.0, deadline - self._clock()), self._tick
            )

    def played(self, played: list[Played]) -> None:
        """What the transport handed out: the buffer's started/stopped events."""
        for event in self.buffer.played(played):
            self.send(event)

    def send(self, event: dict[str, Any]) -> None:
        if event["type"] == SESSION_UPDATED and self.io.hold_session_updated(
            lambda: self._send_now(event)
        ):
            return
        self._send_now(event)

    def _send_now(self, event: dict[str, Any]) -> None:
        if self.ended.is_set():
            return
        self.io.observe("server", event)
        text = json.dumps(event)
        for listener in self._listeners:
            listener.send(text)
        self.deliver(text)

    def deliver(self, text: str) -> None:
        """The transport's own event path (a WebRTC data channel); none by default."""


def _output_clear(message: str | bytes) -> dict[str, Any] | None:
    """The client event if ``message`` is an ``output_audio_buffer.clear``, else ``None``."""
    if not isinstance(message, str) or OUTPUT_CLEAR not in message:
        return None
    try:
        obj = json.loads(message)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and obj.get("type") == OUTPUT_CLEAR else None
