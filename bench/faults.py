"""Faults under load: what callers hear when a session host dies or the model drops them.

``callray up`` with its defaults (two session hosts, the local model in echo mode) carries
``--calls`` simulated Twilio callers (``callray loadtest``'s, echo tagging, no barge-ins), and
one fault is injected into it mid-run:

* ``host-kill``: SIGKILL one session host's process ``--at`` seconds into the calls. Its calls
  move to the other host (the ingress notices the media channel gone after
  ``CALLRAY_HOST_LOST_S``); the gap each moved call heard is the longest silence a loss caused
  on it (``EchoLedger.longest_gap_ms``).
* ``model-drop``: the local model closes every connection with 1011 after ``--drop-after``
  client events (``callray model --drop-after``; 50 appends a second per call), so each call's
  session reconnects and replays its conversation, once or more per run.
* ``drain``: ``callray drain host-0 --timeout --drain-timeout`` ``--at`` seconds into the calls,
  as an operator takes a host out of service. Its calls go on until the timeout, then move to
  the other host (``RouterCore.evacuate``); the gap is measured as for a lost host, and the
  drain's own duration (command start to the host released) is reported.

Reported per fault: calls kept (completed, not hung up), the callers' gaps (p50, p99, max, over
the calls that had one), frames lost, and callray's own counters from ``/metrics``.

    unshare -n sh -c 'ip link set lo up; .venv/bin/python -m bench.faults --calls 50'

Writes ``bench/results/faults.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.calls import Up, _scrape

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "faults.json"


def _counter(text: str, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name):
            labels, value = line.rsplit(" ", 1)
            out[labels.removeprefix(name) or "total"] = out.get(labels, 0.0) + float(value)
    return out


def _gaps(report: dict[str, Any], floor_ms: float) -> dict[str, Any]:
    gaps = [c["longest_gap_ms"] for c in report["per_call"] if c["longest_gap_ms"] > floor_ms]
    if not gaps:
        return {"calls_with_gap": 0}
    data = np.asarray(gaps)
    return {
        "calls_with_gap": len(gaps),
        "p50_ms": round(float(np.percentile(data, 50)), 1),
        "p99_ms": round(float(np.percentile(data, 99)), 1),
        "max_ms": round(float(data.max()), 1),
    }


def _host_pids(driver: psutil.Process) -> list[int]:
    return [
        p.pid
        for p in driver.children(recursive=True)
        if "ray::SessionHostActor" in " ".join(p.cmdline())
    ]


async def _drain(host_id: str, timeout_s: float) -> dict[str, Any]:
    """``callray drain`` as an operator runs it, joining ``callray up``'s Ray."""
    began = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "drain",
        host_id,
        "--timeout",
        str(timeout_s),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    out, _ = await proc.communicate()
    lines = out.decode().splitlines()
    return {
        "host": host_id,
        "timeout_s": timeout_s,
        "exit": proc.returncode,
        "took_s": round(time.monotonic() - began, 2),
        "calls_left_at_start": next((ln.split()[-3] for ln in lines if "calls left" in ln), None),
        "said": lines,
    }


def run_fault(fault: str, args: argparse.Namespace) -> dict[str, Any]:
    from services import aio
    from services.loadgen import LoadOptions, run_load

    env = {"CALLRAY_MODEL_DROP_AFTER": str(args.drop_after)} if fault == "model-drop" else {}
    up = Up(Path(tempfile.mkdtemp(prefix=f"callray-{fault}-")), env)
    try:
        up.wait_ready()
        driver = psutil.Process(up.proc.pid)
        time.sleep(3.0)
        options = LoadOptions(
            base_url=f"http://127.0.0.1:{up.port}",
            calls=args.calls,
            ramp_s=min(5.0, args.calls / 20),
            duration_s=args.duration,
            barge_in_rate=0.0,
            seed=7,
        )
        killed: dict[str, Any] = {}
        drained: dict[str, Any] = {}

        async def run() -> Any:
            load = asyncio.create_task(run_load(options))
            if fault == "host-kill":
                await asyncio.sleep(options.ramp_s + args.at)
                victim = _host_pids(driver)[0]
                os.kill(victim, signal.SIGKILL)
                killed.update(pid=victim, at_s=round(options.ramp_s + args.at, 1))
            elif fault == "drain":
                await asyncio.sleep(options.ramp_s + args.at)
                drained.update(await _drain("host-0", args.drain_timeout))
                drained["at_s"] = round(options.ramp_s + args.at, 1)
            return await load

        report = aio.run(run()).to_dict()
        text = _scrape(up.port)
    finally:
        up.stop()
    per_call = report["per_call"]
    return {
        "fault": fault,
        "calls": args.calls,
        "duration_s": args.duration,
        "killed": killed or None,
        "drained": drained or None,
        "drop_after_events": args.drop_after if fault == "model-drop" else None,
        "kept": sum(
            1 for c in per_call if c["outcome"] == "completed" and c["ended_by"] != "ingress"
        ),
        "hung_up_by_ingress": report["calls"]["hung_up_by_ingress"],
        "frames": {k: report["frames"][k] for k in ("sent", "lost", "loss_rate")},
        "gap": _gaps(report, args.gap_floor_ms),
        "added_latency_ms": {k: report["echo_latency_ms"].get(k) for k in ("p50", "p99", "max")},
        "moved": _counter(text, "callray_calls_moved_total"),
        "model_reconnects": _counter(text, "callray_model_reconnects_total"),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--faults", default="host-kill,model-drop,drain")
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--at", type=float, default=10.0, help="host-kill: seconds into the calls")
    parser.add_argument("--drop-after", type=int, default=1000, help="model-drop: client events")
    parser.add_argument("--drain-timeout", type=float, default=3.0, help="drain: --timeout")
    parser.add_argument(
        "--gap-floor-ms", type=float, default=0.0, help="ignore silences up to this long"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result: dict[str, Any] = {
        "benchmark": "faults",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "system": "callray up (its defaults, local model in echo mode)",
        "runs": [],
    }
    for fault in args.faults.split(","):
        run = run_fault(fault, args)
        result["runs"].append(run)
        print(json.dumps(run), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
