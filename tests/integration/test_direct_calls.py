"""A browser calling the model directly (issue 10, §C), on real sockets: our key never reaches
it; it gets an ``ek_`` key minted for the agent, offers to the model itself, and a session of
ours attaches to the call by ``call_id`` over a sideband, greets, and ends when the browser
hangs up. aiortc plays the browser; the local model plays OpenAI (loopback only)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from services.loadgen.webrtc_caller import ToneTrack, audible, each_frame
from services.webrtc import ice
from tests.integration.test_gateway import running_gateway, until
from tests.wire import WireValidator

pytestmark = pytest.mark.integration

SERVER_KEY = "sk-server-" + "9" * 24


async def _post(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with http.post(url, **kwargs) as reply:
        text = await reply.text()
        try:
            return reply.status, await reply.json(content_type=None)
        except ValueError:
            return reply.status, text


async def test_a_browser_calls_the_model_and_our_session_attaches(wire: WireValidator) -> None:
    ice.install(("127.0.0.1",))
    async with running_gateway(wire, direct=True, model_key=SERVER_KEY) as (base, host):
        async with aiohttp.ClientSession() as http:
            _, token = await _post(http, f"{base}/webrtc/token")
            status, secret = await _post(
                http,
                f"{base}/webrtc/client-secret",
                headers={"Authorization": f"Bearer {token['token']}"},
            )
            assert status == 200, secret
            assert secret["value"].startswith("ek_") and SERVER_KEY not in str(secret)
            assert set(secret) == {"value", "expires_at", "attach_token", "calls_url"}
            # The call token was single-use.
            again, _ = await _post(
                http,
                f"{base}/webrtc/client-secret",
                headers={"Authorization": f"Bearer {token['token']}"},
            )
            assert again == 401

            # The browser calls the model with the ek_ key.
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pc.addTrack(ToneTrack())
            pc.createDataChannel("oai-events")
            loud: list[int] = []

            def heard(frame: Any) -> None:
                if audible(frame):
                    loud.append(1)

            pc.on("track", lambda track: asyncio.ensure_future(each_frame(track, heard)))
            await pc.setLocalDescription(await pc.createOffer())
            async with http.post(
                secret["calls_url"],
                data=pc.localDescription.sdp,
                headers={
                    "Content-Type": "application/sdp",
                    "Authorization": f"Bearer {secret['value']}",
                },
            ) as reply:
                assert reply.status == 201, await reply.text()
                answer = await reply.text()
                call_id = reply.headers["Location"].rsplit("/", 1)[-1]
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))

            # Our session attaches and greets the browser through the model.
            attach = {"Authorization": f"Bearer {secret['attach_token']}"}
            status, body = await _post(
                http, f"{base}/webrtc/attach", json={"call_id": call_id}, headers=attach
            )
            assert (status, body) == (201, {"call_id": call_id})
            await until(lambda: call_id in host.calls, "the attached session")
            assert host.calls[call_id].spec.attach
            await until(lambda: len(loud) >= 10, "the agent's greeting, heard by the browser")
            reused, _ = await _post(
                http, f"{base}/webrtc/attach", json={"call_id": call_id}, headers=attach
            )
            assert reused == 401

            # The browser hangs up: the sideband closes and our session ends with it.
            await pc.close()
            await until(lambda: call_id not in host.calls, "the attached session's end")


async def test_attach_needs_its_token_and_a_call_id(wire: WireValidator) -> None:
    async with running_gateway(wire, direct=True) as (base, _host):
        async with aiohttp.ClientSession() as http:
            status, _ = await _post(http, f"{base}/webrtc/attach", json={"call_id": "rtc_x"})
            assert status == 401
            status, _ = await _post(http, f"{base}/webrtc/client-secret")
            assert status == 401


async def test_an_attach_whose_body_never_comes_gets_408(wire: WireValidator) -> None:
    async with running_gateway(wire, direct=True, request_timeout_s=0.5) as (base, _host):
        async with aiohttp.ClientSession() as http:
            _, token = await _post(http, f"{base}/webrtc/token")
            _, secret = await _post(
                http,
                f"{base}/webrtc/client-secret",
                headers={"Authorization": f"Bearer {token['token']}"},
            )
        port = int(base.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /webrtc/attach HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {secret['attach_token']}\r\n".encode()
            + b"Content-Length: 100\r\n\r\n{"
        )
        await writer.drain()
        async with asyncio.timeout(5):
            status_line = await reader.readline()
        assert b" 408 " in status_line, status_line
        writer.close()
