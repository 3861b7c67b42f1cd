"""The load generator's media WebSocket and call driver, with no socket.

The ingress end is websockets' own sans-I/O :class:`ServerProtocol`, cross-wired to the
:class:`MediaSocket` through a transport that hands every write straight to it, so the test
sees exactly the frames a server would (masked, as a client must send them) and which of them
left in one write. The calls run on the real event loop clock, a few ticks long.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosedError
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from services.errors import MediaStreamProtocolError
from services.loadgen.audio import tone_ulaw
from services.loadgen.media_leg import MediaLeg
from services.loadgen.media_socket import MediaSocket
from services.loadgen.script import CallerScript
from services.loadgen.twilio_caller import TwilioCaller
from services.loadgen.wire import StreamIdentity
from services.telephony.media_streams import TwilioSerializer
from tests.conftest import TIMEOUT_FACTOR

IDS = StreamIdentity("AC" + "0" * 32, "CA" + "1" * 32, "MZ" + "2" * 32)
SID = IDS.stream_sid
APP = TwilioSerializer()  # only its encoders, which are stateless
WAIT = 2.0 * TIMEOUT_FACTOR


class Ingress(asyncio.Transport):
    """The client's transport, and the server behind it."""

    def __init__(self) -> None:
        super().__init__()
        self.server = ServerProtocol()
        self.socket = MediaSocket(ClientProtocol(parse_uri("ws://ingress.test/twilio/media")))
        self.writes: list[list[Frame]] = []  # what each client write carried
        self.requests: list[Request] = []
        self.closing = False
        self.socket.connection_made(self)

    async def open(self) -> Request:
        handshake = asyncio.ensure_future(self.socket.handshake({"X-Twilio-Signature": "s1g"}))
        await asyncio.sleep(0)
        (request,) = self.requests
        self.server.send_response(self.server.accept(request))
        self.push()
        await handshake
        self.writes.clear()
        return request

    def push(self) -> None:
        """Deliver what the server has sent."""
        data = b"".join(self.server.data_to_send())
        if data:
            self.socket.data_received(data)

    def texts(self) -> list[dict[str, Any]]:
        return [json.loads(f.data) for w in self.writes for f in w if f.opcode is Opcode.TEXT]

    def hang_up(self, exc: Exception | None = None) -> None:
        """The server closes TCP (after its closing handshake, or abruptly with ``exc``)."""
        if exc is None:
            self.socket.eof_received()
        self.socket.connection_lost(exc)

    # asyncio.Transport, as far as MediaSocket uses it
    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closing
        self.server.receive_data(bytes(data))
        events = self.server.events_received()
        self.requests += [e for e in events if isinstance(e, Request)]
        frames = [e for e in events if isinstance(e, Frame)]
        if frames:
            self.writes.append(frames)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.server.receive_eof()


def make_caller(**script: Any) -> TwilioCaller:
    settings: dict[str, Any] = {"duration_s": 0.1, "speech": tone_ulaw(1000), "drain_s": 0.0}
    return TwilioCaller(IDS, CallerScript(**(settings | script)), {"token": "t0k"})


def start_call(ingress: Ingress, caller: TwilioCaller) -> asyncio.Future[None]:
    return asyncio.ensure_future(MediaLeg(ingress.socket, caller, loop_time).run())


def loop_time() -> float:
    return asyncio.get_running_loop().time()


async def until_sent(ingress: Ingress, messages: int) -> None:
    async with asyncio.timeout(WAIT):
        while len(ingress.texts()) < messages:
            await asyncio.sleep(0.002)


# --- the socket -----------------------------------------------------------------------------


async def test_the_handshake_is_websockets_own_with_our_headers_and_no_extension() -> None:
    ingress = Ingress()
    request = await ingress.open()
    assert request.headers["X-Twilio-Signature"] == "s1g"
    assert request.headers["User-Agent"].startswith("Python/")
    assert "Sec-WebSocket-Extensions" not in request.headers
    assert ingress.socket.is_open


async def test_messages_arrive_whole_in_order_and_pings_are_answered() -> None:
    ingress = Ingress()
    await ingress.open()
    received: list[str | bytes] = []
    ingress.server.send_text(b'{"early":0}')  # before attach: kept for it
    ingress.push()
    ingress.socket.attach(received.append, lambda: None)
    server = ingress.server
    server.send_text(b'{"a":1}')
    server.send_text(b'{"b":', fin=False)
    server.send_ping(b"p1")
    server.send_continuation(b"2}", fin=True)
    server.send_binary(b"\x00\x01")
    ingress.push()
    assert received == ['{"early":0}', '{"a":1}', '{"b":2}', b"\x00\x01"]
    ((pong,),) = ingress.writes
    assert (pong.opcode, pong.data) == (Opcode.PONG, b"p1")


async def test_several_messages_leave_in_one_write() -> None:
    ingress = Ingress()
    await ingress.open()
    assert ingress.socket.send(["one", "two"])
    ((first, second),) = ingress.writes
    assert (first.data, second.data) == (b"one", b"two")


async def test_invalid_utf8_fails_the_connection_with_1007() -> None:
    ingress = Ingress()
    await ingress.open()
    received: list[str | bytes] = []
    ingress.socket.attach(received.append, lambda: None)
    ingress.server.send_text(b"\xff\xfe")
    ingress.server.send_text(b"after")
    ingress.push()
    assert received == []
    ((close,),) = ingress.writes
    assert Close.parse(close.data).code == CloseCode.INVALID_DATA
    ingress.hang_up(ConnectionResetError())
    assert isinstance(ingress.socket.close_exc, ConnectionClosedError)


async def test_close_is_the_closing_handshake_then_waits_for_the_server() -> None:
    ingress = Ingress()
    await ingress.open()
    closing = asyncio.ensure_future(ingress.socket.close())
    await asyncio.sleep(0)
    ((close,),) = ingress.writes
    assert Close.parse(close.data).code == CloseCode.NORMAL_CLOSURE
    assert not closing.done()
    ingress.push()  # the server's answering close frame
    ingress.hang_up()
    await closing


# --- the call driver ------------------------------------------------------------------------


async def test_a_call_streams_on_its_own_grid_and_echoes_marks_with_the_next_frame() -> None:
    ingress = Ingress()
    await ingress.open()
    caller = make_caller()
    leg = start_call(ingress, caller)
    await until_sent(ingress, 3)  # connected, start, the first frame
    ingress.server.send_text(APP.encode_media(SID, b"\x55" * 160).encode())
    ingress.server.send_text(APP.encode_mark(SID, "m1").encode())
    ingress.push()
    await asyncio.wait_for(leg, WAIT)

    events = [message["event"] for message in ingress.texts()]
    assert events[:2] == ["connected", "start"] and events[-1] == "stop"
    assert events.count("media") == 5 and events.count("mark") == 1
    # The mark echo leaves with the frame of the tick at which its audio finished playing.
    (together,) = [w for w in ingress.writes if len(w) > 1 and b'"mark"' in w[0].data]
    assert [json.loads(f.data)["event"] for f in together] == ["mark", "media"]
    assert caller.done and caller.ended_by == "caller"
    assert caller.stats.marks_received == caller.stats.marks_echoed == 1


async def test_a_clean_close_by_the_ingress_is_a_hang_up() -> None:
    ingress = Ingress()
    await ingress.open()
    caller = make_caller(duration_s=5.0)
    leg = start_call(ingress, caller)
    await until_sent(ingress, 3)  # connected, start, the first frame
    ingress.server.send_close(CloseCode.NORMAL_CLOSURE, "busy")
    ingress.push()
    frames_then = caller.stats.frames_sent
    await asyncio.sleep(0.05)
    assert caller.stats.frames_sent == frames_then  # nothing sent while closing
    ingress.hang_up()
    await asyncio.wait_for(leg, WAIT)
    assert caller.ended_by == "ingress" and ingress.socket.close_reason == "busy"


async def test_an_abrupt_close_or_a_malformed_message_fails_the_call() -> None:
    ingress = Ingress()
    await ingress.open()
    running = start_call(ingress, make_caller(duration_s=5.0))
    await asyncio.sleep(0.01)
    ingress.hang_up(ConnectionResetError())
    with pytest.raises(ConnectionClosedError):
        await asyncio.wait_for(running, WAIT)

    ingress = Ingress()
    await ingress.open()
    running = start_call(ingress, make_caller(duration_s=5.0))
    await until_sent(ingress, 3)
    ingress.server.send_text(b'{"event": "media"')
    ingress.push()
    with pytest.raises(MediaStreamProtocolError):
        await asyncio.wait_for(running, WAIT)


async def test_no_tick_runs_while_the_write_buffer_is_full_then_they_catch_up() -> None:
    ingress = Ingress()
    await ingress.open()
    caller = make_caller(duration_s=1.0, echo=False)
    leg = start_call(ingress, caller)
    await until_sent(ingress, 3)  # connected, start, the first frame
    ingress.socket.pause_writing()
    writes = len(ingress.writes)
    await asyncio.sleep(0.07)
    assert len(ingress.writes) == writes
    ingress.socket.resume_writing()
    caught_up = ingress.writes[writes]
    assert len(caught_up) >= 3  # the ticks due while paused, in one write
    assert caller.stats.max_tick_lag_ms >= 40
    leg.cancel()
