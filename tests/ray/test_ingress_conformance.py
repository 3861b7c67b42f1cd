"""The ingress conformance suite: what every ingress adapter must do, run over each of them
(:data:`tests.ray.callers.ADAPTERS`) against the real system — a local Ray cluster (router, a
session host, a tool executor, an IngressActor), a real Redis, the local model in this test's
event loop (so the test reads what reached the model) and real sockets.

A new adapter (WebRTC, SIP, another media-stream provider) adds its simulated caller to
``tests/ray/callers.py``; nothing here changes. (This suite replaced ``test_twilio_e2e.py``,
whose checks it runs for every adapter.)
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
import redis

from actors.cluster import Cluster, start_cluster
from services.config import (
    GatewaySettings,
    LocalModelSettings,
    ModelSettings,
    RuntimeSettings,
    Secret,
    SipSettings,
    WebRTCSettings,
)
from services.gateway.token_ledger import KEY_PREFIX
from services.localmodel.scenario import parse_scenario
from services.localmodel.server import LocalModelServer
from services.telephony.g711 import ulaw_encode
from tests.conftest import TIMEOUT_FACTOR
from tests.ray.callers import ADAPTERS, AUTH_TOKEN, Caller, make_caller
from tests.ray.events import events_of
from tests.ray.scrape import parse_samples
from tests.twilio_rest_stand_in import TwilioRestStandIn
from tests.wire import WireValidator

pytestmark = [
    pytest.mark.integration,
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="module"),
]

WAIT = 20 * TIMEOUT_FACTOR
CAPACITY = 4
GREETING = "Thank you for calling Acme support. This greeting is long enough to be interrupted."
CONVERSATION = {
    "steps": [
        {"say": GREETING},
        {
            "tool": {"name": "lookup_order", "arguments": {"order_id": "A1234"}},
            "then": "Your order {output}.",
        },
        {"tool": {"name": "hang_up", "arguments": {}}, "then": "Goodbye."},
    ]
}
TRANSFER = {
    "steps": [
        {
            "tool": {"name": "transfer_to_human", "arguments": {"department": "billing"}},
            "then": "Transferring you to billing.",
        }
    ]
}


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tone(ms: int) -> bytes:
    t = np.arange(ms * 8) / 8000.0
    return ulaw_encode((np.sin(2 * np.pi * 300 * t) * 0.3 * 32767).astype(np.int16))


async def until(predicate: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(WAIT):
            while not predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


@dataclass
class System:
    cluster: Cluster
    base_url: str
    model: LocalModelServer
    wire: WireValidator
    redis_url: str
    rest_calls: list[tuple[str, dict[str, str]]]
    rest: TwilioRestStandIn
    sip_port: int

    def events(self, call_id: str) -> list[dict[str, str]]:
        r = redis.Redis.from_url(self.redis_url)
        try:
            return events_of(r, call_id)
        finally:
            r.close()

    def tokens_claimed(self) -> int:
        r = redis.Redis.from_url(self.redis_url)
        try:
            return len(r.keys(KEY_PREFIX + "*"))
        finally:
            r.close()

    def truncates(self) -> list[dict[str, Any]]:
        return [e for e in self.wire.client_log if e["type"] == "conversation.item.truncate"]

    async def calls_open(self) -> int:
        return int((await asyncio.to_thread(self.cluster.status))["calls"])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def system(ray_session: None, redis_url: str) -> AsyncIterator[System]:
    rest = TwilioRestStandIn()  # hang-ups and transfers by call control land here
    await rest.start()
    wire = WireValidator()
    model = LocalModelServer(LocalModelSettings(port=0, speed=4.0), observer=wire)
    model.use_scenario(parse_scenario(CONVERSATION))
    await model.start()
    cluster = await asyncio.to_thread(
        start_cluster,
        RuntimeSettings(hosts=1, executors=1, host_capacity=CAPACITY, cluster_capacity=CAPACITY),
        redis_url=redis_url,
        model=ModelSettings(Secret(""), None, "gpt-realtime"),
        model_url=model.url,
    )
    sip_port = free_udp_port()
    gateway = GatewaySettings(
        port=0,
        webrtc=WebRTCSettings(ice_addresses=("127.0.0.1",)),
        sip=SipSettings(port=sip_port, rtp_ports=(32000, 32999)),
        twilio_auth_token=Secret(AUTH_TOKEN),
        twilio_account_sid="AC" + "0" * 32,
        twilio_api_base_url=rest.base_url,
    )
    port = await asyncio.to_thread(cluster.add_ingress, "ingress-c", gateway)
    try:
        yield System(
            cluster,
            f"http://127.0.0.1:{port}",
            model,
            wire,
            redis_url,
            rest.updates,
            rest,
            sip_port,
        )
    finally:
        await asyncio.to_thread(cluster.stop)
        await model.stop()
        await rest.close()
    wire.check()


@pytest_asyncio.fixture(loop_scope="module", params=ADAPTERS)
async def dial(request: pytest.FixtureRequest, system: System) -> AsyncIterator[Any]:
    """``await dial()`` places a call through the adapter under test; every call is hung up
    and its seat released after the test."""
    callers: list[Caller] = []

    async def place() -> Caller:
        caller = make_caller(request.param, system.base_url, system.sip_port)
        callers.append(caller)
        await caller.dial()
        return caller

    yield place
    for caller in callers:
        await caller.hang_up()
    async with asyncio.timeout(WAIT):
        while await system.calls_open():
            await asyncio.sleep(0.05)


async def test_the_greeting_is_heard(system: System, dial: Any) -> None:
    claimed = system.tokens_claimed()
    caller = await dial()
    await until(lambda: caller.played_audio >= 8 * 500, "half a second of greeting played")
    assert caller.closed_reason is None
    kinds = [e["kind"] for e in system.events(caller.call_id)]
    assert kinds[0] == "call.started"
    if "tokens" in caller.capabilities:
        # The call's single-use token was claimed in the cluster's Redis before it opened.
        assert system.tokens_claimed() == claimed + 1


async def test_barge_in_clears_and_truncates_at_the_heard_point(system: System, dial: Any) -> None:
    caller = await dial()
    if "hold" not in caller.capabilities:
        await _barge_in_on_a_paced_track(system, caller)
        return
    await until(lambda: sum(caller.acked.values()) >= 300, "some acknowledged playback")
    before = len(system.truncates())
    caller.speak(tone(600), hold_playback=True)  # the heard point stands still from here
    await until(lambda: caller.clears >= 1, "the clear")
    await until(lambda: len(system.truncates()) > before, "the truncate")
    truncate = system.truncates()[before]
    heard = caller.acked_at_clear.get(truncate["item_id"], 0)
    assert heard >= 300 and truncate["audio_end_ms"] == heard, (truncate, heard)
    # The node's metrics show how long the clear took and the host → ingress hop.
    async with aiohttp.ClientSession() as http, http.get(f"{system.base_url}/metrics") as reply:
        text = await reply.text()
    assert parse_samples(text).get("callray_barge_in_clear_seconds_count", 0) >= 1, text
    assert 'callray_media_hop_seconds_count{direction="out"}' in text


async def _barge_in_on_a_paced_track(system: System, caller: Any) -> None:
    """A browser: our track's clock is the playback, so the truncation is what it handed out,
    which the caller heard a network hop and a jitter buffer later."""
    await until(lambda: caller.heard_span_ms >= 400, "some of the greeting heard")
    before = len(system.truncates())
    caller.speak(tone(600))
    await until(lambda: len(system.truncates()) > before, "the truncate")
    truncate = system.truncates()[before]
    await asyncio.sleep(0.3)  # what was in flight at the cut arrives
    heard = caller.heard_span_ms
    assert heard - 100 <= truncate["audio_end_ms"] <= heard + 300, (truncate, heard)
    silent_since = caller.received_frames
    await asyncio.sleep(0.5)
    assert caller.last_loud <= silent_since, "the agent's audio stopped at the barge-in"


async def test_audio_queued_but_never_heard_is_truncated_at_zero(system: System, dial: Any) -> None:
    caller = await dial()
    if "hold" not in caller.capabilities:
        pytest.skip("this caller cannot hold playback: our track's clock is what it hears")
    caller.hold()  # plays nothing: all the greeting stays queued, no mark is acknowledged
    await until(lambda: caller.received_audio >= 8 * 400, "greeting audio queued")
    before = len(system.truncates())
    caller.speak(tone(600), hold_playback=True)
    await until(lambda: caller.clears >= 1, "the clear")
    await until(lambda: len(system.truncates()) > before, "the truncate")
    assert [t["audio_end_ms"] for t in system.truncates()[before:]] == [0]


async def test_dtmf_reaches_the_session(system: System, dial: Any) -> None:
    caller = await dial()
    await until(lambda: caller.received_audio > 0, "the greeting")
    await caller.send_dtmf("7")
    await until(
        lambda: any(
            e["kind"] == "dtmf" and e.get("digit") == "7" for e in system.events(caller.call_id)
        ),
        "the dtmf event",
    )


async def test_a_caller_hang_up_ends_the_call_and_frees_its_seat(system: System, dial: Any) -> None:
    caller = await dial()
    await until(lambda: caller.received_audio > 0, "the greeting")
    await caller.hang_up()

    def ended() -> list[str]:
        return [
            e.get("reason", "") for e in system.events(caller.call_id) if e["kind"] == "call.ended"
        ]

    await until(lambda: bool(ended()), "call.ended")
    assert ended() == ["caller_hangup"]


async def test_the_hang_up_tool_ends_the_call_after_goodbye(system: System, dial: Any) -> None:
    caller = await dial()
    await until(lambda: caller.received_audio - caller.played_audio < 160, "greeting played")
    caller.speak(tone(600))  # turn 1: lookup_order
    await until(
        lambda: any(
            e["kind"] == "tool.returned" and e.get("tool") == "lookup_order"
            for e in system.events(caller.call_id)
        ),
        "the lookup",
    )
    await caller.send_dtmf("5")  # turn 2 (the agent passes keys to the model): hang_up
    await until(lambda: caller.closed_reason is not None, "the hang-up")
    assert caller.closed_reason == "agent_hangup"
    if "provider_control" in caller.capabilities:
        hang_ups = [f for p, f in system.rest_calls if caller.call_id in p and "Status" in f]
        assert hang_ups == [{"Status": "completed"}]


async def test_the_transfer_tool_transfers_through_the_provider(system: System, dial: Any) -> None:
    system.model.use_scenario(parse_scenario(TRANSFER))
    # Twilio takes a moment to apply the transfer: the media stream must stay open until it
    # has (closing a <Connect><Stream> ends the call, and the transfer would be a hang-up).
    system.rest.delay_s = 0.5
    try:
        caller = await dial()
        await until(lambda: caller.closed_reason is not None, "the transfer")
    finally:
        system.model.use_scenario(parse_scenario(CONVERSATION))
        system.rest.delay_s = 0.0
    if "refer" in caller.capabilities:  # a REFER to the caller, then our BYE once it went
        assert caller.closed_reason == "transferred"
        assert caller.refer_to is not None and caller.refer_to.startswith("sip:billing@")
        return
    if "provider_control" not in caller.capabilities:
        assert caller.closed_reason == "transfer_unsupported"  # said, not silently dropped
        return
    assert caller.closed_reason == "transferred"
    (twiml,) = [f["Twiml"] for p, f in system.rest_calls if caller.call_id in p and "Twiml" in f]
    assert "<Dial><Queue>billing</Queue></Dial>" in twiml


async def test_busy_at_capacity(system: System, dial: Any) -> None:
    callers = [await dial() for _ in range(CAPACITY)]
    for caller in callers:
        await until(lambda c=caller: c.received_audio > 0, "each call answered")
    extra = await dial()
    await until(lambda: extra.closed_reason is not None, "the busy signal's end")
    assert extra.closed_reason == "busy"
    if "busy_tone" in extra.capabilities:
        assert extra.received_audio > 8 * 1000  # the busy tone
    assert all(c.closed_reason is None for c in callers)


@pytest.mark.parametrize("misbehaviour", ["malformed", "oversize", "out_of_order"])
async def test_bad_input_closes_only_that_call_with_a_reason(
    system: System, dial: Any, misbehaviour: str
) -> None:
    bad, good = await dial(), await dial()
    if "stream_errors" not in bad.capabilities:
        pytest.skip("this adapter's bad input is refused at the offer (its own integration tests)")
    await until(lambda: bad.received_audio > 0 and good.received_audio > 0, "both answered")
    await getattr(bad, f"send_{misbehaviour}")()
    await until(lambda: bad.closed_reason is not None, "the bad call's close")
    code, reason = {
        "malformed": (1008, "not valid JSON"),
        "oversize": (1009, ""),  # "message too big" (RFC 6455 §7.4.1), from the socket layer
        "out_of_order": (1008, "'start' message while streaming"),
    }[misbehaviour]
    assert bad.closed_code == code and reason in (bad.closed_reason or ""), bad.closed_reason

    def ended() -> list[str]:
        return [
            e.get("reason", "") for e in system.events(bad.call_id) if e["kind"] == "call.ended"
        ]

    await until(lambda: bool(ended()), "the bad call's end")
    assert ended() == ["protocol_error"]
    heard = good.received_audio
    await until(lambda: good.received_audio > heard + 8 * 200, "the other call's audio going on")
    assert good.closed_reason is None
