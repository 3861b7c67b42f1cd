"""A Twilio call end to end: simulated caller → gateway (IngressActor) → router → session host →
model (our local server, in this test's event loop so its wire can be inspected) → back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import redis

from actors.cluster import Cluster, start_cluster
from services.config import (
    GatewaySettings,
    LocalModelSettings,
    ModelSettings,
    RuntimeSettings,
    Secret,
)
from services.gateway.token_ledger import KEY_PREFIX
from services.localmodel.server import LocalModelServer
from services.telephony.g711 import ulaw_encode
from services.toolbus.streams import CALL_EVENTS_STREAM
from tests.conftest import TIMEOUT_FACTOR
from tests.ray.scrape import parse_samples
from tests.twilio_caller import TwilioCaller
from tests.wire import WireValidator

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.slow]

WAIT = 20 * TIMEOUT_FACTOR
SCENARIO = {
    "steps": [
        {"say": "Thank you for calling Acme support. This greeting is long enough to interrupt."},
        {
            "tool": {"name": "lookup_order", "arguments": {"order_id": "A1234"}},
            "then": "Your order {output}.",
        },
        {"tool": {"name": "hang_up", "arguments": {}}, "then": "Goodbye."},
    ]
}


def tone(ms: int) -> bytes:
    t = np.arange(ms * 8) / 8000.0
    return ulaw_encode((np.sin(2 * np.pi * 300 * t) * 0.3 * 32767).astype(np.int16))


async def until(predicate: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(WAIT):
        while not predicate():
            await asyncio.sleep(0.02)


@pytest.fixture
async def system(
    ray_session: None, redis_url: str, wire: WireValidator, tmp_path: Path
) -> AsyncIterator[tuple[Cluster, str]]:
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps(SCENARIO))
    model = LocalModelServer(
        LocalModelSettings(port=0, speed=4.0, scenario=str(scenario)), observer=wire
    )
    await model.start()
    cluster = await asyncio.to_thread(
        start_cluster,
        RuntimeSettings(hosts=1, executors=1),
        redis_url=redis_url,
        model=ModelSettings(Secret(""), None, "gpt-realtime"),
        model_url=model.url,
    )
    port = await asyncio.to_thread(cluster.add_ingress, "ingress-t", GatewaySettings(port=0))
    try:
        yield cluster, f"http://127.0.0.1:{port}"
    finally:
        await asyncio.to_thread(cluster.stop)
        await model.stop()


def call_events(redis_url: str, call_id: str) -> list[dict[str, str]]:
    r = redis.Redis.from_url(redis_url)
    try:
        out = []
        for _id, fields in r.xrange(CALL_EVENTS_STREAM):
            event = {k.decode(): v.decode() for k, v in fields.items()}
            if event.get("call_id") == call_id:
                out.append(event)
        return out
    finally:
        r.close()


async def test_greeting_then_barge_in_clears_and_truncates_at_acknowledged_playback(
    system: tuple[Cluster, str], wire: WireValidator
) -> None:
    _cluster, base = system
    caller = TwilioCaller(base)
    await caller.dial()
    try:
        await until(lambda: caller.received_audio >= 8 * 800, "the greeting")
        await until(lambda: sum(caller.acked.values()) >= 300, "some acknowledged playback")
        caller.speak(tone(600), hold_playback=True)
        await until(lambda: caller.clears >= 1, "the clear")
        await until(
            lambda: any(e["type"] == "conversation.item.truncate" for e in wire.client_log),
            "the truncate",
        )
        truncates = [e for e in wire.client_log if e["type"] == "conversation.item.truncate"]
        item = truncates[0]["item_id"]
        heard = caller.acked_at_clear.get(item, 0)
        # Exactly what the caller acknowledged (the issue allows 20 ms; nothing is estimated).
        assert heard >= 300 and truncates[0]["audio_end_ms"] == heard, (truncates, heard)
        # The node's metrics show how long the clear took and the host → ingress hop.
        async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as response:
            text = await response.text()
        assert parse_samples(text).get("callray_barge_in_clear_seconds_count", 0) >= 1, text
        assert 'callray_media_hop_seconds_count{direction="out"}' in text
    finally:
        await caller.hang_up()


async def test_tool_result_is_spoken_dtmf_arrives_and_hang_up_ends_the_call(
    system: tuple[Cluster, str], redis_url: str
) -> None:
    _cluster, base = system
    caller = TwilioCaller(base)
    twiml = await caller.dial()
    try:
        await until(lambda: caller.received_audio >= 8 * 500, "the greeting")
        # The ingress claimed the stream's token in the cluster's Redis: single use cluster-wide.
        nonce = twiml.split('name="token" value="')[1].split('"')[0].split(".")[3]
        r = redis.Redis.from_url(redis_url)
        try:
            assert r.exists(KEY_PREFIX + nonce) == 1
        finally:
            r.close()
        await until(lambda: caller.received_audio - caller.played_audio < 160, "greeting played")
        caller.speak(tone(600))
        events: list[dict[str, Any]] = []

        def spoken() -> bool:
            events[:] = call_events(redis_url, caller.call_sid)
            return any(
                e["kind"] == "transcript" and e.get("text", "").startswith("Your order")
                for e in events
            )

        await until(spoken, "the tool result spoken")
        returned = [e for e in events if e["kind"] == "tool.returned"]
        assert returned and returned[0]["tool"] == "lookup_order" and returned[0]["outcome"] == "ok"
        await caller.send_dtmf("5")

        def dtmf_seen() -> bool:
            return any(
                e["kind"] == "dtmf" and e.get("digit") == "5"
                for e in call_events(redis_url, caller.call_sid)
            )

        await until(dtmf_seen, "the DTMF event")
        # The DTMF turn makes the model call hang_up: the gateway closes the stream.
        await until(lambda: caller.closed_reason is not None, "the hang-up")
        assert caller.closed_reason == "agent_hangup"
    finally:
        await caller.close()
