"""A caller's hang-up is not lost when the media channel to the session host breaks: the
ingress's HostLink keeps control inputs across a failed feed and delivers them once it has
reconnected (real CallHost, real channel WebSocket on loopback, the local model)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.agents.registry import load_agents
from services.config import LocalModelSettings, ModelSettings, Secret
from services.gateway.channel_port import ChannelHostPort
from services.gateway.host_link import HostLink
from services.localmodel.server import LocalModelServer
from services.realtime.tools import InProcessToolRunner
from services.runtime.commands import CallEnded, CallerHungUp, CallSpec, Command
from services.runtime.events import ListEventSink
from services.runtime.host import CallHost
from services.runtime.media_channel import MediaChannelServer
from tests.conftest import TIMEOUT_FACTOR
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


async def test_a_hang_up_sent_while_the_channel_is_down_arrives_after_it_reconnects(
    host: CallHost,
) -> None:
    await host.open_call(CallSpec("c1", ingress_id="i1"))
    servers = [MediaChannelServer(host)]
    await servers[0].start()

    async def channel() -> tuple[str, str]:  # what the host actor hands out over Ray
        return servers[-1].url, servers[-1].key

    got: list[Command] = []
    link = HostLink(
        ChannelHostPort(channel, ingress_id="i1"),
        ingress_id="i1",
        dispatch=got.append,
        retry_s=0.05,
    )
    link.start()
    try:
        link.add_frame("c1", b"\xff" * 160)  # the link connects and streams
        async with asyncio.timeout(WAIT):
            while link.batches == 0:
                await asyncio.sleep(0.01)
        await servers[0].stop()  # the host's channel goes away (host restarting its server)
        link.send("c1", CallerHungUp("stream_closed"))
        await asyncio.sleep(0.3)  # feeds fail meanwhile: nothing listens on the old channel
        assert "c1" in host.calls
        servers.append(MediaChannelServer(host))
        await servers[-1].start()
        async with asyncio.timeout(WAIT):
            while "c1" in host.calls:
                await asyncio.sleep(0.01)
            while CallEnded("c1", "stream_closed") not in got:
                await asyncio.sleep(0.01)
    finally:
        await link.close()
        await servers[-1].stop()
