"""Browser calls through the WebRTC adapter, on real sockets: an aiortc caller against the
gateway, a real CallHost and the local model (loopback only, ICE on 127.0.0.1). The agent's
greeting reaches the caller, the caller's tone reaches the model, hang-up and silence end the
call, and every bad-input row of the front door is refused with its status."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from services.config import WebRTCSettings
from services.loadgen.webrtc_caller import WebRTCCaller
from tests.integration.test_gateway import WAIT, running_gateway, until
from tests.wire import WireValidator

pytestmark = pytest.mark.integration

LOOPBACK = WebRTCSettings(ice_addresses=("127.0.0.1",), silence_s=1.5, connect_s=5.0)
OFFER = (Path(__file__).parents[1] / "unit" / "data" / "chromium_offer.sdp").read_text()


async def test_a_browser_call_hears_the_agent_and_its_audio_reaches_the_model(
    wire: WireValidator,
) -> None:
    async with running_gateway(wire, webrtc=LOOPBACK) as (base, host):
        caller = WebRTCCaller(base)
        assert await caller.dial() == 201, caller.answer_text
        await until(lambda: caller.loud_frames >= 10, "the greeting, heard by the caller")
        assert caller.call_id in host.calls
        session = host.calls[caller.call_id]
        assert session.spec.transport == "webrtc" and session.spec.audio_format == "audio/pcm"
        appended = sum(1 for e in wire.client_log if e["type"] == "input_audio_buffer.append")
        caller.source.speaking = True
        await until(
            lambda: (
                sum(1 for e in wire.client_log if e["type"] == "input_audio_buffer.append")
                > appended + 20
            ),
            "the caller's audio, appended to the model",
        )
        await caller.hang_up()
        await until(lambda: caller.call_id not in host.calls, "the call ended")


async def test_a_caller_that_goes_silent_is_taken_for_gone(wire: WireValidator) -> None:
    async with running_gateway(wire, webrtc=LOOPBACK) as (base, host):
        caller = WebRTCCaller(base)
        assert await caller.dial() == 201
        await until(lambda: caller.call_id in host.calls and caller.received_frames > 0, "up")
        caller.source.stop()  # the tab froze: no more RTP from it
        async with asyncio.timeout(WAIT):
            while caller.call_id in host.calls:
                await asyncio.sleep(0.05)
        await caller.close()


async def _post_offer(base: str, body: bytes | str, **headers: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/webrtc/token") as reply:
            token = (await reply.json())["token"]
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {token}", **headers}
        async with http.post(f"{base}/webrtc/calls", data=body, headers=headers) as reply:
            return reply.status, await reply.text()


@pytest.mark.parametrize(
    ("body", "headers", "status", "says"),
    [
        (OFFER, {"Content-Type": "text/plain"}, 415, "application/sdp"),
        ("v=0\r\n" + "a=x:" + "y" * 17000 + "\r\n", {}, 413, "too large"),
        (OFFER, {"Authorization": "Bearer nope"}, 401, "token"),
        ("garbage", {}, 400, "not an SDP offer"),
        (OFFER.replace("UDP/TLS/RTP/SAVPF", "RTP/AVP"), {}, 400, "must be UDP/TLS/RTP/SAVPF"),
    ],
)
async def test_bad_offers_are_refused_with_their_status(
    wire: WireValidator, body: str, headers: dict[str, str], status: int, says: str
) -> None:
    async with running_gateway(wire, webrtc=LOOPBACK) as (base, host):
        got, text = await _post_offer(base, body, **headers)
        assert (got, says in text) == (status, True), text
        assert not host.calls


async def test_a_call_token_is_single_use(wire: WireValidator) -> None:
    async with running_gateway(wire, webrtc=LOOPBACK) as (base, _host):
        first = WebRTCCaller(base)
        assert await first.dial() == 201
        again = WebRTCCaller(base, token=first.token)
        assert await again.dial() == 401
        assert "already used" in again.answer_text
        await first.hang_up()


async def test_offers_past_the_rate_get_429(wire: WireValidator) -> None:
    slow = WebRTCSettings(ice_addresses=("127.0.0.1",), offers_per_source_s=1.0)
    async with running_gateway(wire, webrtc=slow) as (base, _host):
        statuses = [(await _post_offer(base, "garbage"))[0] for _ in range(4)]
        assert statuses[:2] == [400, 400] and 429 in statuses[2:]


async def test_a_busy_cluster_answers_503_before_any_ice_work(wire: WireValidator) -> None:
    async with running_gateway(wire, webrtc=LOOPBACK, capacity=1) as (base, _host):
        first = WebRTCCaller(base)
        assert await first.dial() == 201
        second = WebRTCCaller(base)
        assert await second.dial() == 503
        assert "busy" in second.answer_text
        await first.hang_up()


async def test_the_token_endpoint_needs_the_secret_when_one_is_set(wire: WireValidator) -> None:
    from services.config import Secret

    guarded = WebRTCSettings(ice_addresses=("127.0.0.1",), token_secret=Secret("s3cret-value"))
    async with running_gateway(wire, webrtc=guarded) as (base, _host):
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/webrtc/token") as reply:
                assert reply.status == 401
            auth = {"Authorization": "Bearer s3cret-value"}
            async with http.post(f"{base}/webrtc/token", headers=auth) as reply:
                assert reply.status == 200 and (await reply.json())["call_id"].startswith("rtc_")


async def test_the_call_page_is_served_at_the_root(wire: WireValidator) -> None:
    async with running_gateway(wire, webrtc=LOOPBACK) as (base, _host):
        async with aiohttp.ClientSession() as http:
            for path in ("/", "/call"):
                async with http.get(f"{base}{path}") as reply:
                    page = await reply.text()
                    assert reply.status == 200 and reply.content_type == "text/html"
                    assert "/webrtc/calls" in page and "sendBeacon" in page
                    assert "http://" not in page and "https://" not in page  # no CDN


async def test_a_call_whose_ice_never_completes_ends_ice_failed_and_frees_its_seat(
    wire: WireValidator,
) -> None:
    quick = WebRTCSettings(ice_addresses=("127.0.0.1",), connect_s=1.0)
    async with running_gateway(wire, webrtc=quick, capacity=1) as (base, host):
        caller = WebRTCCaller(base)

        # An answer it never uses: the browser went away between its offer and ICE.
        async def never(*_args: object) -> None:
            return None

        caller.pc.setRemoteDescription = never  # type: ignore[method-assign]
        assert await caller.dial() == 201
        await until(lambda: caller.call_id in host.calls, "the call open")
        await until(lambda: caller.call_id not in host.calls, "the ICE deadline")
        events = host._events.events  # the host's ListEventSink
        ended = [f["reason"] for k, c, f in events if c == caller.call_id and k == "call.ended"]
        assert ended == ["ice_failed"], events
        again = WebRTCCaller(base)  # the seat is free again
        assert await again.dial() == 201
        await again.hang_up()
        await caller.close()


async def test_bad_data_channel_messages_are_dropped_and_counted(wire: WireValidator) -> None:
    from prometheus_client import REGISTRY

    def dropped() -> float:
        labels = {"reason": "webrtc_page_message"}
        return REGISTRY.get_sample_value("callray_front_door_refused_total", labels) or 0.0

    async with running_gateway(wire, webrtc=LOOPBACK) as (base, host):
        caller = WebRTCCaller(base)
        assert await caller.dial() == 201
        await until(lambda: caller.loud_frames > 5, "the greeting")
        before = dropped()
        caller.channel.send("not json at all")
        caller.channel.send('{"type": "dtmf", "digit": "Z"}')
        caller.channel.send("x" * 5000)
        await until(lambda: dropped() >= before + 3, "three messages dropped")
        heard = caller.loud_frames
        await until(lambda: caller.loud_frames > heard + 5, "the call's audio going on")
        assert caller.call_id in host.calls
        await caller.hang_up()


async def test_an_offer_arriving_in_pieces_is_read_whole(wire: WireValidator) -> None:
    """A body in several TCP segments (a real offer is several kB) is read to its end."""
    async with running_gateway(wire, webrtc=LOOPBACK) as (base, _host):
        caller = WebRTCCaller(base)
        async with aiohttp.ClientSession() as http:
            await caller.fetch_token(http)
        caller.pc.addTrack(caller.source)
        caller.pc.createDataChannel("callray")
        await caller.pc.setLocalDescription(await caller.pc.createOffer())
        offer = caller.pc.localDescription.sdp.encode()
        port = int(base.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /webrtc/calls HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
            + f"Authorization: Bearer {caller.token}\r\n".encode()
            + f"Content-Length: {len(offer)}\r\n\r\n".encode()
        )
        third = len(offer) // 3
        for part in (offer[:third], offer[third : 2 * third], offer[2 * third :]):
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.1)
        async with asyncio.timeout(WAIT):
            status_line = await reader.readline()
        assert b" 201 " in status_line, status_line
        writer.close()
        await caller.close()


async def test_with_its_port_range_full_an_offer_gets_503_and_frees_its_seat(
    wire: WireValidator,
) -> None:
    # A recorded offer, not an aiortc caller: the range is process-wide, and a caller in this
    # process would gather in it too.
    import socket

    from services.webrtc import ice

    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", 0))
    port = blocker.getsockname()[1]
    ranged = WebRTCSettings(ice_addresses=("127.0.0.1",), port_range=(port, port))
    try:
        async with running_gateway(wire, webrtc=ranged, capacity=1) as (base, host):
            status, text = await _post_offer(base, OFFER)
            assert (status, text) == (503, '{"error": "no media port free"}')
            await until(lambda: host.calls == {}, "the refused call's session ended")
            blocker.close()  # the port is free again: the next offer's answer is on it
            status, text = await _post_offer(base, OFFER)
            assert status == 201, text  # capacity 1: the refused call's seat was freed
            assert f" {port} typ host" in text
    finally:
        blocker.close()
        ice.reset_port_range()


async def test_the_warm_up_at_start_makes_an_offer_and_leaves_nothing_behind(
    wire: WireValidator, caplog: pytest.LogCaptureFixture
) -> None:
    import gc

    from aiortc import RTCPeerConnection

    async with running_gateway(wire, webrtc=LOOPBACK) as (base, _host):
        assert "WebRTC warm-up failed" not in caplog.text
        gc.collect()
        live = [o for o in gc.get_objects() if isinstance(o, RTCPeerConnection)]
        assert all(pc.connectionState == "closed" for pc in live)
        caller = WebRTCCaller(base)  # and the first call is answered as any other
        assert await caller.dial() == 201
        await caller.hang_up()
