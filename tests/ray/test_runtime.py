"""The distributed runtime on a real local Ray, real Redis and the local model (loopback only)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from prometheus_client import REGISTRY

from actors import _ray
from actors.cluster import Cluster, start_cluster
from actors.driver_ingress import DriverIngress
from services.config import ModelSettings, RuntimeSettings, Secret
from services.embedded.model_process import ModelProcess
from services.media.vocabulary import CallerHungUp, CallSpec, PlayAudio
from services.runtime import resources
from services.runtime.placement import BUSY_CLUSTER, Rejected
from services.runtime.router import Opened
from services.telephony.g711 import ulaw_encode
from tests.conftest import TIMEOUT_FACTOR
from tests.ray.events import events_of
from tests.ray.scrape import scrape

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.slow]

MODEL = ModelSettings(api_key=Secret(""), url=None, model="gpt-realtime")
WAIT = 30 * TIMEOUT_FACTOR


def speech(ms: int) -> bytes:
    t = np.arange(ms * 8) / 8000.0
    return ulaw_encode((np.sin(2 * np.pi * 300 * t) * 0.3 * 32767).astype(np.int16))


def wait_until(predicate: Callable[[], bool], what: str, limit: float = WAIT) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def make_cluster(
    ray_session: None, redis_url: str, model_url: str
) -> Iterator[Callable[..., Cluster]]:
    clusters: list[Cluster] = []

    def make(url: str | None = None, **overrides: Any) -> Cluster:
        settings = RuntimeSettings(
            **{"hosts": 2, "executors": 1, "health_interval_s": 0.3, **overrides}
        )
        cluster = start_cluster(
            settings, redis_url=redis_url, model=MODEL, model_url=url or model_url
        )
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()


@pytest.fixture
def ingress() -> Iterator[DriverIngress]:
    """The test plays the ingress of its calls (ingress id "") over the hosts' media channels."""
    peer = DriverIngress()
    yield peer
    peer.close()


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def open_many(cluster: Cluster, specs: list[CallSpec]) -> list[Opened | Rejected]:
    refs = [_ray.submit(cluster.router, "open_call", s) for s in specs]
    return _ray.wait_all(refs, timeout=WAIT)


def hang_up_all(cluster: Cluster, ingress: DriverIngress, opened: list[Opened]) -> None:
    for o in opened:
        ingress.send(o.host, o.call_id, CallerHungUp())
    wait_until(lambda: cluster.status()["calls"] == 0, "every seat released")


def test_burst_of_opens_admits_exactly_the_cap(
    make_cluster: Callable[..., Cluster], ingress: DriverIngress
) -> None:
    cluster = make_cluster(host_capacity=100, cluster_capacity=150)
    specs = [CallSpec(f"burst-{n}", greet=False) for n in range(200)]
    results = open_many(cluster, specs)
    opened = [x for x in results if isinstance(x, Opened)]
    rejected = [x for x in results if isinstance(x, Rejected)]
    assert len(opened) == 150 and len(rejected) == 50
    assert {x.reason for x in rejected} == {BUSY_CLUSTER}
    status = cluster.status()
    assert status["calls"] == 150
    assert all(h["calls"] <= 100 for h in status["hosts"].values())
    hang_up_all(cluster, ingress, opened)


def test_drained_host_gets_no_calls_and_is_released(
    make_cluster: Callable[..., Cluster],
    ingress: DriverIngress,
) -> None:
    cluster = make_cluster()
    first = open_many(cluster, [CallSpec(f"d-{n}", greet=False) for n in range(4)])
    assert all(isinstance(x, Opened) for x in first)
    victim = first[0].host_id  # type: ignore[union-attr]
    on_victim = [x for x in first if isinstance(x, Opened) and x.host_id == victim]
    assert _ray.call_sync(cluster.router, "drain", victim)
    later = open_many(cluster, [CallSpec(f"d2-{n}", greet=False) for n in range(6)])
    assert all(isinstance(x, Opened) and x.host_id != victim for x in later)
    # Its calls go on until they end; only then is the host released.
    time.sleep(0.5)
    assert victim in cluster.status()["hosts"]
    assert _ray.call_sync(cluster.hosts[victim], "ping") == len(on_victim)
    for o in on_victim:
        ingress.send(o.host, o.call_id, CallerHungUp())
    wait_until(lambda: victim in cluster.status()["released"], "the release")
    assert victim not in cluster.status()["hosts"]
    with pytest.raises(_ray.ActorGone):
        _ray.call_sync(cluster.hosts[victim], "ping", timeout=5)
    del cluster.hosts[victim]
    rest = [x for x in [*first, *later] if isinstance(x, Opened) and x.host_id != victim]
    hang_up_all(cluster, ingress, rest)


def test_killed_host_calls_are_reported_ended(
    make_cluster: Callable[..., Cluster], ingress: DriverIngress, r: redis.Redis
) -> None:
    cluster = make_cluster()
    opened = [
        x
        for x in open_many(cluster, [CallSpec(f"k-{n}", greet=False) for n in range(6)])
        if isinstance(x, Opened)
    ]
    victim = opened[0].host_id
    doomed = sorted(o.call_id for o in opened if o.host_id == victim)
    os.kill(cluster.host_pids[victim], signal.SIGKILL)
    wait_until(lambda: victim in cluster.status()["lost"], "the router to notice")
    for call_id in doomed:
        wait_until(
            lambda c=call_id: any(
                e["kind"] == "call.ended" and e["reason"] == "host_lost" for e in events_of(r, c)
            ),
            f"call.ended for {call_id}",
        )
    new = open_many(cluster, [CallSpec(f"k2-{n}", greet=False) for n in range(3)])
    assert all(isinstance(x, Opened) and x.host_id != victim for x in new)
    del cluster.hosts[victim]
    hang_up_all(cluster, ingress, [o for o in opened if o.host_id != victim] + new)  # type: ignore[operator]


def scripted_call_with_tool(cluster: Cluster, ingress: DriverIngress, call_id: str) -> Opened:
    opened = cluster.open_call(CallSpec(call_id, transport="test"))
    assert isinstance(opened, Opened), opened
    ingress.attach(opened.host)
    wait_until(
        lambda: any(isinstance(c, PlayAudio) for c in ingress.commands(call_id)), "the greeting"
    )
    ingress.send(opened.host, call_id, speech(600))
    ingress.send(opened.host, call_id, b"\xff" * 5600)
    return opened


def test_tool_runs_on_an_executor_and_metrics_show_everything(
    make_cluster: Callable[..., Cluster], ingress: DriverIngress, r: redis.Redis, metrics_dir: Path
) -> None:
    cluster = make_cluster()
    short = cluster.open_call(CallSpec("short", greet=False))
    assert isinstance(short, Opened)
    hang_up_all(cluster, ingress, [short])  # an ended call, for callray_calls_total
    opened = scripted_call_with_tool(cluster, ingress, "tool-call-1")
    wait_until(
        lambda: any(e["kind"] == "tool.returned" for e in events_of(r, "tool-call-1")),
        "the tool result",
    )
    returned = next(e for e in events_of(r, "tool-call-1") if e["kind"] == "tool.returned")
    assert returned["tool"] == "lookup_order" and returned["outcome"] == "ok"
    # One admission rejection for the metric: a cluster with every host draining.
    for host_id in cluster.hosts:
        _ray.call_sync(cluster.router, "drain", host_id)
    assert isinstance(cluster.open_call(CallSpec("no-room")), Rejected)

    samples = scrape(metrics_dir)
    must_be_positive = [
        "callray_calls_active",
        "callray_call_setup_seconds_count",
        "callray_admission_rejections_total",
        "callray_host_calls",
        "callray_model_connect_seconds_count",
        "callray_model_events_total",
        "callray_tool_calls_total",
        "callray_tool_call_seconds_count",
        "callray_media_frames_total",
        "callray_media_hop_seconds_count",
        "callray_calls_total",
    ]
    for name in must_be_positive:
        assert samples.get(name, 0) > 0, f"{name} is not positive in {sorted(samples)}"
    # Zero in a healthy run, but exported: reclaims and lag show in the executor-kill test.
    assert "callray_tool_stream_lag" in samples and "callray_tool_reclaims_total" in samples
    ingress.send(opened.host, "tool-call-1", CallerHungUp())
    wait_until(lambda: cluster.status()["calls"] == 0, "the end of the call")


def test_tool_past_deadline_gives_timeout_and_call_goes_on(
    make_cluster: Callable[..., Cluster], ingress: DriverIngress, r: redis.Redis, tmp_path: Path
) -> None:
    scenario = tmp_path / "slow.json"
    scenario.write_text(
        json.dumps(
            {
                "steps": [
                    {"say": "Hello."},
                    {
                        "tool": {"name": "slow_lookup", "arguments": {"order_id": "A1"}},
                        "then": "{output}",
                    },
                    {"say": "Anything else?"},
                ]
            }
        )
    )
    model = ModelProcess(scenario=str(scenario), log=tmp_path / "model.log")
    url = model.start()
    try:
        cluster = make_cluster(url, agent="tests.ray.agents:AGENTS", executors=1)
        opened = cluster.open_call(CallSpec("slow-1", agent="slow"))
        assert isinstance(opened, Opened)
        time.sleep(0.3)
        ingress.send(opened.host, "slow-1", speech(600))
        ingress.send(opened.host, "slow-1", b"\xff" * 5600)
        wait_until(
            lambda: any(e["kind"] == "tool.returned" for e in events_of(r, "slow-1")),
            "the timeout",
        )
        returned = next(e for e in events_of(r, "slow-1") if e["kind"] == "tool.returned")
        assert returned["outcome"] == "timeout"
        # The model was told, answered with the timeout text, and the call is still up.
        wait_until(
            lambda: any(
                e["kind"] == "transcript" and "timed out" in e.get("text", "")
                for e in events_of(r, "slow-1")
            ),
            "the spoken timeout",
        )
        assert cluster.status()["calls"] == 1
        ingress.send(opened.host, "slow-1", CallerHungUp())
        wait_until(lambda: cluster.status()["calls"] == 0, "the end")
    finally:
        model.stop()


def test_dead_hosts_and_executors_are_replaced(
    make_cluster: Callable[..., Cluster], ingress: DriverIngress, r: redis.Redis
) -> None:
    cluster = make_cluster(executors=2)
    victim_host = sorted(cluster.hosts)[0]
    os.kill(cluster.host_pids[victim_host], signal.SIGKILL)
    os.kill(cluster.executor_pids[0], signal.SIGKILL)
    assert cluster.reconcile() == []  # one missed answer is not yet death
    started: list[str] = []
    deadline = time.monotonic() + WAIT
    while len(started) < 2 and time.monotonic() < deadline:
        started += cluster.reconcile()
        time.sleep(0.2)
    assert sorted(started) == sorted([f"{victim_host}-r1", "executor-r2"])
    assert victim_host not in cluster.hosts and len(cluster.hosts) == 2
    assert len(cluster.executors) == 2
    # The pools are whole again: the router places calls on the new host, tools still run.
    new_host = f"{victim_host}-r1"
    wait_until(lambda: new_host in cluster.status()["hosts"], "the new host to register")
    opened = scripted_call_with_tool(cluster, ingress, "after-restart-1")
    wait_until(
        lambda: any(e["kind"] == "tool.returned" for e in events_of(r, "after-restart-1")),
        "a tool result after the restarts",
    )
    # Counted where the supervisor runs (the driver: this process here).
    for kind in ("session_host", "tool_executor"):
        restarts = REGISTRY.get_sample_value("callray_actor_restarts_total", {"kind": kind})
        assert restarts is not None and restarts >= 1
    assert cluster.reconcile() == []  # everyone answers now
    hang_up_all(cluster, ingress, [opened])


def test_callray_drain_waits_for_the_calls_then_the_host_is_released(
    make_cluster: Callable[..., Cluster], ingress: DriverIngress
) -> None:
    cluster = make_cluster()
    opened = [
        x
        for x in open_many(cluster, [CallSpec(f"dr-{n}", greet=False) for n in range(4)])
        if isinstance(x, Opened)
    ]
    victim = opened[0].host_id
    on_victim = [o for o in opened if o.host_id == victim]
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "drain", victim, "--timeout", str(WAIT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert f"draining {victim}" in first, first
        assert f"{victim}: {len(on_victim)} calls left" in proc.stdout.readline()
        # Still draining while calls are up: new calls go elsewhere, reconcile replaces nothing.
        later = cluster.open_call(CallSpec("dr-new", greet=False))
        assert isinstance(later, Opened) and later.host_id != victim
        assert proc.poll() is None
        for o in on_victim:
            ingress.send(o.host, o.call_id, CallerHungUp())
        assert proc.wait(WAIT) == 0
        rest = proc.stdout.read()
        assert f"drained and released: {victim}" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert victim in cluster.status()["released"]
    assert cluster.reconcile() == [] and victim not in cluster.hosts  # not replaced
    hang_up_all(cluster, ingress, [o for o in opened if o.host_id != victim] + [later])


def test_each_actor_holds_its_kinds_resource(make_cluster: Callable[..., Cluster]) -> None:
    # On KubeRay a worker group offers its kind's resource: actors land only there, and a pod
    # holding a session host is never idle to the autoscaler (services/runtime/resources.py).
    assert _ray.missing_resources() == []  # a local Ray offers every kind (callray up, tests)
    # Earlier tests' actors are gone by now, but Ray reports their units free a moment later.
    wait_until(lambda: not any(_ray.resources_in_use().values()), "earlier tests' actors released")
    before = _ray.resources_in_use()
    cluster = make_cluster(hosts=2, executors=1)
    want = {
        resources.ROUTER: 1.0,
        resources.SESSION_HOST: 2.0,
        resources.TOOL_EXECUTOR: 1.0,
        resources.INGRESS: 0.0,
    }

    def held() -> dict[str, float]:
        now = _ray.resources_in_use()
        return {k: now[k] - before.get(k, 0.0) for k in want}

    wait_until(lambda: held() == want, f"the actors' resources held ({held()})")
    cluster.stop()
    wait_until(lambda: all(v == 0.0 for v in held().values()), "released when they stop")
