"""Stream tokens are single-use across ingress processes: two gateways on real sockets, each with
its own :class:`StreamTokens` (same secret, so each accepts the other's tokens and its in-memory
replay check cannot see the other's), share one real Redis as the ledger; a real CallHost and the
local model take the calls, without Ray."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from services.agents.registry import load_agents
from services.config import GatewaySettings, LocalModelSettings, ModelSettings, Secret
from services.embedded.redis_server import EmbeddedRedis
from services.errors import TransportError
from services.gateway.app import Gateway
from services.gateway.token_ledger import CALL_KEY_PREFIX, KEY_PREFIX, RedisTokenLedger
from services.localmodel.server import LocalModelServer
from services.media.vocabulary import CallSpec
from services.realtime.tools import InProcessToolRunner
from services.runtime.events import ListEventSink
from services.runtime.host import CallHost
from services.runtime.router import RouterCore
from services.telephony.stream_tokens import StreamTokens
from tests.integration.test_gateway import (
    AUTH_TOKEN,
    LocalHost,
    SignedCaller,
    closed_with,
    raw_stream,
    signed,
    start_frame,
    until,
)
from tests.wire import WireValidator

pytestmark = pytest.mark.integration

SECRET = b"0123456789abcdef0123456789abcdef"
TTL_S = 30.0


class RecordingRouter:
    """The real router, noting which ingress asked to open which call."""

    def __init__(self, router: RouterCore) -> None:
        self.router = router
        self.opened: list[tuple[str, str]] = []

    async def open_call(self, spec: CallSpec) -> Any:
        self.opened.append((spec.ingress_id, spec.call_id))
        return await self.router.open_call(spec)


@dataclasses.dataclass
class Ingresses:
    bases: list[str]  # one gateway per ledger URL, in order
    host: CallHost
    router: RecordingRouter


@contextlib.asynccontextmanager
async def running_ingresses(
    wire: WireValidator, ledger_urls: Sequence[str]
) -> AsyncIterator[Ingresses]:
    settings = LocalModelSettings(port=0, speed=4.0, mode="scripted")
    async with (
        LocalModelServer(settings, observer=wire) as model,
        contextlib.AsyncExitStack() as stack,
    ):
        core = RouterCore(cluster_capacity=3, events=ListEventSink())
        host = CallHost(
            "h1",
            model=ModelSettings(Secret(""), None, "gpt-realtime"),
            model_url=model.url,
            agents=load_agents(),
            tool_runner=InProcessToolRunner(),
            events=ListEventSink(),
            capacity=3,
            on_call_end=core.release,
        )
        stack.push_async_callback(host.close_all, "test_end")
        local = LocalHost(host)
        await local.start()
        stack.push_async_callback(local.stop)
        core.register_host("h1", local, host, 3, os.getpid())
        router = RecordingRouter(core)
        bases = []
        for n, url in enumerate(ledger_urls):
            ledger = RedisTokenLedger(url)
            stack.push_async_callback(ledger.close)
            gateway = Gateway(
                ingress_id=f"ingress-{n}",
                settings=GatewaySettings(twilio_auth_token=Secret(AUTH_TOKEN)),
                router=router,
                locate_channel=lambda handle: local.locate,
                # Each "process" has its own tokens object: its replay memory is its own.
                tokens=StreamTokens(SECRET, TTL_S),
                ledger=ledger,
            )
            server = TestServer(gateway.app(), host="127.0.0.1")
            await server.start_server()
            stack.push_async_callback(server.close)
            bases.append(f"http://127.0.0.1:{server.port}")
        yield Ingresses(bases, host, router)


async def webhook_token(base: str, call_sid: str) -> str:
    """What Twilio does first: the voice webhook, answered with TwiML carrying the token."""
    form = {"CallSid": call_sid, "AccountSid": "AC" + "0" * 32, "From": "+1555", "To": "+1666"}
    url = f"{base}/twilio/voice"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=form, headers=signed(url, form)) as response:
            assert response.status == 200
            twiml = await response.text()
    return twiml.split('name="token" value="')[1].split('"')[0]


async def stream_keys(redis_client: aioredis.Redis) -> list[bytes]:
    return sorted(await redis_client.keys(KEY_PREFIX + "*"))


async def redis_now_ms(client: aioredis.Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def closed_port() -> int:
    """A loopback port nobody listens on: connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- through two gateways ----------------------------------------------------------------


async def test_a_token_replayed_to_another_ingress_is_refused_and_the_call_goes_on(
    wire: WireValidator, redis_server: EmbeddedRedis, redis_client: aioredis.Redis
) -> None:
    async with running_ingresses(wire, [redis_server.url, redis_server.url]) as cluster:
        base_a, base_b = cluster.bases
        caller = SignedCaller(base_a)
        twiml = await caller.dial()  # webhook on A, then the stream on A with its token
        token = twiml.split('name="token" value="')[1].split('"')[0]
        await until(lambda: caller.call_sid in cluster.host.calls, "the call on A")
        await until(lambda: caller.received_audio > 8 * 300, "the greeting on A")

        # The same start, token and all, presented to B: B's own memory has never seen it.
        replay = await raw_stream(base_b)
        await replay.send(start_frame(caller.call_sid, token))
        code, reason = await closed_with(replay)
        assert code == 1008 and "already used" in reason, (code, reason)
        assert cluster.router.opened == [("ingress-0", caller.call_sid)]

        # The ledger key expires with the token: memory in Redis stays bounded.
        nonce = token.split(".")[3]
        assert await stream_keys(redis_client) == [(KEY_PREFIX + nonce).encode()]
        before_ms = await redis_now_ms(redis_client)
        ttl_ms = await redis_client.pttl(KEY_PREFIX + nonce)
        assert 0 < ttl_ms <= TTL_S * 1000
        expires_ms = int(token.split(".")[2])
        # It goes when the token does (the ttl is set from the ingress's clock: a few ms of slack).
        assert -50 <= expires_ms - (before_ms + ttl_ms) < 1000

        # A's call never noticed.
        before = caller.received_audio
        await until(lambda: caller.received_audio > before or caller.played_audio > 0, "audio")
        assert caller.closed_reason is None and caller.call_sid in cluster.host.calls
        await caller.hang_up()
        await until(lambda: caller.call_sid not in cluster.host.calls, "the call's end")


async def test_a_token_is_claimed_by_whichever_ingress_sees_it_first(
    wire: WireValidator, redis_server: EmbeddedRedis
) -> None:
    """Webhook on A, stream on B (ingresses behind one load balancer): the first use wins
    wherever it lands, and a replay to A, which issued the token, is refused too."""
    async with running_ingresses(wire, [redis_server.url, redis_server.url]) as cluster:
        base_a, base_b = cluster.bases
        call_sid = "CA" + "4" * 32
        token = await webhook_token(base_a, call_sid)
        first = await raw_stream(base_b)
        await first.send(start_frame(call_sid, token))
        await until(lambda: call_sid in cluster.host.calls, "the call on B")
        replay = await raw_stream(base_a)
        await replay.send(start_frame(call_sid, token))
        code, reason = await closed_with(replay)
        assert code == 1008 and "already used" in reason, (code, reason)
        assert cluster.router.opened == [("ingress-1", call_sid)]
        await first.close()
        await until(lambda: call_sid not in cluster.host.calls, "the call's end")


async def test_refused_tokens_never_reach_the_ledger(
    wire: WireValidator, redis_server: EmbeddedRedis, redis_client: aioredis.Redis
) -> None:
    async with running_ingresses(wire, [redis_server.url, redis_server.url]) as cluster:
        base_a, base_b = cluster.bases
        call_sid = "CA" + "5" * 32
        token = await webhook_token(base_a, call_sid)
        forged = token[:-1] + ("A" if token[-1] != "A" else "B")
        other_secret = StreamTokens(b"another-secret-of-32-bytes-long!", TTL_S).issue(call_sid)
        expired = StreamTokens(SECRET, TTL_S, clock=lambda: 0.0).issue(call_sid)
        for bad, problem in [
            (forged, "signature"),
            (other_secret, "signature"),
            (expired, "expired"),
        ]:
            ws = await raw_stream(base_b)
            await ws.send(start_frame(call_sid, bad))
            code, reason = await closed_with(ws)
            assert code == 1008 and problem in reason, (bad, reason)
        assert await stream_keys(redis_client) == []
        assert cluster.router.opened == []


async def test_with_redis_unreachable_streams_are_refused_and_the_gateway_keeps_serving(
    wire: WireValidator, caplog: pytest.LogCaptureFixture
) -> None:
    down = f"redis://127.0.0.1:{closed_port()}"
    async with running_ingresses(wire, [down]) as cluster:
        (base,) = cluster.bases
        caplog.set_level(logging.ERROR, logger="services.gateway.ingress_core")
        for n in range(2):  # and again: one failure leaves nothing broken behind
            call_sid = f"CA{n}" + "6" * 31
            token = await webhook_token(base, call_sid)  # the webhook needs no Redis
            ws = await raw_stream(base)
            await ws.send(start_frame(call_sid, token))
            code, reason = await closed_with(ws)
            assert code == 1011 and reason == "stream token could not be checked", (code, reason)
        assert cluster.router.opened == []
        assert not cluster.host.calls
        logged = [
            r.getMessage() for r in caplog.records if r.name == "services.gateway.ingress_core"
        ]
        assert len(logged) == 2 and all("could not be checked" in m for m in logged), logged
        assert "unavailable" in logged[0]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz") as response:
                assert response.status == 200
                assert json.loads(await response.text()) == {"ok": True, "calls": 0}


# --- the ledger alone, on every Redis we support -------------------------------------------


async def test_the_first_claim_wins_and_the_key_expires_with_the_token(
    any_redis: EmbeddedRedis,
) -> None:
    ledger = RedisTokenLedger(any_redis.url)
    probe = aioredis.Redis.from_url(any_redis.url)
    try:
        expires_ms = await redis_now_ms(probe) + 20_000
        nonce = os.urandom(8).hex()
        assert await ledger.claim(nonce, expires_ms) is True
        assert await ledger.claim(nonce, expires_ms) is False
        before_ms = await redis_now_ms(probe)
        ttl_ms = await probe.pttl(KEY_PREFIX + nonce)
        assert 0 < ttl_ms <= 20_000 and -50 <= expires_ms - (before_ms + ttl_ms) < 1000
        assert await ledger.claim(os.urandom(8).hex(), expires_ms) is True  # another token
    finally:
        await probe.aclose()
        await ledger.close()


async def test_an_unreachable_ledger_raises_a_transport_error_without_the_url_secret() -> None:
    ledger = RedisTokenLedger(f"redis://:hunter2@127.0.0.1:{closed_port()}/0", timeout_s=1.0)
    try:
        with pytest.raises(TransportError, match="unavailable") as caught:
            await ledger.claim("nonce", 2**41)
        assert "hunter2" not in str(caught.value) and "hunter2" not in repr(ledger)
    finally:
        await ledger.close()


async def test_a_call_keeps_its_first_token_until_it_expires(any_redis: EmbeddedRedis) -> None:
    ledger = RedisTokenLedger(any_redis.url)
    probe = aioredis.Redis.from_url(any_redis.url)
    try:
        call = "CA" + os.urandom(16).hex()
        assert await ledger.token_for_call(call, "first", 20_000) == "first"
        assert await ledger.token_for_call(call, "second", 20_000) == "first"  # a retry
        assert 0 < await probe.pttl(CALL_KEY_PREFIX + call) <= 20_000
        assert await ledger.token_for_call("CA-other", "third", 20_000) == "third"
        await probe.delete(CALL_KEY_PREFIX + call)  # expired
        assert await ledger.token_for_call(call, "fourth", 20_000) == "fourth"
    finally:
        await probe.aclose()
        await ledger.close()
