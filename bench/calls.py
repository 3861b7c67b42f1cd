"""End-to-end call benchmark: simulated Twilio callers against ``callray up`` as a user runs it.

``callray up`` starts in a child process with its own defaults (two session hosts, two tool
executors, the router, one ingress, multiprocess metrics, logging), except that the local model
runs in echo mode (``CALLRAY_MODEL_MODE=echo``) so that every caller frame comes back and its
round trip can be timed. ``--env NAME=VALUE`` changes one setting, for before/after pairs.

For each load (25, 50, 100, 200 concurrent calls by default) it runs ``callray loadtest``'s
callers for ``--duration`` seconds and records frame loss, added latency (each 20 ms frame's
echo round trip through callray and the model), barge-in-to-clear time, setup time, and the CPU
and memory of the processes ``callray up`` started, grouped by role:

* **callray**: the ``callray up`` driver and every callray actor (ingress, session hosts, tool
  executors, router): the figure the targets are about;
* **ray daemons** (GCS, raylet, log monitor, ...), **local model**, **redis-server**, and the
  **load generator** (this process), reported beside it.

Run as root inside a loopback-only namespace so Ray binds 127.0.0.1::

    unshare -n sh -c 'ip link set lo up; .venv/bin/python -m bench.calls'

Writes ``bench/results/calls.json`` (``--out`` to write elsewhere).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "calls.json"
ACTOR_KINDS = ("IngressActor", "SessionHostActor", "ToolExecutorActor", "RouterActor")


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _role(proc: psutil.Process, driver_pid: int) -> str:
    if proc.pid == driver_pid:
        return "callray"
    try:
        cmd = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "gone"
    if any(f"ray::{kind}" in cmd for kind in ACTOR_KINDS):
        return "callray"
    if "redis-server" in cmd:
        return "redis-server"
    if "localmodel" in cmd or " model " in f" {cmd} ":
        return "local model"
    return "ray daemons"


def _tree(driver: psutil.Process) -> dict[str, list[psutil.Process]]:
    groups: dict[str, list[psutil.Process]] = {}
    for proc in [driver, *driver.children(recursive=True)]:
        groups.setdefault(_role(proc, driver.pid), []).append(proc)
    groups.pop("gone", None)
    return groups


def _cpu_s(procs: list[psutil.Process]) -> dict[int, float]:
    out: dict[int, float] = {}
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return out


def _rss(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def _clear_buckets(text: str) -> dict[float, float]:
    """Cumulative bucket counts of callray_barge_in_clear_seconds."""
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
    sending clear (the issue's "clear ≤ 10 ms after the session reacts")."""
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


class Up:
    """``callray up`` in a child process, stopped with SIGTERM as a user's Ctrl-C would."""

    def __init__(self, scratch: Path, extra_env: dict[str, str]) -> None:
        self.port = _free_port()
        self.metrics_port = _free_port()
        self.sip_port = _free_port(socket.SOCK_DGRAM)
        env = dict(os.environ)
        env.pop("OPENAI_API_KEY", None)
        env.update(
            {
                "CALLRAY_MODEL_MODE": "echo",
                "CALLRAY_PORT": str(self.port),
                "CALLRAY_SIP_PORT": str(self.sip_port),
                "CALLRAY_METRICS_PORT": str(self.metrics_port),
                "CALLRAY_DATA_DIR": str(scratch / "data"),
                "RAY_AUTH_MODE": "disabled",
            }
        )
        env.update(extra_env)
        self.log = (scratch / "up.log").open("w")
        callray = Path(sys.executable).with_name("callray")
        self.proc = subprocess.Popen(
            [str(callray), "up"], env=env, stdout=subprocess.PIPE, stderr=self.log, text=True
        )
        self.banner: list[str] = []

    def wait_ready(self, limit_s: float = 120.0) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"callray up exited ({self.proc.poll()}); see {self.log.name}")
            self.banner.append(line.rstrip())
            if "Ctrl-C stops everything" in line:
                return
        raise RuntimeError("callray up did not come up")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loads", default="25,50,100,200")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--barge-in-rate", type=float, default=0.2)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--label", default="", help="recorded with the results")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.env)

    from services import aio
    from services.loadgen import LoadOptions, run_load

    scratch = Path(tempfile.mkdtemp(prefix="callray-calls-"))
    up = Up(scratch, extra_env)
    result: dict[str, Any] = {
        "benchmark": "calls",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "system": "callray up (its defaults, local model in echo mode)",
        "env": extra_env,
        "label": args.label,
        "runs": [],
    }
    try:
        up.wait_ready()
        result["banner"] = up.banner
        driver = psutil.Process(up.proc.pid)
        time.sleep(3.0)  # Ray's prestarted workers settle
        for load in [int(x) for x in args.loads.split(",")]:
            time.sleep(2.0)
            groups = _tree(driver)
            groups["load generator"] = [psutil.Process()]
            cpu0 = {role: _cpu_s(procs) for role, procs in groups.items()}
            rss0 = _rss(groups["callray"])
            clears0 = _clear_buckets(_scrape(up.port))
            wall0 = time.monotonic()
            options = LoadOptions(
                base_url=f"http://127.0.0.1:{up.port}",
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
                    peak_rss = max(peak_rss, _rss(_tree(driver)["callray"]))
                return await task

            report = aio.run(run()).to_dict()
            wall = time.monotonic() - wall0
            session_clear = _clear_summary(clears0, _clear_buckets(_scrape(up.port)))
            # CPU per role over the load; a process started during it counts from zero.
            cores: dict[str, float] = {}
            for role, procs in {**_tree(driver), "load generator": [psutil.Process()]}.items():
                before = cpu0.get(role, {})
                now = _cpu_s(procs)
                used = sum(v - before.get(pid, 0.0) for pid, v in now.items())
                cores[role] = round(used / wall, 3)
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
                "cpu_s_per_call_minute": round(cores["callray"] * wall / call_minutes, 4),
                "rss_growth_per_call_mb": round((peak_rss - rss0) / load / 2**20, 3),
                "cores_used": cores,
            }
            result["runs"].append(run_result)
            print(json.dumps({k: v for k, v in run_result.items() if k != "setup_ms"}), flush=True)
    finally:
        up.stop()
    result["targets"] = {
        "cpu_s_per_call_minute": 0.3,
        "loss_to_100_calls": 0,
        "added_latency_p99_ms": {"50": 30, "100": 60},
        "clear_after_session_reacts_p99_ms": 10,
        "first_audio_p99_ms": 300,
        "rss_per_call_mb": 0.5,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
