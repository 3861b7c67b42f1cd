"""The local model's WebRTC endpoint, on real sockets: an aiortc peer (as AJS's
``OpenAIRealtimeWebRTC`` or a browser) posts its offer to ``/v1/realtime/calls``, gets the
answer with ``Location``, and talks to the model: events on ``oai-events``, its tone on its
track, the model's audio back on the answer's track between ``output_audio_buffer.started`` and
``.stopped``. Also the ``openai`` package's multipart form, auth, CORS, refusals, the
``session.updated`` faults, ``output_audio_buffer.clear``, hang-up.

Loopback only: run inside ``unshare -n`` with ``lo`` up; ICE gathers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from openai import AsyncOpenAI, AuthenticationError

from services.config import LocalModelSettings, Secret
from services.loadgen.webrtc_caller import ToneTrack, audible, each_frame
from services.localmodel.server import LocalModelServer
from tests.conftest import TIMEOUT_FACTOR
from tests.virtual_time import FakeClock
from tests.wire import WireValidator

pytestmark = pytest.mark.integration

LOOPBACK = ("127.0.0.1",)
WAIT = 10 * TIMEOUT_FACTOR
OFFER = (Path(__file__).parents[1] / "unit" / "data" / "chromium_offer.sdp").read_text()
StartServer = Callable[..., Awaitable[LocalModelServer]]


@pytest.fixture
async def start_server(wire: WireValidator) -> AsyncIterator[StartServer]:
    servers: list[LocalModelServer] = []

    async def start(**overrides: Any) -> LocalModelServer:
        settings = LocalModelSettings(port=0, speed=4.0, **overrides)
        server = LocalModelServer(settings, observer=wire, ice_addresses=LOOPBACK)
        servers.append(server)
        await server.start()
        return server

    yield start
    for server in servers:
        await server.stop()


class Peer:
    """The client side: our tone track, the ``oai-events`` channel, and what comes back."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.source = ToneTrack()
        self.events: list[dict[str, Any]] = []
        self.arrived: list[float] = []  # time.monotonic() of each event
        self.received_frames = 0
        self.loud_frames = 0
        self.loud_since_mark = 0
        self.opened = asyncio.Event()
        self.closed = asyncio.Event()
        self.pc.addTrack(self.source)
        self.channel = self.pc.createDataChannel("oai-events")
        self.channel.on("open", self.opened.set)
        self.channel.on("close", self.closed.set)
        self.channel.on("message", self._on_message)
        self.pc.on("track", self._on_track)
        self._listening: set[asyncio.Task[None]] = set()

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp: str = self.pc.localDescription.sdp
        return sdp

    async def answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))

    async def dial(self, url: str, key: str | None = None) -> aiohttp.ClientResponse:
        """Offer as AJS does (raw SDP); on 201 take the answer. The reply's body is read."""
        headers = {"Content-Type": "application/sdp"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        sdp = await self.offer()
        async with aiohttp.ClientSession() as http, http.post(url, data=sdp, headers=headers) as r:
            text = await r.text()
        if r.status == 201:
            await self.answer(text)
        return r

    def send(self, event: dict[str, Any]) -> None:
        self.channel.send(json.dumps(event))

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    async def until(self, what: str, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT):
            while not predicate():
                await asyncio.sleep(0.02)

    async def until_event(self, kind: str, count: int = 1) -> dict[str, Any]:
        await self.until(kind, lambda: len(self.of_type(kind)) >= count)
        return self.of_type(kind)[count - 1]

    async def close(self) -> None:
        for task in self._listening:
            task.cancel()
        await self.pc.close()

    def _on_message(self, message: object) -> None:
        assert isinstance(message, str)
        self.events.append(json.loads(message))
        self.arrived.append(time.monotonic())

    def _on_track(self, track: Any) -> None:
        task = asyncio.ensure_future(self._listen(track))
        self._listening.add(task)

    async def _listen(self, track: Any) -> None:
        await each_frame(track, self._heard)

    def _heard(self, frame: Any) -> None:
        self.received_frames += 1
        if audible(frame):
            self.loud_frames += 1
            self.loud_since_mark += 1


@pytest.fixture
async def peers() -> AsyncIterator[Callable[[], Peer]]:
    made: list[Peer] = []

    def make() -> Peer:
        peer = Peer()
        made.append(peer)
        return peer

    yield make
    for peer in made:
        await peer.close()


PeerFactory = Callable[[], Peer]


# ----- the call and its audio ----------------------------------------------------------------


async def test_an_offer_gets_201_an_answer_and_a_location(
    start_server: StartServer, peers: PeerFactory
) -> None:
    server = await start_server()
    peer = peers()
    reply = await peer.dial(f"{server.calls_url}?model=gpt-realtime")
    assert reply.status == 201
    assert reply.content_type == "application/sdp"
    location = reply.headers["Location"]
    assert location.startswith("/v1/realtime/calls/rtc_")
    call_id = location.rsplit("/", 1)[1]
    assert len(call_id) > len("rtc_") + 16 and call_id in server.calls.sessions
    assert reply.headers["Access-Control-Allow-Origin"] == "*"
    assert "Location" in reply.headers["Access-Control-Expose-Headers"]
    created = await peer.until_event("session.created")
    assert peer.events[0] is created  # the first event on the channel
    assert created["session"]["model"] == "gpt-realtime"


async def test_the_peers_tone_is_echoed_on_the_track_between_started_and_stopped(
    start_server: StartServer, peers: PeerFactory, wire: WireValidator
) -> None:
    server = await start_server(mode="echo")
    peer = peers()
    assert (await peer.dial(server.calls_url)).status == 201
    await peer.until_event("session.created")
    await peer.until("the track up", lambda: peer.received_frames > 10)
    assert peer.loud_frames == 0  # silence in, silence out
    peer.source.speaking = True
    await peer.until("the echo, heard", lambda: peer.loud_frames >= 25)
    peer.source.speaking = False
    # Server VAD ends the turn after 500 ms of silence: the echo response is done, and once the
    # track has played all of it the buffer has stopped.
    stopped = await peer.until_event("output_audio_buffer.stopped")
    started = peer.of_type("output_audio_buffer.started")[0]
    assert started["response_id"] == stopped["response_id"]
    kinds = [e["type"] for e in peer.events]
    done_at = next(
        i
        for i, e in enumerate(peer.events)
        if e["type"] == "response.done" and e["response"]["id"] == stopped["response_id"]
    )
    assert kinds.index("output_audio_buffer.started") < done_at < peer.events.index(stopped)
    assert "input_audio_buffer.speech_started" in kinds
    assert "response.output_audio.delta" not in kinds  # the audio went on the track
    session = server.calls.sessions[next(iter(server.calls.sessions))]
    assert session.frames_in > 50


async def test_cancel_and_clear_cut_the_speech_where_the_track_was(
    start_server: StartServer, peers: PeerFactory
) -> None:
    server = await start_server()
    peer = peers()
    assert (await peer.dial(server.calls_url)).status == 201
    await peer.until_event("session.created")
    peer.send({"type": "response.create"})  # the greeting, seconds of tone speech
    started = await peer.until_event("output_audio_buffer.started")
    await peer.until("some of the greeting", lambda: peer.loud_frames >= 10)
    # As AJS's interrupt(): cancel the response, then empty the server's buffer.
    peer.send({"type": "response.cancel"})
    peer.send({"type": "output_audio_buffer.clear", "event_id": "clear1"})
    cleared = await peer.until_event("output_audio_buffer.cleared")
    assert cleared["response_id"] == started["response_id"]
    done = (await peer.until_event("response.done"))["response"]
    assert done["status"] == "cancelled"
    await asyncio.sleep(0.3)  # what was in flight arrives
    peer.loud_since_mark = 0
    await asyncio.sleep(0.5)
    assert peer.loud_since_mark == 0  # the track went quiet
    assert not peer.of_type("output_audio_buffer.stopped")
    assert not peer.of_type("error")
    # The server owns playback: the item now holds what the track had played, no more.
    session = next(iter(server.calls.sessions.values()))
    item = session.engine.conversation.get(done["output"][0]["id"])
    kept_ms = item.formats[0].duration_ms(len(item.audio[0]))
    heard_ms = peer.arrived[peer.events.index(cleared)] - peer.arrived[peer.events.index(started)]
    assert heard_ms * 1000 - 100 <= kept_ms <= heard_ms * 1000 + 100


async def test_an_uncut_response_stops_after_it_played(
    start_server: StartServer, peers: PeerFactory
) -> None:
    server = await start_server()
    peer = peers()
    assert (await peer.dial(server.calls_url)).status == 201
    await peer.until_event("session.created")
    peer.send({"type": "response.create"})
    stopped = await peer.until_event("output_audio_buffer.stopped")
    started = peer.of_type("output_audio_buffer.started")[0]
    done = peer.of_type("response.done")[0]
    assert started["response_id"] == stopped["response_id"] == done["response"]["id"]
    assert peer.events.index(done) < peer.events.index(stopped)
    # The model made the audio 4x faster than real time; the track played it in real time.
    session = next(iter(server.calls.sessions.values()))
    item = session.engine.conversation.get(done["response"]["output"][0]["id"])
    audio_ms = item.formats[0].duration_ms(len(item.audio[0]))
    played_s = peer.arrived[peer.events.index(stopped)] - peer.arrived[peer.events.index(started)]
    assert audio_ms / 1000 - 0.1 <= played_s <= audio_ms / 1000 + 0.5
    assert peer.loud_frames >= audio_ms / 20 / 2  # speech has its pauses


# ----- signalling ----------------------------------------------------------------------------


async def test_the_openai_clients_multipart_form_sets_up_the_session(
    start_server: StartServer, peers: PeerFactory
) -> None:
    server = await start_server(api_key=Secret("sekret"))
    peer = peers()
    client = AsyncOpenAI(api_key="sekret", base_url=f"http://127.0.0.1:{server.port}/v1")
    session = {
        "type": "realtime",
        "model": "gpt-realtime-mini",
        "instructions": "Be brief.",
        "audio": {"output": {"format": {"type": "audio/pcmu"}}},
    }
    async with client:
        raw = await client.realtime.calls.with_raw_response.create(
            sdp=await peer.offer(), session=session
        )
    assert raw.status_code == 201
    assert raw.headers["location"].startswith("/v1/realtime/calls/rtc_")
    await peer.answer(raw.content.decode())
    created = (await peer.until_event("session.created"))["session"]
    assert created["model"] == "gpt-realtime-mini"
    assert created["instructions"] == "Be brief."
    assert created["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    peer.send({"type": "response.create"})  # μ-law deltas become track audio all the same
    await peer.until_event("output_audio_buffer.stopped")
    assert peer.loud_frames >= 25


async def test_a_key_is_required_when_the_server_has_one(
    start_server: StartServer, peers: PeerFactory
) -> None:
    server = await start_server(api_key=Secret("sekret"))
    for key in (None, "wrong"):
        reply = await peers().dial(server.calls_url, key)
        assert reply.status == 401
        assert reply.headers["Access-Control-Allow-Origin"] == "*"
    assert not server.calls.sessions
    assert (await peers().dial(server.calls_url, "sekret")).status == 201


async def test_a_browser_on_another_origin_gets_its_preflight_answered(
    start_server: StartServer,
) -> None:
    server = await start_server()
    headers = {
        "Origin": "http://page.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with (
        aiohttp.ClientSession() as http,
        http.options(server.calls_url, headers=headers) as r,
    ):
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
        assert r.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
        assert r.headers["Access-Control-Expose-Headers"] == "Location"


@pytest.mark.parametrize(
    ("body", "content_type", "status", "says"),
    [
        ("garbage", "application/sdp", 400, "Invalid SDP offer"),
        (OFFER.replace("UDP/TLS/RTP/SAVPF", "RTP/AVP"), "application/sdp", 400, "SAVPF"),
        (OFFER, "text/plain", 415, "application/sdp"),
        ("v=0\r\n" + "a=x:" + "y" * 17000 + "\r\n", "application/sdp", 413, "larger"),
    ],
)
async def test_bad_offers_are_refused_with_openais_error_body(
    start_server: StartServer, body: str, content_type: str, status: int, says: str
) -> None:
    server = await start_server()
    headers = {"Content-Type": content_type}
    async with (
        aiohttp.ClientSession() as http,
        http.post(server.calls_url, data=body, headers=headers) as reply,
    ):
        assert reply.status == status
        error = (await reply.json())["error"]
    assert says in error["message"]
    assert not server.calls.sessions


async def test_a_session_config_the_engine_refuses_is_a_400(
    start_server: StartServer, peers: PeerFactory
) -> None:
    server = await start_server()
    form = aiohttp.FormData()
    form.add_field("sdp", await peers().offer(), content_type="application/sdp")
    form.add_field("session", json.dumps({"type": "realtime", "voice": "ash"}))
    async with (
        aiohttp.ClientSession() as http,
        http.post(server.calls_url, data=form) as reply,
    ):
        assert reply.status == 400
        error = (await reply.json())["error"]
    assert error["param"] == "session.voice"


# ----- the session.updated faults, hang-up, drops ---------------------------------------------


async def test_session_updated_can_be_delayed(
    start_server: StartServer, peers: PeerFactory
) -> None:
    server = await start_server()
    server.delay_session_updated(0.8)
    peer = peers()
    assert (await peer.dial(server.calls_url)).status == 201
    await asyncio.wait_for(peer.opened.wait(), WAIT)
    sent = time.monotonic()
    peer.send({"type": "session.update", "session": {"type": "realtime", "instructions": "x"}})
    peer.send({"type": "input_audio_buffer.clear"})
    await peer.until_event("session.updated")
    assert time.monotonic() - sent >= 0.8
    # Only the acknowledgement was late: the event after it was answered meanwhile.
    kinds = [e["type"] for e in peer.events]
    assert kinds.index("input_audio_buffer.cleared") < kinds.index("session.updated")


async def test_session_updated_can_be_withheld(
    start_server: StartServer, peers: PeerFactory
) -> None:
    server = await start_server()
    server.delay_session_updated(math.inf)
    peer = peers()
    assert (await peer.dial(server.calls_url)).status == 201
    await asyncio.wait_for(peer.opened.wait(), WAIT)
    peer.send({"type": "session.update", "session": {"type": "realtime", "instructions": "x"}})
    peer.send({"type": "input_audio_buffer.clear"})
    await peer.until_event("input_audio_buffer.cleared")
    await asyncio.sleep(0.5)
    assert not peer.of_type("session.updated")
    server.delay_session_updated(0)  # sessions from now on are acknowledged again
    later = peers()
    assert (await later.dial(server.calls_url)).status == 201
    await asyncio.wait_for(later.opened.wait(), WAIT)
    later.send({"type": "session.update", "session": {"type": "realtime"}})
    await later.until_event("session.updated")


async def test_hangup_and_drop_end_sessions(start_server: StartServer, peers: PeerFactory) -> None:
    server = await start_server()
    first, second = peers(), peers()
    replies = [await first.dial(server.calls_url), await second.dial(server.calls_url)]
    await first.until_event("session.created")
    location = replies[0].headers["Location"]
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{server.port}{location}/hangup") as reply,
    ):
        assert reply.status == 200
    await first.until("the first call gone", lambda: len(server.calls.sessions) == 1)
    await asyncio.wait_for(first.closed.wait(), WAIT)
    assert await server.drop_connections() == 1
    assert not server.calls.sessions
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{server.port}{location}/hangup") as reply,
    ):
        assert reply.status == 404
        assert (await reply.json())["error"]["code"] == "call_id_not_found"


async def test_websockets_still_work_on_the_same_port(start_server: StartServer) -> None:
    server = await start_server()
    assert server.url == f"ws://127.0.0.1:{server.port}/v1/realtime"
    client = AsyncOpenAI(api_key="x", base_url=f"http://127.0.0.1:{server.port}/v1")
    async with client, client.realtime.connect(model="gpt-realtime") as conn:
        assert (await conn.recv()).type == "session.created"


# ----- ephemeral keys and sidebands (server controls) -----------------------------------------


async def test_an_ephemeral_key_starts_calls_until_it_expires(peers: PeerFactory) -> None:
    clock = FakeClock()
    settings = LocalModelSettings(port=0, api_key=Secret("sekret"))
    async with LocalModelServer(settings, ice_addresses=LOOPBACK, clock=clock) as server:
        base = f"http://127.0.0.1:{server.port}/v1"
        async with AsyncOpenAI(api_key="sekret", base_url=base) as client:
            secret = await client.realtime.client_secrets.create(
                expires_after={"anchor": "created_at", "seconds": 60},
                session={"type": "realtime", "instructions": "From the key."},
            )
        assert secret.value.startswith("ek_")
        assert secret.expires_at == int(clock.now) + 60
        assert secret.session.type == "realtime" and secret.session.instructions == "From the key."
        # A browser's offer with the key: the key's session config is the call's.
        peer = peers()
        assert (await peer.dial(server.calls_url, secret.value)).status == 201
        created = (await peer.until_event("session.created"))["session"]
        assert created["instructions"] == "From the key."
        # The WebSocket path takes it too; an ephemeral key cannot mint another.
        async with (
            AsyncOpenAI(api_key=secret.value, base_url=base) as client,
            client.realtime.connect(model="gpt-realtime") as conn,
        ):
            assert (await conn.recv()).type == "session.created"
            with pytest.raises(AuthenticationError):
                await client.realtime.client_secrets.create()
        clock.now += 61  # expired: no new sessions (the one running goes on)
        assert (await peers().dial(server.calls_url, secret.value)).status == 401
        peer.send({"type": "input_audio_buffer.clear"})
        await peer.until_event("input_audio_buffer.cleared")


@pytest.mark.parametrize("seconds", [9, 7201, "60", 1.5])
async def test_an_ephemeral_keys_lifetime_is_10_to_7200_seconds(
    start_server: StartServer, seconds: object
) -> None:
    server = await start_server()
    body = {"expires_after": {"anchor": "created_at", "seconds": seconds}}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{server.port}/v1/realtime/client_secrets", json=body) as r,
    ):
        assert r.status == 400
        assert (await r.json())["error"]["param"] == "expires_after.seconds"


async def test_a_sideband_socket_shares_the_calls_session(
    start_server: StartServer, peers: PeerFactory
) -> None:
    server = await start_server()
    peer = peers()
    reply = await peer.dial(server.calls_url)
    call_id = reply.headers["Location"].rsplit("/", 1)[1]
    await peer.until_event("session.created")
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{server.url}?call_id={call_id}") as ws:
            # The server side asks for a response; the peer hears it, both see the events.
            await ws.send_json({"type": "response.create"})
            seen: list[str] = []
            async with asyncio.timeout(WAIT):
                while "output_audio_buffer.stopped" not in seen:
                    seen.append((await ws.receive_json())["type"])
            await peer.until_event("output_audio_buffer.stopped")
            assert seen == [e["type"] for e in peer.events[1:]]  # all but session.created
            assert peer.loud_frames > 10
            # A tool call's output, or an instruction, from the sideband reaches the session.
            await ws.send_json({"type": "session.update", "session": {"type": "realtime"}})
            await peer.until_event("session.updated")
            async with (
                aiohttp.ClientSession() as http_2,
                http_2.post(f"{server.calls_url}/{call_id}/hangup") as hung_up,
            ):
                assert hung_up.status == 200
            async with asyncio.timeout(WAIT):
                while (msg := await ws.receive()).type == aiohttp.WSMsgType.TEXT:
                    pass
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1000
