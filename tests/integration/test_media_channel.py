"""The media channel on real sockets: a real CallHost behind a MediaChannelServer, the ingress's
MediaChannelClient, the local model. Commands are pushed to the ingress as they are produced;
a caller's hang-up survives the channel breaking; a peer without the key never reaches a call;
a host whose channel stays away is retried at a bounded rate."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import websockets

from services.agents.registry import load_agents
from services.config import LocalModelSettings, ModelSettings, Secret
from services.localmodel.server import LocalModelServer
from services.media.channel import Redelivery, encode_hello, encode_inputs
from services.media.channel_client import MediaChannelClient
from services.media.channel_server import MediaChannelServer
from services.media.vocabulary import CallEnded, CallerHungUp, CallSpec, Command, PlayAudio
from services.realtime.tools import InProcessToolRunner
from services.runtime.events import ListEventSink
from services.runtime.host import CallHost
from tests.conftest import TIMEOUT_FACTOR
from tests.virtual_time import FakeClock
from tests.wire import WireValidator

pytestmark = pytest.mark.integration

WAIT = 10 * TIMEOUT_FACTOR


@pytest.fixture
async def host(wire: WireValidator) -> AsyncIterator[CallHost]:
    async with LocalModelServer(LocalModelSettings(port=0, speed=20.0), observer=wire) as model:
        host = CallHost(
            "h1",
            model=ModelSettings(Secret(""), None, "gpt-realtime"),
            model_url=model.url,
            agents=load_agents(),
            tool_runner=InProcessToolRunner(),
            events=ListEventSink(),
        )
        try:
            yield host
        finally:
            await host.close_all("test_end")


async def until(predicate: Callable[[], object]) -> None:
    async with asyncio.timeout(WAIT):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_the_greeting_is_pushed_to_an_ingress_that_sends_nothing(host: CallHost) -> None:
    server = MediaChannelServer(host)
    await server.start()

    async def locate() -> tuple[str, str]:
        return server.url, server.key

    got: list[Command] = []
    client = MediaChannelClient(locate, ingress_id="i1", dispatch=got.append)
    client.start()
    try:
        await host.open_call(CallSpec("c1", ingress_id="i1"))  # greets at once
        await until(lambda: any(isinstance(c, PlayAudio) for c in got))
        assert client.batches == 0  # nothing was asked for: the host pushed
    finally:
        await client.close()
        await server.stop()


async def test_a_hang_up_sent_while_the_channel_is_down_arrives_after_it_reconnects(
    host: CallHost,
) -> None:
    await host.open_call(CallSpec("c1", ingress_id="i1"))
    servers = [MediaChannelServer(host)]
    await servers[0].start()

    async def locate() -> tuple[str, str]:  # what the host actor hands out over Ray
        return servers[-1].url, servers[-1].key

    got: list[Command] = []
    client = MediaChannelClient(
        locate,
        ingress_id="i1",
        dispatch=got.append,
        redelivery=Redelivery(first_delay_s=0.02, max_delay_s=0.05),
    )
    client.start()
    try:
        client.send("c1", b"\xff" * 160)  # the client connects and streams
        await until(lambda: client.batches)
        await servers[0].stop()  # the host's channel goes away (host restarting its server)
        await until(lambda: not client.connected.is_set())
        client.send("c1", CallerHungUp("stream_closed"))
        await asyncio.sleep(0.2)  # connecting fails meanwhile: nothing listens
        assert "c1" in host.calls
        servers.append(MediaChannelServer(host))
        await servers[-1].start()
        await until(lambda: "c1" not in host.calls)
        await until(lambda: CallEnded("c1", "stream_closed") in got)
    finally:
        await client.close()
        await servers[-1].stop()


async def test_a_peer_without_the_key_is_closed_before_reaching_a_call(host: CallHost) -> None:
    await host.open_call(CallSpec("c1", ingress_id="i1"))
    server = MediaChannelServer(host)
    await server.start()
    try:
        async with websockets.connect(server.url) as ws:
            await ws.send(encode_hello("intruder", "wrong-key"))
            await ws.send(encode_inputs(0.0, [("c1", CallerHungUp("forged"))]))
            with pytest.raises(websockets.ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1008
            assert info.value.rcvd.reason == "wrong media channel key"
        await asyncio.sleep(0.1)
        assert "c1" in host.calls  # the forged hang-up never reached it
    finally:
        await server.stop()


async def test_a_host_that_stays_away_is_retried_with_back_off_then_given_up() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:  # virtual time: record, do not wait
        slept.append(seconds)
        await asyncio.sleep(0)

    async def locate() -> tuple[str, str]:
        return "ws://127.0.0.1:9/media", "key"  # the discard port: nothing listens

    policy = Redelivery(give_up_after=6, first_delay_s=0.05, max_delay_s=0.4)
    client = MediaChannelClient(
        locate, ingress_id="i1", dispatch=lambda _c: None, redelivery=policy, sleep=sleep
    )
    client.send("c1", CallerHungUp("stream_closed"))
    client.start()
    try:
        await until(lambda: len(slept) >= 7)
    finally:
        await client.close()
    assert slept[:7] == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4, 0.4]
    assert client.pending == 0  # the hang-up was given up after the sixth failure


async def test_a_host_unreachable_for_host_lost_s_is_reported_lost_once() -> None:
    clock = FakeClock()

    async def sleep(seconds: float) -> None:  # virtual time: the back-off moves the clock
        clock.advance(seconds)
        await asyncio.sleep(0)

    async def locate() -> tuple[str, str]:
        return "ws://127.0.0.1:9/media", "key"  # the discard port: nothing listens

    lost: list[float] = []
    client = MediaChannelClient(
        locate,
        ingress_id="i1",
        dispatch=lambda _c: None,
        sleep=sleep,
        clock=clock,
        on_lost=lambda: lost.append(clock()),
        lost_after_s=1.0,
    )
    began = clock()
    client.start()
    try:
        await until(lambda: bool(lost))
        await asyncio.sleep(0.05)  # and it stops trying: reported once
    finally:
        await client.close()
    assert len(lost) == 1 and 1.0 <= lost[0] - began < 2.0
