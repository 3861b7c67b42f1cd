"""The front door before a peer has authenticated, on a real socket: streams that never start,
too many unauthenticated streams, a slow webhook body, a webhook sent twice, a flood of ignored
frames. A live call never notices."""

from __future__ import annotations

import asyncio
import json
import logging
import xml.etree.ElementTree as ET

import aiohttp
import pytest
import websockets
from prometheus_client import REGISTRY

from services.observability import metrics
from tests.integration.test_gateway import (
    WAIT,
    SignedCaller,
    closed_with,
    raw_stream,
    running_gateway,
    signed,
    start_frame,
    until,
)
from tests.wire import WireValidator

pytestmark = pytest.mark.integration


def _refused(reason: str) -> float:
    return REGISTRY.get_sample_value("callray_front_door_refused_total", {"reason": reason}) or 0


async def test_a_stream_that_never_starts_is_closed_and_a_live_call_goes_on(
    wire: WireValidator,
) -> None:
    async with running_gateway(wire, stream_start_s=0.5) as (base, host):
        live = SignedCaller(base)
        await live.dial()
        await until(lambda: live.received_audio > 0, "the live call's greeting")
        before = _refused("start_timeout")
        silent = await raw_stream(base)
        await silent.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1"}))
        assert await closed_with(silent) == (1008, "no start frame within 0.5 s")
        assert _refused("start_timeout") == before + 1
        await asyncio.sleep(0.6)  # past its own deadline too: a started call has none
        assert live.closed_reason is None and live.call_sid in host.calls
        await live.hang_up()


async def test_unauthenticated_streams_are_bounded_per_address(wire: WireValidator) -> None:
    async with running_gateway(wire, max_pending_per_source=3) as (base, _host):
        waiting = [await raw_stream(base) for _ in range(3)]
        with pytest.raises(websockets.InvalidStatus) as refused:
            await raw_stream(base)
        assert refused.value.response.status_code == 503
        assert refused.value.response.headers["Retry-After"] == "1"
        # A stream that ends frees its place (once the server has seen it end); so does one
        # whose call opens.
        await waiting.pop().close()
        caller = SignedCaller(base)
        async with asyncio.timeout(WAIT):
            while True:
                try:
                    await caller.dial()
                    break
                except websockets.InvalidStatus:
                    await asyncio.sleep(0.05)
        await until(lambda: caller.received_audio > 0, "the admitted call's greeting")
        again = await raw_stream(base)  # the call opened: it no longer counts as pending
        for ws in [*waiting, again]:
            await ws.close()
        await caller.hang_up()


async def test_a_slow_webhook_body_gets_408(wire: WireValidator) -> None:
    async with running_gateway(wire, request_timeout_s=0.3) as (base, _host):
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /twilio/voice HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
            b"CallSid=CA"
        )
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 5)
        assert status.startswith(b"HTTP/1.1 408"), status
        writer.close()


async def test_a_webhook_sent_twice_gets_one_token(wire: WireValidator) -> None:
    async with running_gateway(wire) as (base, _host):
        form = {"CallSid": "CA" + "7" * 32, "From": "+1555", "To": "+1666"}
        url = f"{base}/twilio/voice"
        tokens = []
        async with aiohttp.ClientSession() as http:
            for _ in range(2):
                async with http.post(url, data=form, headers=signed(url, form)) as response:
                    assert response.status == 200
                    stream = ET.fromstring(await response.text()).find("./Connect/Stream")
                    assert stream is not None
                    tokens += [p.get("value") for p in stream if p.get("name") == "token"]
        assert len(tokens) == 2 and tokens[0] == tokens[1]
        first, second = await raw_stream(base), await raw_stream(base)
        await first.send(start_frame(form["CallSid"], str(tokens[0])))
        await second.send(start_frame(form["CallSid"], str(tokens[1])))
        code, reason = await closed_with(second)
        assert code == 1008 and "already used" in reason
        await first.close()


async def test_a_flood_of_ignored_frames_logs_one_line(
    wire: WireValidator, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_gateway(wire) as (base, _host):
        metrics.flush()
        before = (
            REGISTRY.get_sample_value("callray_log_suppressed_total", {"reason": "unknown_event"})
            or 0
        )
        ws = await raw_stream(base)
        with caplog.at_level(logging.WARNING, logger="services.gateway.twilio_ingress"):
            for n in range(50):
                await ws.send(json.dumps({"event": "future-thing", "n": n}))
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1"}))
            await asyncio.sleep(0.3)
        lines = [r for r in caplog.records if "ignored Twilio event" in r.getMessage()]
        assert len(lines) == 1
        metrics.flush()
        after = REGISTRY.get_sample_value(
            "callray_log_suppressed_total", {"reason": "unknown_event"}
        )
        assert after == before + 49
        await ws.close()


async def test_a_connection_that_never_finishes_its_headers_is_closed(
    wire: WireValidator,
) -> None:
    async with running_gateway(wire, request_timeout_s=0.5) as (base, _host):
        port = int(base.rsplit(":", 1)[1])
        before = _refused("header_timeout")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /twilio/voice HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        await writer.drain()
        async with asyncio.timeout(WAIT):
            assert await reader.read() == b""  # closed by the gateway
        assert _refused("header_timeout") == before + 1
        writer.close()
        # A request that arrives whole is answered as ever.
        async with aiohttp.ClientSession() as http, http.get(f"{base}/healthz") as reply:
            assert reply.status == 200
