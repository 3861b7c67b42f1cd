"""Raw SIP datagrams for tests: malformed and edge-case requests sent straight at a UDP port,
and the final status that comes back (tests/sip_peers.py runs the real peers). Loopback only."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

from tests.conftest import TIMEOUT_FACTOR
from tests.sip_peers import LOOPBACK, Target, _loopback


async def send_raw(
    target: Target,
    data: bytes | Callable[[int], bytes],
    *,
    within: float = 1.0,
    count: int | None = None,
) -> list[bytes]:
    """Send one datagram from a fresh 127.0.0.1 socket and return what comes back within
    ``within`` s (stopping early at ``count`` datagrams). ``data`` may be a function of
    the local port, for a Via that names it. Nothing back (a dropped message) returns []."""
    loop = asyncio.get_running_loop()
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    class Collect(asyncio.DatagramProtocol):
        def datagram_received(self, datagram: bytes, addr: Any) -> None:
            replies.put_nowait(datagram)

    transport, _ = await loop.create_datagram_endpoint(Collect, local_addr=(LOOPBACK, 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        transport.sendto(data(port) if callable(data) else data, _loopback(target))
        got: list[bytes] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within * TIMEOUT_FACTOR):
                while count is None or len(got) < count:
                    got.append(await replies.get())
        return got
    finally:
        transport.close()


def status_of(response: bytes) -> int:
    """The status code of a SIP response (``SIP/2.0 200 OK`` → 200)."""
    match = re.match(rb"SIP/2\.0 (\d{3}) ", response)
    if match is None:
        raise ValueError(f"not a SIP response: {response[:60]!r}")
    return int(match.group(1))


def sip_request(
    method: str,
    target: Target,
    local_port: int,
    *,
    headers: Sequence[str] = (),
    drop: Sequence[str] = (),
    body: bytes = b"",
    content_length: str | None = None,
) -> bytes:
    """A plausible UDP request from 127.0.0.1:``local_port`` (RFC 3261 section 8.1.1: Via with
    rport, Max-Forwards, From with a tag, To, Call-ID, CSeq, Contact), plus ``headers``,
    minus the headers named in ``drop``; ``content_length`` overrides the true one."""
    host, port = _loopback(target)
    tag = os.urandom(4).hex()
    lines = [
        f"Via: SIP/2.0/UDP {LOOPBACK}:{local_port};branch=z9hG4bK{tag};rport",
        "Max-Forwards: 70",
        f"From: <sip:edge@{LOOPBACK}>;tag={tag}",
        f"To: <sip:service@{host}:{port}>",
        f"Call-ID: {tag}-edge@{LOOPBACK}",
        f"CSeq: 1 {method}",
        f"Contact: <sip:edge@{LOOPBACK}:{local_port}>",
        *headers,
    ]
    lines = [line for line in lines if line.split(":", 1)[0] not in drop]
    length = str(len(body)) if content_length is None else content_length
    head = "\r\n".join([f"{method} sip:service@{host}:{port} SIP/2.0", *lines])
    return f"{head}\r\nContent-Length: {length}\r\n\r\n".encode() + body


_SDP = "v=0\r\no=edge 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm={}\r\n"
_G729_ONLY = _SDP.format("audio 40000 RTP/AVP 18\r\na=rtpmap:18 G729/8000").encode()
_VIDEO_ONLY = _SDP.format("video 40000 RTP/AVP 96\r\na=rtpmap:96 VP8/90000").encode()


@dataclasses.dataclass(frozen=True)
class EdgeCase:
    """A request from the issue's "Bad input" list and the status it wants (None: dropped,
    no answer). ``build(local_port)`` makes the datagram: ``send_raw(target, case.build)``.
    INVITEs refused with a final response want an ACK: ``ack_for(request, response)``."""

    status: int | None
    build: Callable[[int], bytes]


def edge_cases(target: Target) -> dict[str, EdgeCase]:
    """Malformed and edge requests for the UAS at ``target``, by name."""

    def request(method: str, **kwargs: Any) -> Callable[[int], bytes]:
        return lambda port: sip_request(method, target, port, **kwargs)

    sdp = "Content-Type: application/sdp"
    cases = {f"missing {h}": EdgeCase(400, request("OPTIONS", drop=[h])) for h in _MUST_HAVE}
    return {
        "garbage": EdgeCase(None, lambda port: b"\x16\x03\x01 not SIP\r\n\r\n"),
        **cases,  # RFC 3261 section 8.1.1; a missing Via leaves only the source to answer to
        "content-length too big": EdgeCase(400, request("OPTIONS", body=b"x", content_length="9")),
        "content-length not a number": EdgeCase(400, request("OPTIONS", content_length="ten")),
        "over 16 KiB": EdgeCase(513, request("OPTIONS", headers=[f"X-Pad: {'a' * 17000}"])),
        "unknown method": EdgeCase(501, request("FOO")),  # section 8.2.1
        "unknown Require": EdgeCase(420, request("OPTIONS", headers=["Require: foo"])),
        "BYE for no dialog": EdgeCase(481, request("BYE")),  # section 12.2.2
        "CANCEL for no transaction": EdgeCase(481, request("CANCEL")),  # section 9.2
        "no common codec": EdgeCase(488, request("INVITE", headers=[sdp], body=_G729_ONLY)),
        "video only": EdgeCase(488, request("INVITE", headers=[sdp], body=_VIDEO_ONLY)),
    }


_MUST_HAVE = ("Via", "From", "To", "Call-ID", "CSeq")


def ack_for(request: bytes, response: bytes) -> bytes:
    """The ACK for a non-2xx final response to ``request``, an INVITE: its Request-URI, Via
    (same branch), From, Call-ID and CSeq number, the response's To (with the tag)."""
    head = request.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    fields = {line.split(":", 1)[0].lower(): line for line in head[1:]}
    to = next(line for line in response.decode().split("\r\n") if line.lower().startswith("to:"))
    number = fields["cseq"].split(":", 1)[1].split()[0]
    lines = [head[0].replace("INVITE", "ACK", 1), fields["via"], "Max-Forwards: 70", fields["from"]]
    lines += [to, fields["call-id"], f"CSeq: {number} ACK", "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
