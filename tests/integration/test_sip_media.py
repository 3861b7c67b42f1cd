"""The SIP ingress's RTP half on real UDP sockets (127.0.0.1): a caller's packets in order to the
model untouched, DTMF once, foreign sources dropped, the model's audio out paced and accounted
to the packet, hold, the port range; and the pacer's clock, virtually."""

from __future__ import annotations

import asyncio
import itertools
import socket
from typing import Any

import pytest

from services.media.vocabulary import Played
from services.telephony.rtp import RtpPacket, RtpSender, TelephoneEvent
from services.telephony.rtp_io import FRAME_S, Pacer, RtpPorts, RtpStream
from services.telephony.sip.offer_answer import NegotiatedAudio

pytestmark = pytest.mark.integration


class Caller(asyncio.DatagramProtocol):
    """The far end: sends PCMU from its own port, keeps what it receives."""

    def __init__(self) -> None:
        self.received: list[RtpPacket] = []
        self.transport: Any = None
        self.sender = RtpSender(0)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append(RtpPacket.parse(data))

    @property
    def address(self) -> tuple[str, int]:
        return self.transport.get_extra_info("sockname")[:2]  # type: ignore[no-any-return]

    def send(self, to: int, payload: bytes) -> None:
        self.transport.sendto(self.sender.packet(payload), ("127.0.0.1", to))


class Recorder:
    def __init__(self) -> None:
        self.audio: list[bytes] = []
        self.digits: list[str] = []
        self.played: list[Played] = []


async def _call(direction: str = "sendrecv") -> tuple[Caller, RtpStream, Recorder]:
    loop = asyncio.get_running_loop()
    _t, caller = await loop.create_datagram_endpoint(Caller, local_addr=("127.0.0.1", 0))
    got = Recorder()
    audio = NegotiatedAudio("PCMU", 0, 101, 20, caller.address[0], caller.address[1], direction)  # type: ignore[arg-type]
    stream = RtpStream(
        audio, on_audio=got.audio.append, on_dtmf=got.digits.append, on_played=got.played.extend
    )
    await RtpPorts("127.0.0.1", 20000, 60000).open(stream)
    return caller, stream, got


async def until(check: Any, what: str) -> None:
    async with asyncio.timeout(5):
        while not check():
            await asyncio.sleep(0.005)


async def test_caller_audio_reaches_the_model_as_sent_and_a_digit_once() -> None:
    caller, stream, got = await _call()
    frames = [bytes([n]) * 160 for n in range(1, 6)]
    for frame in frames:
        caller.send(stream.port, frame)
    await until(lambda: len(got.audio) == 5, "five frames")
    assert got.audio == frames  # PCMU passed through untouched, in order
    start = caller.sender.timestamp
    for n in range(4):  # RFC 4733: one event, its end sent three times
        end = n >= 1
        event = TelephoneEvent(event=5, end=end, volume=10, duration=160 * (n + 1))
        datagram = caller.sender.packet(bytes(event), marker=n == 0)
        packet = RtpPacket.parse(datagram)
        fixed = RtpPacket(101, packet.sequence, start, packet.ssrc, bytes(event), marker=n == 0)
        caller.transport.sendto(bytes(fixed), ("127.0.0.1", stream.port))
    await until(lambda: got.digits, "the digit")
    await asyncio.sleep(0.05)
    assert got.digits == ["5"]
    stream.close()
    caller.transport.close()


async def test_a_foreign_source_is_dropped_once_latched() -> None:
    caller, stream, got = await _call()
    caller.send(stream.port, b"\x01" * 160)
    await until(lambda: got.audio, "the first frame latches")
    intruder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    intruder.bind(("127.0.0.1", 0))
    for _n in range(50):
        intruder.sendto(RtpSender(0).packet(b"\x02" * 160), ("127.0.0.1", stream.port))
    caller.send(stream.port, b"\x03" * 160)
    await until(lambda: len(got.audio) == 2, "the caller's next frame")
    assert got.audio == [b"\x01" * 160, b"\x03" * 160]
    assert stream.latch.drops["source"] == 50
    intruder.close()
    stream.close()
    caller.transport.close()


async def test_the_models_audio_goes_out_a_frame_a_tick_and_is_accounted_to_the_packet() -> None:
    caller, stream, got = await _call()
    stream.playout.push("item1", 0, b"\x11" * 800)  # 100 ms of μ-law
    stream.playout.done("item1")
    for n in range(7):
        stream.tick(n * FRAME_S)
    await until(lambda: len(caller.received) == 7, "seven packets")
    payloads = [p.payload for p in caller.received]
    assert payloads[:5] == [b"\x11" * 160] * 5
    assert payloads[5:] == [b"\xff" * 160] * 2  # μ-law silence when idle
    assert sum(p.ms for p in got.played) == 100
    assert caller.received[0].marker and not caller.received[1].marker
    seqs = [p.sequence for p in caller.received]
    assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(seqs))
    # A barge-in: what was sent is what is reported heard, exact to the packet.
    stream.playout.push("item2", 0, b"\x22" * 1600)
    stream.tick(0.14)
    stream.tick(0.16)
    cut, _played = stream.playout.interrupt()
    assert cut.heard == (("item2", 0, 40),)
    stream.close()
    caller.transport.close()


async def test_on_hold_nothing_is_sent_nor_passed_on_and_resume_starts_a_talkspurt() -> None:
    caller, stream, got = await _call()
    stream.tick(0.0)
    await until(lambda: len(caller.received) == 1, "a packet before the hold")
    held = NegotiatedAudio("PCMU", 0, 101, 20, *caller.address, "inactive")
    stream.renegotiate(held)
    assert stream.on_hold
    stream.playout.push("item1", 0, b"\x11" * 160)
    for n in range(1, 4):
        stream.tick(n * FRAME_S)
    caller.send(stream.port, b"\x05" * 160)
    await asyncio.sleep(0.05)
    assert len(caller.received) == 1 and got.audio == []
    stream.renegotiate(NegotiatedAudio("PCMU", 0, 101, 20, *caller.address, "sendrecv"))
    stream.tick(0.08)
    await until(lambda: len(caller.received) == 2, "audio after the resume")
    first, resumed = caller.received
    assert resumed.payload == b"\x11" * 160  # held back, not lost, and not counted as heard
    assert resumed.marker
    assert (resumed.timestamp - first.timestamp) % (1 << 32) == 4 * 160  # the clock ran on
    stream.close()
    caller.transport.close()


async def test_ports_are_even_taken_ones_skipped_and_a_full_range_refused() -> None:
    first = _free_even_pair()
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", first))  # someone else's
    ports = RtpPorts("127.0.0.1", first - 1, first + 3)  # even ports: first, first + 2
    caller, stream, _got = await _call()
    stream.close()
    streams = [
        RtpStream(stream.audio, on_audio=print, on_dtmf=print, on_played=print) for _ in range(2)
    ]
    await ports.open(streams[0])
    assert streams[0].port == first + 2
    with pytest.raises(OSError, match="no free RTP port"):
        await ports.open(streams[1])
    streams[0].close()
    blocker.close()
    caller.transport.close()


def _free_even_pair() -> int:
    for port in range(30000, 60000, 2):
        socks = []
        try:
            for p in (port, port + 2):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return port
    raise RuntimeError("no two free even UDP ports")


async def test_the_pacer_ticks_every_20_ms_of_its_clock_and_measures_lateness() -> None:
    now = [100.0]
    lateness: list[float] = []

    async def sleep(seconds: float) -> None:
        now[0] += seconds + 0.001  # the loop wakes 1 ms late each time
        await asyncio.sleep(0)

    pacer = Pacer(clock=lambda: now[0], sleep=sleep, on_late=lateness.append)
    ticked: list[float] = []

    class Stream:
        def tick(self, at: float) -> None:
            ticked.append(at)

        def report(self) -> None:
            pass

    pacer.add(Stream())  # type: ignore[arg-type]
    task = asyncio.ensure_future(pacer.run())
    while pacer.ticks < 5:
        await asyncio.sleep(0)
    task.cancel()
    assert [round(t - 100.0, 3) for t in ticked[:5]] == [0.0, 0.021, 0.041, 0.061, 0.081]
    assert [round(x, 4) for x in lateness[:5]] == [0.0, 0.001, 0.001, 0.001, 0.001]


async def test_the_pacer_sleeps_without_streams_and_starts_its_clock_with_the_first() -> None:
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds
        await asyncio.sleep(0)

    pacer = Pacer(clock=lambda: now[0], sleep=sleep)
    task = asyncio.ensure_future(pacer.run())
    for _ in range(20):
        await asyncio.sleep(0)
    assert pacer.ticks == 0 and now[0] == 0.0  # no stream: no tick, no wake-up

    ticked: list[float] = []

    class Stream:
        def tick(self, at: float) -> None:
            ticked.append(round(at, 6))

        def report(self) -> None: ...

    stream = Stream()
    now[0] = 5.0
    pacer.add(stream)  # type: ignore[arg-type]
    while pacer.ticks < 3:
        await asyncio.sleep(0)
    assert ticked[:3] == [5.0, 5.02, 5.04]  # a fresh clock, no catch-up of the idle time
    pacer.remove(stream)  # type: ignore[arg-type]
    ticks = pacer.ticks
    for _ in range(20):
        await asyncio.sleep(0)
    assert pacer.ticks <= ticks + 1
    task.cancel()
