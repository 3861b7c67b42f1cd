"""Path (a) of issue 11 on real sockets: calls that the model's SIP connector holds. Our local
model plays OpenAI (its SIP call registry stands in for the SIP front that will take sipp's
INVITE), signs the webhook, and our gateway(s), a CallHost and the router (real Redis for the
cluster-wide dedup) accept, attach, greet, hang up, transfer, refuse, all over loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from services.agents.control import CallControl
from services.agents.demo import DEMO_AGENT
from services.agents.registry import AgentRegistry, load_agents
from services.config import GatewaySettings, LocalModelSettings, ModelSettings, Secret
from services.embedded.redis_server import EmbeddedRedis
from services.errors import ProviderError
from services.gateway.app import Gateway
from services.gateway.direct_calls import model_access
from services.gateway.token_ledger import RedisTokenLedger
from services.localmodel.server import LocalModelServer
from services.localmodel.sip_calls import Answer, Bye, FrontCommand, Refer, Reject, SipCalls
from services.localmodel.webhook_sender import WebhookSender, incoming_event, signed_headers
from services.realtime.agent import RealtimeAgent
from services.realtime.tools import InProcessToolRunner, ToolContext, function_tool
from services.realtime.transports.sip import CallGone, SipCallControl
from services.runtime.events import ListEventSink
from services.runtime.host import CallHost
from services.runtime.router import RouterCore
from services.telephony.stream_tokens import StreamTokens
from tests.integration.test_gateway import LocalHost, until
from tests.virtual_time import FakeClock
from tests.wire import WireValidator

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"callray-openai-sip-test-secret!!").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"not-the-secret-the-gateway-has!!").decode()
MODEL_KEY = "sk-model-" + "5" * 24
SILENT_FRAME = b"\xff" * 160
FROM = "<sip:+14155550100@carrier.example>;tag=8f1"
TO = "<sip:+18005550100@acme.example>"
INVITE = [
    ("Via", "SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK776"),
    ("From", FROM),
    ("To", TO),
    ("Call-ID", "a84b4c76e66710@carrier.example"),
    ("CSeq", "314159 INVITE"),
    ("Proxy-Authorization", 'Digest username="trunk", response="0a4f113b"'),
]


class Front:
    """Stands in for the SIP front: what it is told to put on the wire, and the audio it would
    send to the caller (started on each Answer, as after the ACK)."""

    def __init__(self, calls: SipCalls) -> None:
        self.commands: list[FrontCommand] = []
        self.frames: dict[str, list[bytes]] = {}
        calls.add_listener(self.told)

    def told(self, command: FrontCommand) -> None:
        self.commands.append(command)
        if isinstance(command, Answer):
            command.session.start_audio(self.frames.setdefault(command.call_id, []).append)

    def of(self, call_id: str, kind: type[Any] = object) -> list[Any]:
        return [c for c in self.commands if c.call_id == call_id and isinstance(c, kind)]

    def heard(self, call_id: str) -> int:
        return sum(f != SILENT_FRAME for f in self.frames.get(call_id, []))


@dataclass
class Stack:
    model: LocalModelServer
    host: CallHost
    router: RouterCore
    events: ListEventSink
    gateways: list[Gateway]
    urls: list[str]
    front: Front
    http: aiohttp.ClientSession
    ledgers: list[RedisTokenLedger] = field(default_factory=list)

    def started(self, call_id: str) -> bool:
        return ("call.started", call_id) in [(k, c) for k, c, _ in self.events.events]

    def ended(self, call_id: str) -> list[str]:
        return [f["reason"] for k, c, f in self.events.events if k == "call.ended" and c == call_id]

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        async with self.http.post(url, data=body, headers=headers) as reply:
            await reply.read()
            return reply.status


@contextlib.asynccontextmanager
async def sip_stack(
    wire: WireValidator,
    redis: EmbeddedRedis,
    *,
    gateways: int = 1,
    capacity: int = 3,
    scenario: str | None = None,
    agents: AgentRegistry | None = None,
    timers: FakeClock | None = None,
) -> AsyncIterator[Stack]:
    settings = LocalModelSettings(port=0, speed=4.0, scenario=scenario, api_key=Secret(MODEL_KEY))
    async with LocalModelServer(settings, observer=wire, timers=timers) as model:
        router = RouterCore(cluster_capacity=capacity, events=ListEventSink())
        model_settings = ModelSettings(Secret(MODEL_KEY), None, "gpt-realtime")
        events = ListEventSink()
        host = CallHost(
            "h1",
            model=model_settings,
            model_url=model.url,
            agents=agents or load_agents(),
            tool_runner=InProcessToolRunner(),
            events=events,
            capacity=capacity,
            on_call_end=router.release,
        )
        local = LocalHost(host)
        await local.start()
        # (LocalHost serves what these tests use of HostLike: no drains, no moves.)
        router.register_host("h1", local, host, capacity, os.getpid())  # type: ignore[arg-type]
        ledgers = [RedisTokenLedger(redis.url) for _ in range(gateways)]
        gws = [
            Gateway(
                ingress_id=f"i{n}",
                settings=GatewaySettings(openai_webhook_secret=Secret(SECRET)),
                router=router,
                locate_channel=lambda handle: local.locate,
                tokens=StreamTokens(b"0123456789abcdef0123456789abcdef", 30.0),
                ledger=ledger,
                model_access=model_access(model_settings, model.url, None, 60.0),
            )
            for n, ledger in enumerate(ledgers)
        ]
        urls = [
            f"http://127.0.0.1:{await gw.listen('127.0.0.1', 0)}/openai/sip/webhook" for gw in gws
        ]
        model.sip.webhook = WebhookSender(urls[0], Secret(SECRET))
        front = Front(model.sip)
        async with aiohttp.ClientSession() as http:
            try:
                yield Stack(model, host, router, events, gws, urls, front, http, ledgers)
            finally:
                for gw in gws:
                    await gw.stop()
                await host.close_all("test_end")
                await local.stop()
                for ledger in ledgers:
                    await ledger.close()


def delivery(call_id: str, *, secret: str = SECRET, age_s: int = 0) -> tuple[bytes, dict[str, str]]:
    """A webhook as the connector signs it, ``age_s`` seconds old."""
    now = int(time.time())
    body = incoming_event(call_id, INVITE[:3], event_id="evt_t" + call_id[-8:], created_at=now)
    return body, signed_headers(secret, "wh_t" + call_id[-8:], now - age_s, body)


@pytest.fixture
async def redis(redis_server: EmbeddedRedis, redis_client: aioredis.Redis) -> EmbeddedRedis:
    return redis_server  # redis_client: an empty database for each test


# ----- the call, end to end -----------------------------------------------------------------------


async def test_a_signed_webhook_gets_the_call_accepted_attached_and_greeted(
    wire: WireValidator, redis: EmbeddedRedis
) -> None:
    async with sip_stack(wire, redis) as s:
        call_id = s.model.sip.incoming(INVITE)
        await until(lambda: s.started(call_id), "the session")
        session = s.host.calls[call_id]
        assert (session.spec.transport, session.spec.attach) == ("openai-sip", True)
        assert dict(session.spec.caller) == {"from": FROM, "to": TO}
        # The accept carried the agent's config, G.711 both ways.
        (answer,) = s.front.of(call_id, Answer)
        accepted = answer.session.engine.session
        assert accepted["instructions"] == DEMO_AGENT.instructions
        assert accepted["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        assert {t["name"] for t in accepted["tools"]} >= {"hang_up", "transfer_to_human"}
        # Then the sideband attached and asked for the greeting, which the caller hears.
        await until(
            lambda: any(e["type"] == "response.create" for e in wire.client_log), "the greeting"
        )
        await until(lambda: s.front.heard(call_id) >= 10, "the greeting on the SIP leg")
        answer.session.dtmf("7")
        await until(lambda: ("dtmf", call_id, {"digit": "7"}) in s.events.events, "the dtmf")
        # The caller's BYE: the model closes the sideband, the session ends, the seat is free.
        s.model.sip.caller_hung_up(call_id)
        await until(lambda: call_id not in s.host.calls, "the session's end")
        assert s.ended(call_id) == ["caller_hangup"]
        await until(lambda: not s.gateways[0].core.calls, "the ingress's release")
        assert s.router.placement.active_calls == 0
        assert s.front.of(call_id, Bye) == []  # the caller left; nobody sends them a BYE


async def test_forged_stale_unsigned_and_malformed_webhooks_get_400_and_no_accept(
    wire: WireValidator, redis: EmbeddedRedis
) -> None:
    async with sip_stack(wire, redis) as s:
        s.model.sip.webhook = None  # the test delivers by hand
        call_id = s.model.sip.incoming(INVITE)
        body, good = delivery(call_id)
        cases: list[tuple[str, bytes, dict[str, str]]] = [
            ("forged", *delivery(call_id, secret=OTHER_SECRET)),
            ("stale", *delivery(call_id, age_s=301)),
            ("unsigned", body, {"content-type": "application/json"}),
            ("tampered", body.replace(b'"From"', b'"Frum"'), good),
        ]
        now = int(time.time())
        for name, raw in [("not json", b"{not json"), ("no call id", b'{"type":"x","data":{}}')]:
            raw = raw.replace(b'"x"', b'"realtime.call.incoming"')
            cases.append((name, raw, signed_headers(SECRET, "wh_bad", now, raw)))
        for name, sent, headers in cases:
            assert await s.post(s.urls[0], sent, headers) == 400, name
        other = json.dumps(
            {
                "object": "event",
                "id": "evt_o",
                "type": "response.completed",
                "created_at": now,
                "data": {"id": "resp_1"},
            }
        ).encode()
        assert await s.post(s.urls[0], other, signed_headers(SECRET, "wh_o", now, other)) == 200
        # (Refused webhooks start nothing: there is nothing to wait for.)
        assert not s.gateways[0].openai_sip._tasks  # type: ignore[union-attr]
        assert s.model.sip.state(call_id) == "pending" and not s.host.calls
        assert s.front.commands == []
        # The same call, announced properly, is taken.
        assert await s.post(s.urls[0], body, good) == 200
        await until(lambda: s.started(call_id), "the session")


async def test_three_copies_to_two_gateways_sharing_redis_make_one_accept(
    wire: WireValidator, redis: EmbeddedRedis
) -> None:
    async with sip_stack(wire, redis, gateways=2) as s:
        s.model.sip.webhook = None
        call_id = s.model.sip.incoming(INVITE)
        body, headers = delivery(call_id)
        a, b = s.urls
        statuses = await asyncio.gather(*(s.post(u, body, headers) for u in (a, b, a)))
        assert statuses == [200, 200, 200]
        # The same call announced again under another webhook id: still one.
        again = dict(headers, **{"webhook-id": "wh_another"})
        again["webhook-signature"] = signed_headers(
            SECRET, "wh_another", int(again["webhook-timestamp"]), body
        )["webhook-signature"]
        assert await s.post(b, body, again) == 200
        await until(lambda: s.front.heard(call_id) >= 5, "the greeting")
        assert len(s.front.of(call_id, Answer)) == 1
        assert sum(call_id in gw.core.calls for gw in s.gateways) == 1
        # The local model's own duplicates (same id, all at once) to the other gateway.
        s.model.sip.webhook = WebhookSender(b, Secret(SECRET), duplicates=3)
        second = s.model.sip.incoming(INVITE)
        await until(lambda: s.front.heard(second) >= 5, "the second call's greeting")
        assert s.model.sip.webhook.attempts == 3
        assert len(s.front.of(second, Answer)) == 1
        assert not [c for c in s.front.commands if isinstance(c, Bye | Reject)]
        assert s.router.placement.active_calls == 2


async def test_a_call_past_capacity_is_rejected_486(
    wire: WireValidator, redis: EmbeddedRedis
) -> None:
    async with sip_stack(wire, redis, capacity=1) as s:
        first = s.model.sip.incoming(INVITE)
        await until(lambda: s.started(first), "the first call")
        second = s.model.sip.incoming(INVITE)
        await until(lambda: bool(s.front.of(second)), "the second call's answer")
        assert s.front.of(second) == [Reject(second, 486)]
        assert s.model.sip.state(second) == "rejected"
        assert s.model.sip.state(first) == "accepted" and s.router.placement.active_calls == 1


async def test_a_caller_gone_before_the_accept_frees_the_seat(
    wire: WireValidator, redis: EmbeddedRedis
) -> None:
    async with sip_stack(wire, redis) as s:
        s.model.sip.webhook = None
        call_id = s.model.sip.incoming(INVITE)
        s.model.sip.cancelled(call_id)  # CANCEL while the webhook was on its way
        assert await s.post(s.urls[0], *delivery(call_id)) == 200
        await until(lambda: bool(s.ended(call_id)), "the call's end")
        assert s.ended(call_id) == ["caller_gone"]
        assert s.router.placement.active_calls == 0 and not s.host.calls
        assert not s.gateways[0].core.calls
        await until(lambda: not s.gateways[0].openai_sip._tasks, "the gateway's follow-up")  # type: ignore[union-attr]
        assert s.front.commands == []  # no reject, no hang-up: there was nobody left
        assert s.model.sip.state(call_id) == "cancelled"


# ----- call control from the agent --------------------------------------------------------------


def _scenario(tmp_path: Path, tool: str, then: str) -> str:
    path = tmp_path / f"{tool}.json"
    path.write_text(
        json.dumps({"steps": [{"tool": {"name": tool, "arguments": {}}, "then": then}]})
    )
    return str(path)


async def test_the_hang_up_tool_hangs_the_call_up_at_the_model(
    wire: WireValidator, redis: EmbeddedRedis, tmp_path: Path
) -> None:
    scenario = _scenario(tmp_path, "hang_up", "Goodbye!")
    async with sip_stack(wire, redis, scenario=scenario) as s:
        call_id = s.model.sip.incoming(INVITE)
        await until(lambda: bool(s.front.of(call_id, Bye)), "the BYE")
        assert s.model.sip.state(call_id) == "ended"
        await until(lambda: bool(s.ended(call_id)), "the session's end")
        assert s.ended(call_id) == ["agent_hangup"]
        assert s.front.heard(call_id) > 0  # the goodbye was said first


def _control(ctx: ToolContext) -> CallControl:
    assert isinstance(ctx.context, CallControl)
    return ctx.context


@function_tool(in_process=True)
def transfer_to_desk(ctx: ToolContext) -> str:
    """Transfer the caller to the front desk."""
    _control(ctx).transfer("sip:desk@acme.example")
    return "Transferring."


@function_tool(in_process=True)
def transfer_to_queue(ctx: ToolContext) -> str:
    """Transfer the caller to the billing queue."""
    _control(ctx).transfer("queue:billing")
    return "Transferring."


DESK = AgentRegistry(
    {"Desk": RealtimeAgent(name="Desk", tools=[transfer_to_desk, transfer_to_queue])}, "Desk"
)


async def test_the_transfer_tool_refers_the_call_to_its_sip_target(
    wire: WireValidator, redis: EmbeddedRedis, tmp_path: Path
) -> None:
    scenario = _scenario(tmp_path, "transfer_to_desk", "Putting you through.")
    async with sip_stack(wire, redis, scenario=scenario, agents=DESK) as s:
        call_id = s.model.sip.incoming(INVITE)
        await until(lambda: bool(s.front.of(call_id, Refer)), "the REFER")
        assert s.front.of(call_id, Refer) == [Refer(call_id, "sip:desk@acme.example")]
        await until(lambda: bool(s.ended(call_id)), "the session's end")
        assert s.ended(call_id) == ["transferred"]
        await until(lambda: not s.gateways[0].openai_sip._tasks, "the gateway's follow-up")  # type: ignore[union-attr]
        # A refer that went through is not followed by a hang-up: the caller is on their way.
        assert s.front.of(call_id, Bye) == [] and s.model.sip.state(call_id) == "accepted"


async def test_a_transfer_to_what_sip_cannot_refer_to_is_refused_to_the_model(
    wire: WireValidator, redis: EmbeddedRedis, tmp_path: Path
) -> None:
    scenario = _scenario(tmp_path, "transfer_to_queue", "Sorry, {output}")
    async with sip_stack(wire, redis, scenario=scenario, agents=DESK) as s:
        call_id = s.model.sip.incoming(INVITE)
        await until(
            lambda: any(k == "tool.returned" and c == call_id for k, c, _ in s.events.events),
            "the tool's result",
        )
        (result,) = [f for k, c, f in s.events.events if k == "tool.returned" and c == call_id]
        assert result["outcome"] == "tool_error"
        outputs = [
            e["item"]["output"]
            for e in wire.client_log
            if e["type"] == "conversation.item.create"
            and e["item"]["type"] == "function_call_output"
        ]
        assert len(outputs) == 1 and "tel:" in outputs[0] and "sip:" in outputs[0]
        await until(lambda: s.front.heard(call_id) >= 5, "the apology")
        assert call_id in s.host.calls and s.front.of(call_id, Refer) == []


# ----- the local model's side of it -------------------------------------------------------------


async def test_a_call_not_accepted_in_time_times_out_and_a_late_accept_gets_404(
    wire: WireValidator, redis: EmbeddedRedis
) -> None:
    clock = FakeClock()
    async with sip_stack(wire, redis, timers=clock) as s:
        s.model.sip.webhook = None
        control = SipCallControl(f"http://127.0.0.1:{s.model.port}/v1", Secret(MODEL_KEY))
        try:
            call_id = s.model.sip.incoming(INVITE)
            clock.advance(9.9)
            assert s.model.sip.state(call_id) == "pending"
            clock.advance(0.2)
            assert s.front.commands[-1].call_id == call_id
            assert type(s.front.commands[-1]).__name__ == "TimedOut"
            with pytest.raises(CallGone):
                await control.accept(call_id, {"type": "realtime"})
        finally:
            await control.close()


async def test_the_rest_endpoints_check_what_they_are_given(
    wire: WireValidator, redis: EmbeddedRedis
) -> None:
    wire.tolerate("server", "error")
    async with sip_stack(wire, redis) as s:
        s.model.sip.webhook = None
        base = f"http://127.0.0.1:{s.model.port}/v1"
        control = SipCallControl(base, Secret(MODEL_KEY))
        try:
            call_id = s.model.sip.incoming(INVITE)
            tuned = {"type": "server_vad", "silence_duration_ms": 500}
            auth = {"Authorization": f"Bearer {MODEL_KEY}"}
            async with s.http.post(
                f"{base}/realtime/calls/{call_id}/accept", json={"model": "m"}, headers=auth
            ) as reply:  # no type (the package would not send that)
                assert reply.status == 400
                assert (await reply.json())["error"]["param"] == "type"
            for bad in (
                {"type": "realtime", "audio": {"input": {"turn_detection": tuned}}},
                {"type": "realtime", "audio": {"input": {"format": {"type": "audio/mp3"}}}},
            ):
                with pytest.raises(ProviderError) as info:
                    await control.accept(call_id, bad)
                assert not isinstance(info.value, CallGone) and not info.value.retryable
            assert s.model.sip.state(call_id) == "pending"  # a refused accept leaves it so
            with pytest.raises(ProviderError):
                await control.reject(call_id, 200)
            async with s.http.post(
                f"{base}/realtime/calls/{call_id}/refer",
                json={"target_uri": "http://evil.example"},
                headers=auth,
            ) as reply:
                assert reply.status == 400
                assert (await reply.json())["error"]["param"] == "target_uri"
            await control.reject(call_id)
            assert s.front.of(call_id) == [Reject(call_id, 603)]
            with pytest.raises(CallGone):
                await control.hangup("rtc_" + "0" * 32)  # neither SIP nor WebRTC
            unauthorized = SipCallControl(base, Secret("sk-wrong"))
            try:
                with pytest.raises(ProviderError) as info:
                    await unauthorized.hangup(call_id)
                assert "401" in str(info.value)
            finally:
                await unauthorized.close()
        finally:
            await control.close()


async def test_callray_model_takes_the_webhook_flags() -> None:
    from tests.integration.test_cli_model import start_model

    proc = await start_model("--webhook-url", "http://127.0.0.1:9/hook", "--webhook-secret", SECRET)
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            banner = b"".join([await proc.stdout.readline() for _ in range(4)]).decode()
        assert "SIP calls announced to: http://127.0.0.1:9/hook" in banner
    finally:
        proc.kill()
        await proc.wait()
    bad = await start_model(
        "--webhook-url", "http://127.0.0.1:9/hook", "--webhook-secret", "whsec_!"
    )
    async with asyncio.timeout(20):
        _, err = await bad.communicate()
    assert bad.returncode == 2 and b"--webhook-secret must be whsec_" in err
