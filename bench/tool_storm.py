"""Executor-kill storm: tool calls at a steady rate while tool executors are SIGKILLed.

Runs a real local Ray with a real redis-server and our local model server (child process), as
``bench.runtime`` does, with two :class:`ToolExecutorActor` s. A :class:`RedisToolRunner` in this
process (the session side, as in a session host) issues ``count_run`` calls open-loop at
``--rate`` per second for ``--seconds``; every ``--kill-every`` seconds one live executor's
process is SIGKILLed, and a supervisor thread runs ``Cluster.reconcile`` every 2 s, as
``callray up`` does, which replaces an executor that missed two pings. The dead executor's
pending entries are reclaimed by the others once idle for ``claim_idle_ms`` (2 s).

``count_run`` counts its runs per tool call id in a Redis hash, so after the load:

* **lost**: calls without an ``ok`` result within the runner's 30 s timeout;
* **duplicated**: call ids whose side effect ran more than once (the executor was killed after
  the tool ran and before it completed the call: at-least-once runs, by design);
* **never ran**: issued call ids missing from the hash.

Duplicates grow with the calls in flight on the executor at the moment it is killed, so with any
other load on the machine (recorded as the load average before and after).

Target: 0 lost, 0 duplicated. Run (as root, inside a loopback-only namespace so Ray binds
127.0.0.1)::

    unshare -n sh -c 'ip link set lo up; .venv/bin/python -m bench.tool_storm'

Writes ``bench/results/tool_storm.json`` and prints a one-line summary.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench.agents import RUNS_KEY
from bench.runtime import embedded_runtime, summary_ms

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "tool_storm.json"
RECONCILE_EVERY_S = 2.0
RUNNER_TIMEOUT_S = 30.0

logger = logging.getLogger("bench.tool_storm")


class Supervisor(threading.Thread):
    """``callray up``'s supervision, in a thread: ``reconcile`` every ``every_s`` seconds."""

    def __init__(self, cluster: Any, every_s: float, clock_zero: float) -> None:
        super().__init__(name="storm-supervisor", daemon=True)
        self._cluster = cluster
        self._every_s = every_s
        self._zero = clock_zero
        self._halt = threading.Event()
        self._round = threading.Condition()
        self.started: list[dict[str, Any]] = []  # what reconcile started, and when
        self.errors = 0

    def run(self) -> None:
        while not self._halt.wait(self._every_s):
            try:
                names = self._cluster.reconcile()
            except Exception:
                logger.exception("reconcile failed")
                self.errors += 1
                continue
            at = round(time.perf_counter() - self._zero, 2)
            with self._round:
                self.started += [{"name": name, "at_s": at} for name in names]
                self._round.notify_all()

    def executor_restarts(self) -> int:
        return sum(1 for s in self.started if s["name"].startswith("executor-"))

    def wait_executor_restarts(self, n: int, timeout_s: float) -> bool:
        with self._round:
            return self._round.wait_for(lambda: self.executor_restarts() >= n, timeout_s)

    def stop(self) -> None:
        self._halt.set()
        self.join()


class GcPauses:
    """This process's own garbage-collector pauses over ``floor_s``: a pause of the session side
    delays every call in flight, whatever the executors do."""

    def __init__(self, zero: float, floor_s: float = 0.05) -> None:
        self._zero = zero
        self._floor_s = floor_s
        self._began = 0.0
        self.pauses: list[dict[str, Any]] = []

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._on_gc)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._began = now
        elif now - self._began > self._floor_s:
            self.pauses.append(
                {
                    "at_s": round(self._began - self._zero, 2),
                    "generation": info["generation"],
                    "ms": round((now - self._began) * 1000, 1),
                }
            )


async def kill_loop(
    cluster: Any, every_s: float, seconds: float, zero: float, killed: list[dict[str, Any]]
) -> None:
    """SIGKILL one live executor process every ``every_s`` seconds, ``seconds`` long."""
    gone: set[int] = set()
    n = 1
    while n * every_s < seconds:
        await asyncio.sleep(max(0.0, zero + n * every_s - time.perf_counter()))
        # The supervisor thread swaps replacements into executor_pids; a copy is enough here.
        live = [p for p in list(cluster.executor_pids) if p not in gone and psutil.pid_exists(p)]
        at = round(time.perf_counter() - zero, 2)
        if not live:
            killed.append({"pid": None, "at_s": at, "skipped": "no live executor"})
        else:
            victim = live[n % len(live)]
            os.kill(victim, signal.SIGKILL)
            gone.add(victim)
            killed.append({"pid": victim, "at_s": at, "live_before": len(live)})
        n += 1


async def storm(redis_url: str, cluster: Any, args: argparse.Namespace) -> dict[str, Any]:
    from bench.agents import count_run
    from services.realtime.tools import ToolCall, ToolContext
    from services.redis_client import connect as connect_redis
    from services.toolbus.runner import RedisToolRunner
    from services.toolbus.streams import EXECUTOR_GROUP, TOOL_CALLS_STREAM

    client = connect_redis(redis_url)
    runner = RedisToolRunner(client, host_id="storm", default_timeout=RUNNER_TIMEOUT_S)
    await runner.start()
    outcomes: dict[str, int] = {}
    latencies: list[float] = []
    slow_by_second: dict[int, int] = {}  # calls over 100 ms, by the second they were issued in

    async def one(call_id: str, n: int) -> None:
        ctx = ToolContext(ToolCall(call_id, "count_run", json.dumps({"n": n})), agent_name="Bench")
        begin = time.perf_counter()
        result = await runner.run(count_run, ctx)
        took = time.perf_counter() - begin
        latencies.append(took)
        if took > 0.1:
            second = int(begin - zero)
            slow_by_second[second] = slow_by_second.get(second, 0) + 1
        outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1

    # Warm-up: the executors' Redis clients and the tool path, before anything is killed.
    zero = time.perf_counter()
    await asyncio.gather(*(one(f"warm-{n}", n) for n in range(50)))
    latencies.clear()
    outcomes.clear()
    slow_by_second.clear()

    total = int(args.rate * args.seconds)
    issued = [f"storm-{n}" for n in range(total)]
    killed: list[dict[str, Any]] = []
    zero = time.perf_counter()
    supervisor = Supervisor(cluster, RECONCILE_EVERY_S, zero)
    supervisor.start()
    killer = asyncio.create_task(kill_loop(cluster, args.kill_every, args.seconds, zero, killed))
    # Only calls in flight are held: 30 000 finished tasks kept to the end made this process's
    # full collections pause it for 0.4 s, a stall of every call that looked like the executors'.
    in_flight: set[asyncio.Task[None]] = set()
    with GcPauses(zero) as gc_pauses:
        for n, call_id in enumerate(issued):
            # Open loop: calls start on schedule whatever the latency of earlier ones.
            delay = zero + n / args.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(call_id, n))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        achieved = total / (time.perf_counter() - zero)
        await killer
        await asyncio.gather(*in_flight)
    drained_s = time.perf_counter() - zero
    # Give the last kill its replacement, so "restarted" is comparable with "killed".
    kills = sum(1 for k in killed if k["pid"] is not None)
    await asyncio.to_thread(supervisor.wait_executor_restarts, kills, 20.0)
    await asyncio.to_thread(supervisor.stop)

    runs = {k.decode(): int(v) for k, v in (await client.hgetall(RUNS_KEY)).items()}
    pending = await client.xpending(TOOL_CALLS_STREAM, EXECUTOR_GROUP)
    await runner.stop()
    await client.aclose()
    counts = [runs.get(call_id, 0) for call_id in issued]
    duplicated = [c for c in counts if c > 1]
    # Call n was issued at n / rate: when the duplicates were issued, to set beside the kills.
    duplicated_by_second: dict[int, int] = {}
    for n, c in enumerate(counts):
        if c > 1:
            second = int(n / args.rate)
            duplicated_by_second[second] = duplicated_by_second.get(second, 0) + 1
    ok = outcomes.get("ok", 0)
    return {
        "rate_per_s": args.rate,
        "seconds": args.seconds,
        "kill_every_s": args.kill_every,
        "achieved_per_s": round(achieved, 1),
        "all_results_after_s": round(drained_s, 2),
        "issued": total,
        "ok": ok,
        "lost": total - ok,
        "outcomes": outcomes,
        "duplicated": len(duplicated),
        "extra_runs": sum(c - 1 for c in duplicated),
        "duplicated_by_issue_second": duplicated_by_second,
        "never_ran": sum(1 for c in counts if c == 0),
        "pending_left": int(pending["pending"]),
        "over_1s": sum(1 for v in latencies if v > 1.0),
        "latency": summary_ms(latencies),
        "over_100ms_by_issue_second": dict(sorted(slow_by_second.items())),
        "executors_killed": kills,
        "executors_restarted": supervisor.executor_restarts(),
        "kills": killed,
        "started_by_reconcile": supervisor.started,
        "reconcile_errors": supervisor.errors,
        "driver_gc_pauses": gc_pauses.pauses,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--kill-every", type=float, default=5.0)
    parser.add_argument("--executors", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from actors.cluster import start_cluster
    from services.config import ModelSettings, RuntimeSettings, Secret

    result: dict[str, Any] = {"benchmark": "tool_storm", "date": time.strftime("%Y-%m-%d")}
    with embedded_runtime() as (redis_url, model_url):
        settings = RuntimeSettings(hosts=1, executors=args.executors, agent="bench.agents:AGENTS")
        cluster = start_cluster(
            settings,
            redis_url=redis_url,
            model=ModelSettings(Secret(""), None, "gpt-realtime"),
            model_url=model_url,
        )
        # Other work on the machine shows up here as latency and as deeper in-flight queues at
        # each kill (so more duplicates): the load average says whether the run had it alone.
        result["cpus"] = os.cpu_count()
        result["loadavg_1m_before"] = round(os.getloadavg()[0], 2)
        result["executors"] = args.executors
        result["runner_timeout_s"] = RUNNER_TIMEOUT_S
        result["reconcile_every_s"] = RECONCILE_EVERY_S
        result.update(asyncio.run(storm(redis_url, cluster, args)))
        result["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
        cluster.stop()
    result["targets"] = {"lost": 0, "duplicated": 0}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    keys = ("issued", "ok", "lost", "duplicated", "never_ran", "executors_killed")
    line = {k: result[k] for k in keys}
    line.update(
        p50_ms=result["latency"]["p50_ms"],
        p99_ms=result["latency"]["p99_ms"],
        max_ms=result["latency"]["max_ms"],
        executors_restarted=result["executors_restarted"],
    )
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
