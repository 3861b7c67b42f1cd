"""A simulated call's media WebSocket: websockets' sans-I/O client under a thin asyncio protocol.

At 100 calls the load generator moves 20,000 WebSocket messages a second on the same cores as
the system it measures. websockets' asyncio connection spends more CPU on each message than the
caller logic does (a ``send`` coroutine and context manager per message; per received message a
queue, a future and a task switch), so the media leg runs on the same protocol core,
:class:`websockets.client.ClientProtocol` (framing, masking, size and UTF-8 checks, answers to
pings, the closing handshake), through its documented sans-I/O interface (websockets docs,
"Integrate the Sans-I/O layer"), with callbacks instead of tasks: a received message goes to
:attr:`MediaSocket.on_message` as soon as it is parsed, and :meth:`MediaSocket.send` writes
several messages in one write.

What goes on the wire is what websockets' asyncio client sends with the options the load
generator used (``compression=None``): the same handshake request with its ``User-Agent``, no
extension, a keepalive ping every 20 s that fails the connection (1011) when its pong is 20 s
late, and a 10 s wait for the server to close TCP after the closing handshake. Unlike that
client it follows no redirect and uses no proxy (the voice webhook's aiohttp client uses none
either).
"""

from __future__ import annotations

import asyncio
import random
import ssl
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Final, cast

from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import USER_AGENT
from websockets.protocol import State
from websockets.uri import parse_uri

__all__ = ["MediaSocket"]

# websockets.asyncio.client.connect's defaults.
_PING_INTERVAL_S: Final = 20.0
_PING_TIMEOUT_S: Final = 20.0
_CLOSE_TIMEOUT_S: Final = 10.0


def _nothing() -> None:
    pass


class MediaSocket(asyncio.Protocol):
    """One client WebSocket connection, open once :meth:`connect` returns.

    Once :meth:`attach` has been called, ``on_message`` receives every text (``str``) and
    binary (``bytes``) message in order, and ``on_writable`` is called when the transport's
    buffer has drained after ``writing_paused`` was set. ``closed`` resolves once the TCP
    connection is gone, and then ``close_exc`` says whether the close was clean.
    """

    def __init__(self, protocol: ClientProtocol) -> None:
        loop = asyncio.get_running_loop()
        self.protocol = protocol
        self._backlog: list[str | bytes] = []  # messages received before attach()
        self.on_message: Callable[[str | bytes], None] = self._backlog.append
        self.on_writable: Callable[[], None] = _nothing
        self.writing_paused = False
        self.closed: asyncio.Future[None] = loop.create_future()
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._response: asyncio.Future[None] = loop.create_future()
        self._fragments: list[bytes] = []
        self._fragmented_text = False
        self._failed = False  # we failed the connection: deliver nothing more
        self._ping: bytes | None = None  # the keepalive ping awaiting its pong
        self._ping_sent_at = 0.0
        self._timer: asyncio.TimerHandle | None = None  # the next keepalive step
        self._close_deadline: asyncio.TimerHandle | None = None

    @classmethod
    async def connect(
        cls, url: str, *, headers: Mapping[str, str], max_size: int | None
    ) -> MediaSocket:
        """Open a connection to ``url`` (``ws://`` or ``wss://``) and complete the handshake.

        Raises :class:`OSError` if it cannot connect and
        :class:`~websockets.exceptions.InvalidHandshake` if the server refuses the upgrade.
        """
        uri = parse_uri(url)
        socket = cls(ClientProtocol(uri, max_size=max_size))
        tls = ssl.create_default_context() if uri.secure else None
        await socket._loop.create_connection(lambda: socket, uri.host, uri.port, ssl=tls)
        await socket.handshake(headers)
        return socket

    async def handshake(self, headers: Mapping[str, str]) -> None:
        """The opening handshake on a connected transport (aborted if it fails)."""
        try:
            request = self.protocol.connect()
            request.headers.update(headers)
            request.headers.setdefault("User-Agent", USER_AGENT)
            self.protocol.send_request(request)
            self._flush()
            await self._response
            if self.protocol.handshake_exc is not None:
                raise self.protocol.handshake_exc
        except BaseException:
            self.abort()
            raise
        self._timer = self._loop.call_later(_PING_INTERVAL_S, self._send_ping)

    def attach(
        self, on_message: Callable[[str | bytes], None], on_writable: Callable[[], None]
    ) -> None:
        """Hand messages to ``on_message`` from now on, starting with any that arrived since
        the handshake (as websockets' client would have queued them)."""
        self.on_message, self.on_writable = on_message, on_writable
        backlog, self._backlog = self._backlog, []
        for message in backlog:
            on_message(message)

    @property
    def is_open(self) -> bool:
        return self.protocol.state is State.OPEN

    @property
    def close_reason(self) -> str | None:
        """The reason in the server's close frame (``None`` while open)."""
        return self.protocol.close_reason

    @property
    def close_exc(self) -> ConnectionClosed:
        """:class:`~websockets.exceptions.ConnectionClosedOK` after a clean closing handshake,
        :class:`~websockets.exceptions.ConnectionClosedError` otherwise (valid once closed)."""
        return self.protocol.close_exc

    def send(self, messages: Iterable[str]) -> bool:
        """Send each message as a text frame, all in one write; ``False`` (nothing sent) when
        the connection is no longer open."""
        protocol = self.protocol
        if protocol.state is not State.OPEN:
            return False
        for message in messages:
            protocol.send_text(message.encode())
        self._flush()
        return True

    async def close(self) -> None:
        """The closing handshake (1000, or none if one is under way), then wait for the server
        to close TCP, aborting the connection if it has not after 10 s."""
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(CloseCode.NORMAL_CLOSURE)
            self._flush()
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), _CLOSE_TIMEOUT_S)
        except TimeoutError:
            self.abort()
        except BaseException:  # cancelled: do not leave the connection behind
            self.abort()
            raise

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        events = self.protocol.events_received()
        self._flush()  # pongs, and the answer to a close frame
        if self.protocol.close_expected():
            self._expect_close()
        for event in events:
            if isinstance(event, Frame):
                self._on_frame(event)
            elif not self._response.done():
                self._response.set_result(None)  # the handshake response

    def eof_received(self) -> None:
        self.protocol.receive_eof()
        self._flush()
        # Returning None closes the transport: after the closing handshake nothing is written.

    def connection_lost(self, exc: Exception | None) -> None:
        self.protocol.receive_eof()  # idempotent; the state becomes CLOSED
        for timer in (self._timer, self._close_deadline):
            if timer is not None:
                timer.cancel()
        if not self._response.done():
            self._response.set_result(None)  # handshake_exc says what went wrong
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.on_writable()

    # --- internals -----------------------------------------------------------------------------

    def _flush(self) -> None:
        """Write what the protocol has to send; an empty chunk means half-close (sans-I/O)."""
        writes = self.protocol.data_to_send()
        transport = self._transport
        if not writes or transport is None or transport.is_closing():
            return
        if all(writes):
            transport.write(writes[0] if len(writes) == 1 else b"".join(writes))
            return
        for chunk in writes:
            if chunk:
                transport.write(chunk)
            elif transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()

    def _expect_close(self) -> None:
        """The server should close TCP now; if it has not after websockets' close_timeout,
        abort the connection."""
        if self._close_deadline is None:
            self._close_deadline = self._loop.call_later(_CLOSE_TIMEOUT_S, self.abort)

    def _on_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                self._deliver(frame.data, text=opcode is Opcode.TEXT)
            else:
                self._fragments = [bytes(frame.data)]
                self._fragmented_text = opcode is Opcode.TEXT
        elif opcode is Opcode.CONT:
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                data, self._fragments = b"".join(self._fragments), []
                self._deliver(data, text=self._fragmented_text)
        elif opcode is Opcode.PONG and self._ping is not None and frame.data == self._ping:
            self._on_pong()

    def _deliver(self, data: bytes | bytearray | memoryview, *, text: bool) -> None:
        if self._failed:
            return
        if not text:
            self.on_message(bytes(data))
            return
        try:
            message = str(data, "utf-8")
        except UnicodeDecodeError as exc:
            # What websockets' recv() does with invalid UTF-8 (RFC 6455 §8.1).
            self.protocol.fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
            self._flush()
            self._expect_close()
            self._failed = True
            return
        self.on_message(message)

    # Keepalive, as websockets' asyncio connection does it (Connection.keepalive).

    def _send_ping(self) -> None:
        if self.protocol.state is not State.OPEN:
            return
        self._ping = struct.pack("!I", random.getrandbits(32))
        self._ping_sent_at = self._loop.time()
        self.protocol.send_ping(self._ping)
        self._flush()
        self._timer = self._loop.call_later(_PING_TIMEOUT_S, self._ping_timed_out)

    def _on_pong(self) -> None:
        self._ping = None
        if self._timer is not None:
            self._timer.cancel()
        # The next ping goes ping_interval after this one was sent (or now, if it was late).
        delay = self._ping_sent_at + _PING_INTERVAL_S - self._loop.time()
        self._timer = self._loop.call_later(max(0.0, delay), self._send_ping)

    def _ping_timed_out(self) -> None:
        self._timer = None
        if self.protocol.state is State.OPEN:
            self.protocol.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            self._flush()
        self._expect_close()
