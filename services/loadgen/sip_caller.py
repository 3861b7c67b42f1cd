"""A caller on a SIP trunk, played by us: a UAC that dials our SIP ingress, streams G.711 RTP,
and records what it hears. For the conformance suite, tests and ``callray loadtest --provider
sip``; peers no one here wrote (sipp, baresip) check the ingress too (tests/sip_peers.py).

:class:`SipCaller` sends an INVITE with an SDP offer (PCMU + telephone-event, a port of its
own), retransmits it on Timer A until a response (RFC 3261 §17.1.1.2), ACKs the 200 (and each
retransmission of it), then sends one 160-byte μ-law packet every 20 ms: what :meth:`speak`
queued, else silence. What it receives is kept (payloads with arrival times). It answers a
BYE (reading RFC 3326 ``Reason`` text as :attr:`closed_reason`), a REFER (202, then a NOTIFY
saying the transfer reached ``200 OK``, or ``refer_status``), and a re-INVITE (echoing its
offer back). Its own BYE and NOTIFY go through our :class:`TransactionLayer` (client side).
Loopback only: it binds and talks to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections import deque
from typing import Any

from services.telephony.rtp import RtpPacket, RtpSender, TelephoneEvent
from services.telephony.sip.headers import NameAddr, new_tag
from services.telephony.sip.message import (
    SipRequest,
    SipResponse,
    build_request,
    parse,
    response_to,
)
from services.telephony.sip.transaction import Send, TransactionLayer

SILENCE = b"\xff" * 160
_REASON_TEXT = re.compile(r'text="([^"]*)"')
_AUDIO_PORT = re.compile(rb"m=audio (\d+)")
_ADDRESS = re.compile(rb"c=IN IP4 ([0-9.]+)")


class _Rtp(asyncio.DatagramProtocol):
    def __init__(self, caller: SipCaller) -> None:
        self.caller = caller

    def connection_made(self, transport: Any) -> None:
        self.caller._rtp = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.caller._rtp_in(data)


class SipCaller(asyncio.DatagramProtocol):
    def __init__(
        self, target: tuple[str, int], *, user: str = "agent", late_offer: bool = False
    ) -> None:
        self.target = target
        self.user = user
        self.late_offer = late_offer
        self.sip_call_id = secrets.token_hex(8)
        self.tag = new_tag()
        self.status = 0  # the INVITE's final status
        self.closed_reason: str | None = None
        self.received: list[tuple[float, bytes]] = []  # (arrival, payload) of audio packets
        self.refer_to: str | None = None
        self.refer_status = 200  # what our NOTIFY reports of a transfer we are asked to make
        self.answer = b""
        self.callray_call_id = ""  # the X-Callray-Call-Id of our 200 OK
        self._speech: deque[bytes] = deque()
        self._sip: Any = None
        self._rtp: Any = None
        self._layer = TransactionLayer()
        self._to_tag: str | None = None
        self._cseq = 1
        self._invite: SipRequest | None = None
        self._final = asyncio.Event()
        self._closed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sender = RtpSender(0)
        self._remote_rtp: tuple[str, int] | None = None

    # ----- setup ---------------------------------------------------------------------------------

    async def dial(self, timeout_s: float = 10.0) -> int:
        """INVITE until a final response; returns its status (200: the call is up)."""
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        await loop.create_datagram_endpoint(lambda: _Rtp(self), local_addr=("127.0.0.1", 0))
        self._invite = self._request("INVITE", body=b"" if self.late_offer else self._offer())
        self._spawn(self._timer_a())
        self._spawn(self._timers())
        try:
            async with asyncio.timeout(timeout_s):
                await self._final.wait()
        except TimeoutError:
            self.status = 408
        if self.status == 200:
            self._spawn(self._stream())
        return self.status

    def connection_made(self, transport: Any) -> None:
        self._sip = transport

    @property
    def sip_port(self) -> int:
        return int(self._sip.get_extra_info("sockname")[1])

    @property
    def rtp_port(self) -> int:
        return int(self._rtp.get_extra_info("sockname")[1])

    def _offer(self) -> bytes:
        return (
            "v=0\r\no=caller 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {self.rtp_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
        ).encode()

    def _request(self, method: str, *, body: bytes = b"", headers: Any = ()) -> SipRequest:
        to = NameAddr(f"sip:{self.user}@{self.target[0]}:{self.target[1]}")
        if self._to_tag and method != "INVITE":
            to = to.with_tag(self._to_tag)
        cseq = self._cseq if method in ("INVITE", "ACK") else self._next_cseq()
        return build_request(
            method,
            f"sip:{self.user}@{self.target[0]}:{self.target[1]}",
            from_=NameAddr("sip:caller@127.0.0.1").with_tag(self.tag),
            to=to,
            call_id=self.sip_call_id,
            cseq=cseq,
            sent_by=("127.0.0.1", self.sip_port),
            contact=f"<sip:caller@127.0.0.1:{self.sip_port}>",
            headers=headers,
            body=body,
            content_type="application/sdp" if body else None,
        )

    def _next_cseq(self) -> int:
        self._cseq += 1
        return self._cseq

    # ----- signalling ----------------------------------------------------------------------------

    async def _timer_a(self) -> None:
        assert self._invite is not None
        interval = 0.5
        while not self._final.is_set() and self.status < 100:
            self._sip.sendto(bytes(self._invite), self.target)
            await asyncio.sleep(interval)
            interval = min(interval * 2, 4.0)
        # Once a provisional came, the INVITE is not retransmitted (§17.1.1.2, Timer A stops).

    async def _timers(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            self._send(self._layer.tick(time.monotonic()))

    def _send(self, outputs: list[Any]) -> None:
        for item in outputs:
            if isinstance(item, Send):
                self._sip.sendto(item.data, item.destination)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            message = parse(data)
        except Exception:
            return
        if isinstance(message, SipResponse) and message.cseq.method == "INVITE":
            self._invite_response(message)
            return
        outputs = self._layer.receive(message, (addr[0], addr[1]), time.monotonic())
        self._send(outputs)
        for item in outputs:
            request = getattr(item, "request", None)
            if type(item).__name__ == "NewRequest" and isinstance(request, SipRequest):
                self._incoming(request, (addr[0], addr[1]))

    def _invite_response(self, response: SipResponse) -> None:
        self.status = max(self.status, response.status if response.status < 200 else 0)
        if response.status < 200:
            return
        if response.status >= 300:  # ACK for a non-2xx: same branch (§17.1.1.3)
            assert self._invite is not None
            ack = self._request("ACK")
            ack.headers.set("Via", self._invite.headers["Via"])
            self._sip.sendto(bytes(ack), self.target)
            self.status = response.status
            self._final.set()
            return
        self._to_tag = response.to.tag
        self.answer = response.body
        self.callray_call_id = response.headers.get("X-Callray-Call-Id") or ""
        self.status = 200
        body = self._offer() if self.late_offer else b""
        self._sip.sendto(bytes(self._request("ACK", body=body)), self.target)  # each 2xx: ACK
        if not self._final.is_set():
            port, address = _AUDIO_PORT.search(response.body), _ADDRESS.search(response.body)
            if port and address:
                self._remote_rtp = (address.group(1).decode(), int(port.group(1)))
            self._final.set()

    def _incoming(self, request: SipRequest, source: tuple[str, int]) -> None:
        now = time.monotonic()
        if request.method == "BYE":
            reason = request.headers.get("Reason") or ""
            match = _REASON_TEXT.search(reason)
            self.closed_reason = self.closed_reason or (match.group(1) if match else "bye")
            self._send(self._layer.send_response(response_to(request, 200, source=source), now))
            self._closed.set()
        elif request.method == "REFER":
            self.refer_to = NameAddr.parse(request.headers["Refer-To"], "Refer-To").uri
            self._send(self._layer.send_response(response_to(request, 202, source=source), now))
            notify = self._request(
                "NOTIFY",
                headers=[
                    ("Event", "refer"),
                    ("Subscription-State", "terminated;reason=noresource"),
                ],
            )
            notify.headers.set("Content-Type", "message/sipfrag;version=2.0")
            notify.body = f"SIP/2.0 {self.refer_status} Whatever\r\n".encode()
            self._send(self._layer.send_request(notify, source, now))
        elif request.method in ("INVITE", "UPDATE"):
            ok = response_to(
                request,
                200,
                source=source,
                body=request.body or self.answer,
                content_type="application/sdp",
            )
            self._send(self._layer.send_response(ok, now))
        else:
            self._send(self._layer.send_response(response_to(request, 200, source=source), now))

    # ----- media ---------------------------------------------------------------------------------

    def speak(self, ulaw: bytes) -> None:
        for at in range(0, len(ulaw), 160):
            self._speech.append(ulaw[at : at + 160].ljust(160, b"\xff"))

    async def _stream(self) -> None:
        due = time.monotonic()
        while not self._closed.is_set():
            frame = self._speech.popleft() if self._speech else SILENCE
            if self._remote_rtp is not None:
                self._rtp.sendto(self._sender.packet(frame), self._remote_rtp)
            due += 0.02
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    def _rtp_in(self, data: bytes) -> None:
        with contextlib.suppress(Exception):
            packet = RtpPacket.parse(data)
            if packet.payload_type == 0:
                self.received.append((time.monotonic(), packet.payload))

    async def send_dtmf(self, digit: str) -> None:
        """One RFC 4733 event: three packets while the key is down, the end three times."""
        assert self._remote_rtp is not None
        code = "0123456789*#ABCD".index(digit)
        start, ssrc = self._sender.timestamp, self._sender.ssrc
        for n in range(6):
            end = n >= 3
            event = TelephoneEvent(event=code, end=end, volume=10, duration=160 * min(n + 1, 4))
            packet = RtpPacket(101, self._sender.sequence, start, ssrc, bytes(event), marker=n == 0)
            self._sender.sequence = (self._sender.sequence + 1) & 0xFFFF
            self._rtp.sendto(bytes(packet), self._remote_rtp)
            await asyncio.sleep(0.02)

    @property
    def heard_ms(self) -> int:
        """Audio received that is not silence, in ms (μ-law 0xFF/0x7F are the zero levels)."""
        return sum(20 for _, p in self.received if p.strip(b"\xff\x7f\xfe\x7e"))

    # ----- the end -------------------------------------------------------------------------------

    async def hang_up(self) -> None:
        if self.status == 200 and not self._closed.is_set():
            self.closed_reason = self.closed_reason or "caller_hangup"
            bye = self._request("BYE")
            self._send(self._layer.send_request(bye, self.target, time.monotonic()))
            self._closed.set()
            await asyncio.sleep(0.05)
        await self.close()

    async def close(self) -> None:
        self._closed.set()
        for task in list(self._tasks):
            task.cancel()
        for transport in (self._sip, self._rtp):
            if transport is not None:
                transport.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
