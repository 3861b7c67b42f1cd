"""Path (a) of issue 11 end to end, on real sockets (127.0.0.1): a SIP caller dials the local
model's SIP front as it would dial OpenAI's SIP connector; the front announces the call with a
signed webhook to OUR gateway (``openai_sip.py``, real Redis for the dedup), which opens it
through the router on a CallHost; the session accepts with the agent's config, attaches by
``?call_id=`` and greets, and the caller hears the greeting as μ-law RTP. Also: busy → 486 at
the caller, a caller gone before the accept (a real CANCEL) → the accept's 404 handled, the
hang-up tool → BYE and the transfer tool → REFER at SIPp, and baresip recording the greeting."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from services.agents.control import CallControl
from services.agents.registry import AgentRegistry, load_agents
from services.config import GatewaySettings, LocalModelSettings, ModelSettings, Secret
from services.embedded.redis_server import EmbeddedRedis
from services.gateway.app import Gateway
from services.gateway.direct_calls import model_access
from services.gateway.token_ledger import RedisTokenLedger
from services.loadgen.sip_caller import SipCaller
from services.localmodel.server import LocalModelServer
from services.localmodel.sip_calls import Answer
from services.localmodel.sip_front import SipFrontSettings
from services.localmodel.webhook_sender import WebhookSender
from services.realtime.agent import RealtimeAgent
from services.realtime.tools import InProcessToolRunner, ToolContext, function_tool
from services.runtime.events import ListEventSink
from services.runtime.host import CallHost
from services.runtime.router import RouterCore
from services.telephony.stream_tokens import StreamTokens
from tests.integration.test_gateway import LocalHost, until
from tests.integration.test_openai_sip import MODEL_KEY, SECRET
from tests.sip_peers import Baresip, Sipp, analyse_wav, write_wav
from tests.wire import WireValidator

pytestmark = pytest.mark.integration


class HeldWebhook(WebhookSender):
    """Announces calls only once ``gate`` is set: the caller can give up first."""

    gate: asyncio.Event
    held: list[str]

    async def send_incoming(self, call_id: str, sip_headers: Sequence[tuple[str, str]]) -> bool:
        self.held.append(call_id)
        await self.gate.wait()
        return await super().send_incoming(call_id, sip_headers)


@dataclass
class Stack:
    model: LocalModelServer
    host: CallHost
    router: RouterCore
    events: ListEventSink
    gateway: Gateway
    webhook_url: str
    answers: list[Answer]

    @property
    def target(self) -> tuple[str, int]:
        return ("127.0.0.1", self.model.sip_port or 0)

    def kinds(self, kind: str) -> list[tuple[str, dict[str, object]]]:
        return [(c, f) for k, c, f in self.events.events if k == kind]

    def ended(self) -> list[object]:
        return [f["reason"] for _c, f in self.kinds("call.ended")]


@contextlib.asynccontextmanager
async def stack(
    wire: WireValidator,
    redis: EmbeddedRedis,
    *,
    capacity: int = 3,
    scenario: str | None = None,
    agents: AgentRegistry | None = None,
) -> AsyncIterator[Stack]:
    settings = LocalModelSettings(port=0, speed=4.0, scenario=scenario, api_key=Secret(MODEL_KEY))
    async with LocalModelServer(settings, observer=wire, sip=SipFrontSettings()) as model:
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
        router.register_host("h1", local, host, capacity, os.getpid())  # type: ignore[arg-type]
        ledger = RedisTokenLedger(redis.url)
        gateway = Gateway(
            ingress_id="i1",
            settings=GatewaySettings(openai_webhook_secret=Secret(SECRET)),
            router=router,
            locate_channel=lambda handle: local.locate,
            tokens=StreamTokens(b"0123456789abcdef0123456789abcdef", 30.0),
            ledger=ledger,
            model_access=model_access(model_settings, model.url, None, 60.0),
        )
        url = f"http://127.0.0.1:{await gateway.listen('127.0.0.1', 0)}/openai/sip/webhook"
        model.sip.webhook = WebhookSender(url, Secret(SECRET))
        answers: list[Answer] = []
        model.sip.add_listener(lambda c: answers.append(c) if isinstance(c, Answer) else None)
        try:
            yield Stack(model, host, router, events, gateway, url, answers)
        finally:
            await gateway.stop()
            await host.close_all("test_end")
            await local.stop()
            await ledger.close()


@pytest.fixture
async def redis(redis_server: EmbeddedRedis, redis_client: aioredis.Redis) -> EmbeddedRedis:
    return redis_server  # redis_client: an empty database for each test


def _scenario(tmp_path: Path, tool: str, then: str) -> str:
    path = tmp_path / f"{tool}.json"
    path.write_text(
        json.dumps({"steps": [{"tool": {"name": tool, "arguments": {}}, "then": then}]})
    )
    return str(path)


# ----- the call -----------------------------------------------------------------------------------


async def test_a_sip_caller_is_answered_by_the_agent_and_hears_its_greeting(
    wire: WireValidator, redis: EmbeddedRedis
) -> None:
    async with stack(wire, redis) as s:
        caller = SipCaller(s.target)
        assert await caller.dial() == 200
        await until(lambda: bool(s.kinds("call.started")), "the session")
        (call_id,) = [c for c, _f in s.kinds("call.started")]
        session = s.host.calls[call_id]
        assert (session.spec.transport, session.spec.attach) == ("openai-sip", True)
        assert f"tag={caller.tag}" in dict(session.spec.caller)["from"]
        # The accept carried the agent's config: μ-law both ways, which the SDP answer names.
        sip_session = s.model.sip.session(call_id)
        assert sip_session is not None
        accepted = sip_session.engine.session
        assert accepted is not None and accepted["audio"]["input"]["format"]["type"] == "audio/pcmu"
        assert b"RTP/AVP 0 " in caller.answer
        await until(lambda: caller.heard_ms >= 500, "the agent's greeting as μ-law RTP")
        await caller.send_dtmf("4")
        await until(lambda: bool(s.kinds("dtmf")), "the digit at the session")
        assert s.kinds("dtmf")[0][1] == {"digit": "4"}
        await caller.hang_up()
        await until(lambda: bool(s.ended()), "the session's end")
        assert s.ended() == ["caller_hangup"] and s.model.sip.state(call_id) == "ended"
        await until(lambda: s.router.placement.active_calls == 0, "the seat freed")


async def test_sipps_ulaw_caller_completes_a_call_heard_by_the_agents_model(
    wire: WireValidator, redis: EmbeddedRedis, tmp_path: Path
) -> None:
    async with stack(wire, redis) as s:
        result = await Sipp("uac_rtp_stream.xml", tmp_path, duration_ms=3500).run(s.target)
        result.assert_ok()
        (call_id,) = [c for c, _f in s.kinds("call.started")]
        assert s.model.sip.state(call_id) == "ended"
        await until(lambda: bool(s.ended()), "the session's end")
        assert s.ended() == ["caller_hangup"]
        # SIPp's 3 s tone reached the agent's model session (over the SIP leg, not the gateway).
        (answer,) = s.answers
        assert answer.session.frames_in >= 140


async def test_a_caller_past_capacity_gets_486(wire: WireValidator, redis: EmbeddedRedis) -> None:
    async with stack(wire, redis, capacity=1) as s:
        first = SipCaller(s.target)
        assert await first.dial() == 200
        second = SipCaller(s.target)
        assert await second.dial() == 486
        await second.close()
        assert s.router.placement.active_calls == 1 and len(s.host.calls) == 1
        await first.hang_up()


async def test_a_caller_gone_before_the_accept_is_handled(
    wire: WireValidator, redis: EmbeddedRedis, tmp_path: Path
) -> None:
    async with stack(wire, redis) as s:
        held = HeldWebhook(s.webhook_url, Secret(SECRET))
        held.gate, held.held = asyncio.Event(), []
        s.model.sip.webhook = held
        result = await Sipp("uac_cancel.xml", tmp_path).run(s.target)
        result.assert_ok()  # 487 to its INVITE
        (call_id,) = held.held
        assert s.model.sip.state(call_id) == "cancelled"
        held.gate.set()  # now the gateway hears of it, and its accept gets 404
        await until(lambda: bool(s.ended()), "the call's end")
        assert s.ended() == ["caller_gone"]
        assert s.router.placement.active_calls == 0 and not s.host.calls
        await held.close()


# ----- the agent's call control, at SIPp -------------------------------------------------------


async def test_the_hang_up_tool_sends_bye_to_sipp(
    wire: WireValidator, redis: EmbeddedRedis, tmp_path: Path
) -> None:
    scenario = _scenario(tmp_path, "hang_up", "Goodbye!")
    async with stack(wire, redis, scenario=scenario) as s:
        sipp = Sipp("uac_callee_hangs_up.xml", tmp_path / "sipp", tone=b"\xff" * 160 * 50)
        result = await sipp.run(s.target)
        result.assert_ok()
        (bye,) = result.received("BYE")
        assert bye.header("Reason") is not None
        await until(lambda: bool(s.ended()), "the session's end")
        assert s.ended() == ["agent_hangup"]


@function_tool(in_process=True)
def transfer_to_desk(ctx: ToolContext) -> str:
    """Transfer the caller to the front desk."""
    assert isinstance(ctx.context, CallControl)
    ctx.context.transfer("sip:desk@acme.example")
    return "Transferring."


async def test_the_transfer_tool_sends_refer_to_sipp(
    wire: WireValidator, redis: EmbeddedRedis, tmp_path: Path
) -> None:
    scenario = _scenario(tmp_path, "transfer_to_desk", "Putting you through.")
    desk = AgentRegistry({"Desk": RealtimeAgent(name="Desk", tools=[transfer_to_desk])}, "Desk")
    async with stack(wire, redis, scenario=scenario, agents=desk) as s:
        sipp = Sipp("uac_refer_target.xml", tmp_path / "sipp", tone=b"\xff" * 160 * 50)
        result = await sipp.run(s.target)
        result.assert_ok()  # REFER, 202, NOTIFYs 100 and 200, then our BYE
        (refer,) = result.received("REFER")
        assert refer.header("Refer-To") in ("sip:desk@acme.example", "<sip:desk@acme.example>")
        await until(lambda: bool(s.ended()), "the session's end")
        assert s.ended() == ["transferred"]


# ----- baresip, which records what it hears ---------------------------------------------------


async def test_baresip_hears_the_greeting(
    wire: WireValidator, redis: EmbeddedRedis, tmp_path: Path
) -> None:
    async with stack(wire, redis) as s:
        quiet = write_wav(tmp_path / "quiet.wav", b"\x00\x00" * 8000 * 4)  # no barge-in
        result = await Baresip(tmp_path / "bs", audio=quiet).call(
            f"sip:service@127.0.0.1:{s.target[1]}"
        )
        assert not result.timed_out and "CALL_ESTABLISHED" in result.types()
        heard = analyse_wav(result.received[0])
        assert heard.voiced_seconds >= 0.5 and heard.rms > 100, heard
        await until(lambda: bool(s.ended()), "the session's end")
        assert s.ended() == ["caller_hangup"]
