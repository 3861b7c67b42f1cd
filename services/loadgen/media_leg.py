"""One call's media leg: a :class:`TwilioCaller` on a :class:`MediaSocket`, driven by callbacks.

Each call keeps its own 20 ms grid, started when its stream opened, so the calls' phases stay
spread as their ramp placed them (the load shape of independent callers, not one synchronised
burst). A timer (``loop.call_later``) runs the caller's :meth:`~TwilioCaller.tick` when the next
grid point is due, and what the tick returns (a ``media`` frame and the mark echoes due with it)
leaves in one write; each received message goes to :meth:`~TwilioCaller.receive` as soon as the
socket has parsed it, and its answers are written at once. Nothing here waits in a task, so a
call costs no task switches and no futures per message.

Late is handled as before: a tick that runs late catches up on the grid and the caller records
the lag, and while the socket's write buffer is full no tick runs (they catch up once it drains),
as when ``await send()`` blocked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from websockets.exceptions import ConnectionClosedOK

from services.loadgen.media_socket import MediaSocket
from services.loadgen.twilio_caller import TwilioCaller

__all__ = ["MediaLeg"]


class MediaLeg:
    def __init__(
        self, socket: MediaSocket, caller: TwilioCaller, clock: Callable[[], float]
    ) -> None:
        self.socket = socket
        self.caller = caller
        self.clock = clock
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._timer: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        """Stream until the caller has sent ``stop`` or the ingress closed the connection.

        A clean close by the ingress is a hang-up (:meth:`TwilioCaller.peer_closed`); an abrupt
        one raises :class:`~websockets.exceptions.ConnectionClosedError`, and a malformed
        message :class:`~services.errors.MediaStreamProtocolError`.
        """
        socket = self.socket
        socket.closed.add_done_callback(self._on_closed)
        try:
            socket.send(self.caller.open(self.clock()))
            socket.attach(self._on_message, self._on_writable)
            self._tick()
            await self._done
        finally:
            # Once done, the callbacks still registered with the socket do nothing.
            self._finish(None)
            if self._timer is not None:
                self._timer.cancel()
            socket.closed.remove_done_callback(self._on_closed)

    def _tick(self) -> None:
        self._timer = None
        if self._done.done() or self.socket.writing_paused or not self.socket.is_open:
            return  # ended, or resumed by _on_writable, or ended by _on_closed
        caller = self.caller
        try:
            messages = caller.tick(self.clock())
        except Exception as exc:  # a bug: fail the run, do not leave it to the loop's log
            self._finish(exc)
            return
        if messages:
            self.socket.send(messages)
        if caller.done:
            self._finish(None)
            return
        delay = caller.next_tick_at - self.clock()
        self._timer = self._loop.call_later(max(0.0, delay), self._tick)

    def _on_writable(self) -> None:
        if self._timer is None:
            self._tick()

    def _on_message(self, message: str | bytes) -> None:
        if self._done.done():
            return
        try:
            answers = self.caller.receive(message, self.clock())
        except Exception as exc:
            self._finish(exc)
            return
        if answers:
            self.socket.send(answers)

    def _on_closed(self, _: asyncio.Future[None]) -> None:
        if self._done.done():
            return
        exc = self.socket.close_exc
        if isinstance(exc, ConnectionClosedOK):
            self.caller.peer_closed()
            self._finish(None)
        else:
            self._finish(exc)

    def _finish(self, exc: Exception | None) -> None:
        if self._done.done():
            return
        if exc is None:
            self._done.set_result(None)
        else:
            self._done.set_exception(exc)
