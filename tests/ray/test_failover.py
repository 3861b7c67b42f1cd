"""A session host dies under live calls (SIGKILL): the ingress notices its media channel is gone,
the router places each call on the other host, a new session resumes it from the call's record
in Redis, and the callers hear a gap, not a hang-up. Real Ray, Redis, sockets, Twilio callers
and the local model."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
import pytest_asyncio

from actors import _ray
from actors.cluster import Cluster, start_cluster
from services.config import (
    GatewaySettings,
    LocalModelSettings,
    ModelSettings,
    RuntimeSettings,
    Secret,
)
from services.localmodel.server import LocalModelServer
from services.runtime.call_session import RESUME_INSTRUCTIONS
from tests.conftest import TIMEOUT_FACTOR
from tests.ray.callers import AUTH_TOKEN, Caller, make_caller
from tests.ray.events import events_of
from tests.ray.scrape import parse_samples
from tests.ray.test_ingress_conformance import until
from tests.wire import WireValidator

pytestmark = [
    pytest.mark.integration,
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="module"),
]


@dataclass
class System:
    cluster: Cluster
    base_url: str
    wire: WireValidator
    redis_url: str


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def system(ray_session: None, redis_url: str) -> AsyncIterator[System]:
    wire = WireValidator()
    model = LocalModelServer(LocalModelSettings(port=0, speed=4.0), observer=wire)
    await model.start()
    cluster = await asyncio.to_thread(
        start_cluster,
        RuntimeSettings(hosts=2, executors=1, host_capacity=6, cluster_capacity=12),
        redis_url=redis_url,
        model=ModelSettings(Secret(""), None, "gpt-realtime"),
        model_url=model.url,
        host_prefix="fo",
    )
    gateway = GatewaySettings(port=0, twilio_auth_token=Secret(AUTH_TOKEN))
    port = await asyncio.to_thread(cluster.add_ingress, "ingress-fo", gateway)
    try:
        yield System(cluster, f"http://127.0.0.1:{port}", wire, redis_url)
    finally:
        await asyncio.to_thread(cluster.stop)
        await model.stop()
    wire.check()


async def _calls_and_the_busiest_host(
    system: System, n: int
) -> tuple[list[Caller], dict[str, str], str]:
    """``n`` Twilio calls, each greeted; where each landed, and the host with most of them."""
    callers: list[Caller] = []
    for _ in range(n):
        caller = make_caller("twilio", system.base_url)
        await caller.dial()
        callers.append(caller)
    await until(lambda: all(c.received_audio >= 8 * 300 for c in callers), "every greeting")
    router = system.cluster.router
    where = {
        c.call_id: await asyncio.to_thread(_ray.call_sync, router, "host_of", c.call_id)
        for c in callers
    }
    return callers, where, max(set(where.values()), key=list(where.values()).count)


async def test_calls_on_a_killed_host_move_and_go_on(system: System) -> None:
    cluster = system.cluster
    callers, where, victim = await _calls_and_the_busiest_host(system, 6)
    survivor = next(h for h in cluster.hosts if h != victim)
    moving = [c for c in callers if where[c.call_id] == victim]
    staying = [c for c in callers if where[c.call_id] != victim]
    assert moving and staying, where
    await until(lambda: not any(c.received_audio != c.played_audio for c in callers), "quiet")
    heard = {c.call_id: c.received_audio for c in callers}
    resumes = sum(
        1
        for e in system.wire.client_log
        if e["type"] == "response.create"
        and e.get("response", {}).get("instructions") == RESUME_INSTRUCTIONS
    )

    seen = len(system.wire.client_log)
    killed_at = time.monotonic()
    os.kill(cluster.host_pids[victim], signal.SIGKILL)
    back_at: dict[str, float] = {}

    def all_back() -> bool:
        for c in moving:
            if c.call_id not in back_at and c.received_audio > heard[c.call_id]:
                back_at[c.call_id] = time.monotonic()
        return len(back_at) == len(moving)

    await until(all_back, "audio again on every moved call")
    gaps = sorted(t - killed_at for t in back_at.values())
    assert gaps[-1] < 10.0, gaps  # a gap, not a hang-up (bench/faults.py measures it)
    assert all(c.closed_reason is None for c in callers), [c.closed_reason for c in callers]
    for c in moving:
        now_on = await asyncio.to_thread(_ray.call_sync, cluster.router, "host_of", c.call_id)
        assert now_on == survivor
        # The same call, not a new one: no host_lost end was recorded for it.
        kinds = [e["kind"] for e in _events(system, c.call_id)]
        assert "call.ended" not in kinds and kinds.count("call.started") == 2
    # Each moved call's new session said the line dropped instead of greeting.
    assert sum(
        1
        for e in system.wire.client_log
        if e["type"] == "response.create"
        and e.get("response", {}).get("instructions") == RESUME_INSTRUCTIONS
    ) == resumes + len(moving)
    # ... after replaying the conversation so far (here, its greeting) from the call's record.
    replayed = [
        e["item"] for e in system.wire.client_log[seen:] if e["type"] == "conversation.item.create"
    ]
    assert len(replayed) == len(moving), replayed
    assert all(
        i["role"] == "assistant" and "Acme support" in i["content"][0]["text"] for i in replayed
    )
    async with aiohttp.ClientSession() as http, http.get(f"{system.base_url}/metrics") as r:
        samples = parse_samples(await r.text())
    assert samples.get("callray_calls_moved_total", 0) >= len(moving)

    # The moved calls end as calls do: the caller hangs up, the seat on the survivor is freed.
    for c in callers:
        await c.hang_up()
    await until(lambda: cluster.status()["calls"] == 0, "every seat released")
    await until(lambda: victim in cluster.status()["lost"], "the router to see the host lost")
    del cluster.hosts[victim]


def _events(system: System, call_id: str) -> list[dict[str, str]]:
    import redis

    r = redis.Redis.from_url(system.redis_url)
    try:
        return events_of(r, call_id)
    finally:
        r.close()


async def test_a_drain_past_its_deadline_moves_the_calls_to_another_host(system: System) -> None:
    cluster = system.cluster
    await asyncio.to_thread(cluster.add_host, "fo-spare", **cluster.spawn["host"])
    callers, where, victim = await _calls_and_the_busiest_host(system, 4)
    moving = [c for c in callers if where[c.call_id] == victim]
    await until(lambda: not any(c.received_audio != c.played_audio for c in callers), "quiet")
    heard = {c.call_id: c.received_audio for c in callers}

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "drain",
        victim,
        "--timeout",
        "1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60 * TIMEOUT_FACTOR)
    said = out.decode()
    assert proc.returncode == 0, said
    assert f"{victim}: moving them to other hosts" in said and "drained and released" in said

    # Each moved call hears its agent again, from another host; nobody was hung up.
    await until(
        lambda: all(c.received_audio > heard[c.call_id] for c in moving), "audio after the move"
    )
    assert all(c.closed_reason is None for c in callers), [c.closed_reason for c in callers]
    for c in moving:
        now_on = await asyncio.to_thread(_ray.call_sync, cluster.router, "host_of", c.call_id)
        assert now_on not in (None, victim)
        kinds = [e["kind"] for e in _events(system, c.call_id)]
        assert kinds.count("call.moved") == 1 and "call.ended" not in kinds, kinds
    assert victim in cluster.status()["released"]

    for c in callers:
        await c.hang_up()
    await until(lambda: cluster.status()["calls"] == 0, "every seat released")
    for c in callers:
        await c.close()
