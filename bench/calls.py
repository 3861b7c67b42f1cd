"""End-to-end call benchmark: simulated Twilio callers → gateway → session host → local model
(echo mode) and back, on a real local Ray and a real Redis.

For each load (25, 50, 100, 200 concurrent calls by default) it runs ``callray loadtest``'s
callers for ``--duration`` seconds and records frame loss, added latency (each 20 ms frame's
echo round trip through callray and the model), barge-in-to-clear time, setup time, CPU seconds
per call-minute of callray's own processes (the ingress and session-host actors; not the load
generator, the model server, Redis or Ray's own daemons) and their RSS growth per call.

Run as root inside a loopback-only namespace so Ray binds 127.0.0.1::

    unshare -n sh -c 'ip link set lo up; .venv/bin/python -m bench.calls'

Writes ``bench/results/calls.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "calls.json"


def _cpu_s(procs: list[psutil.Process]) -> float:
    return sum(p.cpu_times().user + p.cpu_times().system for p in procs)


def _rss(procs: list[psutil.Process]) -> int:
    return sum(p.memory_info().rss for p in procs)


def _clear_buckets(port: int) -> dict[float, float]:
    """Cumulative bucket counts of callray_barge_in_clear_seconds from the gateway's /metrics."""
    import urllib.request

    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("callray_barge_in_clear_seconds_bucket{"):
            labels, value = line.rsplit(" ", 1)
            le = labels.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + float(value)
    return buckets


def _clear_summary(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """Session-side barge-in: from the session reacting to speech_started to the ingress
    sending clear (the issue's "clear ≤ 10 ms after speech_started reaches the session")."""
    delta = {b: after.get(b, 0.0) - before.get(b, 0.0) for b in after}
    count = delta.get(float("inf"), 0.0)
    if count == 0:
        return {"count": 0}
    p99_bound = next(b for b in sorted(delta) if delta[b] >= 0.99 * count)
    return {
        "count": int(count),
        "within_10ms": round(delta.get(0.01, 0.0) / count, 4),
        "p99_at_most_ms": None if p99_bound == float("inf") else p99_bound * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loads", default="25,50,100,200")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--barge-in-rate", type=float, default=0.2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from actors import _ray
    from actors.cluster import start_cluster
    from services import aio
    from services.config import GatewaySettings, ModelSettings, RuntimeSettings, Secret
    from services.embedded.model_process import ModelProcess
    from services.embedded.redis_server import EmbeddedRedis
    from services.loadgen import LoadOptions, run_load

    scratch = Path(tempfile.mkdtemp(prefix="callray-calls-"))
    redis = EmbeddedRedis(scratch / "redis")
    redis_url = redis.start()
    model = ModelProcess(mode="echo", log=scratch / "model.log")
    model_url = model.start()
    _ray.init(address=None, env_vars={"RAY_AUTH_MODE": "disabled"})
    result: dict[str, Any] = {"benchmark": "calls", "date": time.strftime("%Y-%m-%d"), "runs": []}
    try:
        cluster = start_cluster(
            RuntimeSettings(hosts=1, executors=1, host_capacity=400, cluster_capacity=400),
            redis_url=redis_url,
            model=ModelSettings(Secret(""), None, "gpt-realtime"),
            model_url=model_url,
        )
        port = cluster.add_ingress("bench-ingress", GatewaySettings(port=0))
        own = [psutil.Process(pid) for pid in cluster.host_pids.values()]
        own += [
            psutil.Process(p)
            for p in _ray.wait_all([_ray.submit(i, "pid") for i in cluster.ingresses], 30)
        ]
        others = {
            "load generator (this process)": [psutil.Process()],
            "local model server": [psutil.Process(model.pid)] if model.pid else [],
            "redis-server": [psutil.Process(redis.pid)] if redis.pid else [],
        }
        for load in [int(x) for x in args.loads.split(",")]:
            time.sleep(2.0)
            cpu0, rss0 = _cpu_s(own), _rss(own)
            clears0 = _clear_buckets(port)
            others0 = {name: _cpu_s(procs) for name, procs in others.items()}
            wall0 = time.monotonic()
            options = LoadOptions(
                base_url=f"http://127.0.0.1:{port}",
                calls=load,
                ramp_s=min(5.0, load / 20),
                duration_s=args.duration,
                barge_in_rate=args.barge_in_rate,
                seed=load,
            )
            peak_rss = 0

            async def run(options: LoadOptions = options) -> Any:
                nonlocal peak_rss
                task = asyncio.create_task(run_load(options))
                while not task.done():
                    await asyncio.sleep(1.0)
                    peak_rss = max(peak_rss, _rss(own))
                return await task

            report = aio.run(run()).to_dict()
            cpu = _cpu_s(own) - cpu0
            session_clear = _clear_summary(clears0, _clear_buckets(port))
            wall = time.monotonic() - wall0
            # Where the two cores went: callray's own processes vs what shares the box with it.
            cores = {"callray (ingress + session host)": round(cpu / wall, 3)}
            for name, procs in others.items():
                cores[name] = round((_cpu_s(procs) - others0[name]) / wall, 3)
            call_minutes = load * args.duration / 60.0
            run_result = {
                "calls": load,
                "duration_s": args.duration,
                "completed": sum(1 for c in report["per_call"] if c["outcome"] == "completed"),
                "frames": report["frames"],
                "added_latency_ms": report["echo_latency_ms"],
                "barge_in": report["barge_in"],
                "session_clear": session_clear,
                "setup_ms": report["setup_ms"],
                "loadgen_max_tick_lag_ms": report["loadgen"]["max_tick_lag_ms"],
                "cpu_s_per_call_minute": round(cpu / call_minutes, 4),
                "rss_growth_per_call_mb": round((peak_rss - rss0) / load / 2**20, 3),
                "cores_used": cores,
            }
            result["runs"].append(run_result)
            print(json.dumps({k: v for k, v in run_result.items() if k != "setup_ms"}), flush=True)
        cluster.stop()
    finally:
        _ray.shutdown()
        model.stop()
        redis.stop()
    result["targets"] = {
        "loss_at_100": 0,
        "added_latency_p99_ms_at_100": 10,
        "clear_after_speech_started_ms": 10,
        "cpu_s_per_call_minute": 0.6,
        "rss_per_call_mb": 2,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
