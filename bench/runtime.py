"""Runtime benchmark: tool round trip, call open latency, memory per hosted call.

Runs a real local Ray with a real redis-server and our local model server (child process):

* **tool round trip**: a no-op tool, session side → ``callray:tool-calls`` → executor actor →
  result stream → session side, issued open-loop at 100 and 500 calls/s for a few seconds each;
  the session side is a :class:`RedisToolRunner` in this process, as in a session host;
* **call open**: ``router.open_call`` → host → model WebSocket connected, one at a time;
* **memory per call**: a session host's RSS growth over N idle calls connected to the model,
  divided by N.

Run (as root, inside a loopback-only namespace so Ray binds 127.0.0.1)::

    unshare -n sh -c 'ip link set lo up; .venv/bin/python -m bench.runtime'

Writes ``bench/results/runtime.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "runtime.json"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary_ms(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 0.50), 3),
        "p99_ms": round(pct(ms, 0.99), 3),
        "max_ms": round(max(ms), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


async def tool_round_trips(redis_url: str, rate: float, seconds: float) -> dict[str, Any]:

    from bench.agents import noop
    from services.realtime.tools import ToolCall, ToolContext
    from services.redis_client import connect as connect_redis
    from services.toolbus.runner import RedisToolRunner

    client = connect_redis(redis_url)
    runner = RedisToolRunner(client, host_id=f"bench-{int(rate)}", default_timeout=10.0)
    await runner.start()
    latencies: list[float] = []
    failures = 0

    async def one(n: int) -> None:
        nonlocal failures
        ctx = ToolContext(
            ToolCall(f"rt-{rate}-{n}", "noop", json.dumps({"n": n})), agent_name="Bench"
        )
        begin = time.perf_counter()
        result = await runner.run(noop, ctx)
        latencies.append(time.perf_counter() - begin)
        if result.outcome != "ok":
            failures += 1

    total = int(rate * seconds)
    tasks = []
    start = time.perf_counter()
    for n in range(total):
        # Open loop: calls start on schedule whatever the latency of earlier ones.
        delay = start + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(n)))
    await asyncio.gather(*tasks)
    achieved = total / (time.perf_counter() - start)
    await runner.stop()
    await client.aclose()
    return {
        "rate_per_s": rate,
        "achieved_per_s": round(achieved, 1),
        "failures": failures,
        **summary_ms(latencies),
    }


@contextlib.contextmanager
def embedded_runtime() -> Iterator[tuple[str, str]]:
    """A real redis-server, our local model (a child process) and a local Ray whose workers see
    this repository (and the benchmark agents' Redis, ``bench.agents.REDIS_URL_ENV``); yields
    (redis URL, model URL) and stops all three after."""
    from actors import _ray
    from bench.agents import REDIS_URL_ENV
    from services.embedded.model_process import ModelProcess
    from services.embedded.redis_server import EmbeddedRedis

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    scratch = Path(tempfile.mkdtemp(prefix="callray-bench-"))
    redis = EmbeddedRedis(scratch / "redis")
    redis_url = redis.start()
    model = ModelProcess(log=scratch / "model.log")
    try:
        model_url = model.start()
        env_vars = {"PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", REDIS_URL_ENV: redis_url}
        _ray.init(address=None, env_vars=env_vars)
        try:
            yield redis_url, model_url
        finally:
            _ray.shutdown()
    finally:
        model.stop()
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--idle-calls", type=int, default=500)
    parser.add_argument("--opens", type=int, default=200)
    parser.add_argument("--executors", type=int, default=2)
    args = parser.parse_args()

    from actors.cluster import start_cluster
    from actors.driver_ingress import DriverIngress
    from services.config import ModelSettings, RuntimeSettings, Secret
    from services.media.vocabulary import CallerHungUp, CallSpec
    from services.runtime.router import Opened

    result: dict[str, Any] = {"benchmark": "runtime", "date": time.strftime("%Y-%m-%d")}
    with embedded_runtime() as (redis_url, model_url):
        settings = RuntimeSettings(
            hosts=1,
            host_capacity=args.idle_calls + 10,
            cluster_capacity=args.idle_calls + 10,
            executors=args.executors,
            agent="bench.agents:AGENTS",
        )
        cluster = start_cluster(
            settings,
            redis_url=redis_url,
            model=ModelSettings(Secret(""), None, "gpt-realtime"),
            model_url=model_url,
        )
        asyncio.run(tool_round_trips(redis_url, 50, 1.0))  # warm-up
        result["tool_round_trip"] = [
            asyncio.run(tool_round_trips(redis_url, rate, args.seconds)) for rate in (100, 500)
        ]
        print(json.dumps(result["tool_round_trip"], indent=2), flush=True)

        host_id, host = next(iter(cluster.hosts.items()))
        host_proc = psutil.Process(cluster.host_pids[host_id])
        # Memory first, on a host that has not hosted calls yet (freed arenas of earlier calls
        # would otherwise hide the growth).
        time.sleep(1.0)
        rss_before = host_proc.memory_info().rss
        for n in range(args.idle_calls):
            opened = cluster.open_call(CallSpec(f"idle-{n}", agent="bench", greet=False))
            assert isinstance(opened, Opened), opened
        time.sleep(2.0)
        rss_after = host_proc.memory_info().rss
        per_call = (rss_after - rss_before) / args.idle_calls
        result["memory_per_call"] = {
            "idle_calls": args.idle_calls,
            "host_rss_before_mb": round(rss_before / 2**20, 1),
            "host_rss_after_mb": round(rss_after / 2**20, 1),
            "per_call_mb": round(per_call / 2**20, 3),
        }
        print(json.dumps(result["memory_per_call"]), flush=True)
        ingress = DriverIngress()  # plays the ingress of these calls over the media channel
        for n in range(args.idle_calls):
            ingress.send(host, f"idle-{n}", CallerHungUp())
        deadline = time.monotonic() + 30
        while cluster.status()["calls"] and time.monotonic() < deadline:
            time.sleep(0.1)

        opens: list[float] = []
        for n in range(args.opens):
            begin = time.perf_counter()
            opened = cluster.open_call(CallSpec(f"open-{n}", agent="bench", greet=False))
            opens.append(time.perf_counter() - begin)
            assert isinstance(opened, Opened), opened
            ingress.send(host, f"open-{n}", CallerHungUp())
        ingress.close()
        result["call_open"] = summary_ms(opens)
        print(json.dumps(result["call_open"]), flush=True)
        cluster.stop()
    result["targets"] = {"tool_rt_p99_ms_at_500": 10, "open_p99_ms": 50, "per_call_mb": 2}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
