"""SIP calls under load: ``callray loadtest --provider sip``'s callers against ``callray up``.

``callray up`` runs in a child process with its defaults (as ``bench/calls.py`` starts it), its
SIP ingress on a free UDP port, INVITEs unlimited per source (every caller here is 127.0.0.1).
The callers (:func:`services.loadgen.sip_runner.run_sip_load`) run in this process: an INVITE
each, then 20 ms μ-law RTP both ways with frame tags. Phases:

* **load** (echo model): for each load (25, 50, 100 calls by default) frames lost, the echo
  round trip (RTP → ingress → host → model → host → pacer → RTP, so it includes the wait for
  the pacer's next tick, 0 to 20 ms), INVITE → 200 at the caller and
  ``callray_sip_invite_seconds``; CPU by role as ``bench/calls.py`` splits it, and the ingress
  process (``IngressActor``) alone, per call-minute; the histograms the node exports over the
  load: ``callray_media_hop_seconds{direction="in"}`` (ingress → session host; the jitter
  buffer releases in-order packets on arrival, so this is what RTP in adds), the pacer's
  lateness ``callray_ingress_added_seconds{transport="sip",direction="out"}``, and RTP drops;
* **barge** (echo): every caller interrupts once; whether the agent's audio stops (the cut the
  caller hears), and what still plays after it (stale audio);
* **flood** (echo): ``--flood-calls`` calls; over ``--flood-s`` seconds the ingress's CPU with
  no flood, then with ``--flood-pps`` RTP packets a second sent from another port (a separate
  process) to one live call's RTP port; the calls' loss and echo times, and the drops counted;
* **truncation** (scripted model): callers interrupt the greeting; the assistant transcript's
  ``heard_ms`` (the truncation the model confirmed, from the call-event stream in Redis)
  against the audio the caller received before the cut.

Run inside a loopback-only namespace (Ray then binds 127.0.0.1)::

    unshare -n sh -c 'ip link set lo up; .venv/bin/python -m bench.sip'

Writes ``bench/results/sip.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.calls import Up, _cpu_s, _tree
from bench.webrtc import _ingress

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "sip.json"
ENV = {"CALLRAY_SIP_INVITES_PER_SOURCE_S": "1000"}
RTP_PORTS = (20000, 29999)  # callray's default CALLRAY_RTP_PORTS
FLOODER = """
import socket, struct, sys, time
port, pps, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
payload = b"\\xff" * 160
sent, start = 0, time.monotonic()
while (now := time.monotonic()) - start < seconds:
    due = int((now - start) * pps)
    while sent < due:
        s.sendto(struct.pack("!BBHII", 0x80, 0, sent & 0xFFFF, 160 * sent, 0x5EED) + payload,
                 ("127.0.0.1", port))
        sent += 1
    time.sleep(0.002)
print(sent)
"""


# ----- the node's metrics --------------------------------------------------------------------


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the node's /metrics, by (sample name, labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _histogram(before: dict[Any, float], after: dict[Any, float], name: str, **match: str) -> Any:
    """The histogram ``name`` (label sets matching ``match``, summed) over the interval: count,
    the upper bounds of the buckets holding p50 and p99 (bucket resolution), and the share at
    or under 2 ms."""
    buckets: dict[float, float] = {}
    for (sample, labels), value in after.items():
        fields = dict(labels)
        if sample != name + "_bucket" or any(fields.get(k) != v for k, v in match.items()):
            continue
        le = float(fields["le"])
        buckets[le] = buckets.get(le, 0.0) + value - before.get((sample, labels), 0.0)
    count = buckets.get(float("inf"), 0.0)
    if not count:
        return {"n": 0}
    ordered = sorted(buckets.items())

    def bound(q: float) -> float | None:
        le = next(le for le, n in ordered if n >= q * count)
        return None if le == float("inf") else round(le * 1000, 3)

    within = next((n for le, n in ordered if le >= 0.002), count)
    return {"n": int(count), "p50_le_ms": bound(0.5), "p99_le_ms": bound(0.99),
            "within_2ms": round(within / count, 4)}  # fmt: skip


def _counter(before: dict[Any, float], after: dict[Any, float], name: str, label: str) -> Any:
    out: dict[str, int] = {}
    for (sample, labels), value in after.items():
        if sample == name:
            key = dict(labels).get(label, "")
            out[key] = out.get(key, 0) + int(value - before.get((sample, labels), 0.0))
    return {k: v for k, v in sorted(out.items()) if v}


# ----- phases --------------------------------------------------------------------------------


def _options(up: Up, calls: int, args: argparse.Namespace, **kw: Any) -> Any:
    from services.loadgen import LoadOptions

    return LoadOptions(
        provider="sip",
        target=f"127.0.0.1:{up.sip_port}",
        calls=calls,
        ramp_s=calls / args.rate,
        duration_s=kw.pop("duration_s", args.duration),
        seed=calls,
        **kw,
    )


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "completed": report["calls"]["completed"],
        "failed": report["calls"]["failed"],
        "rejected": report["calls"]["rejected"],
        "final_status": report["sip"]["final_status"],
        "frames": report["frames"],
        "echo_ms": report["echo_latency_ms"],
        "invite_to_200_ms": report["setup_ms"]["invite_to_200"],
        "first_audio_ms": report["setup_ms"]["first_audio"],
        "loadgen_max_tick_lag_ms": report["loadgen"]["max_tick_lag_ms"],
    }


def _drift(loaded: Any, report: dict[str, Any]) -> dict[str, Any]:
    """How each call's echo time moved from its first 5 s to its last 5 s (p50 of each, ms),
    beside the idle packets it received between echoes (each a pacer tick the echo missed)."""
    first, last = [], []
    for call in loaded.calls:
        latencies = np.frombuffer(call.echo_latencies_ms, dtype=np.float64)
        if latencies.size >= 500:
            first.append(float(np.median(latencies[:250])))
            last.append(float(np.median(latencies[-250:])))
    idle = [c.get("idle_after_first_audio", 0) for c in report["sip"]["calls"]]

    return {
        "p50_first_5s_ms": _spread(first),
        "p50_last_5s_ms": _spread(last),
        "idle_between_echoes_per_call": _spread([float(n) for n in idle]),
    }


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    p50, p99 = np.percentile(values, [50, 99])
    return {"p50": round(float(p50), 1), "p99": round(float(p99), 1), "max": round(max(values), 1)}


def load_phase(up: Up, args: argparse.Namespace, calls: int) -> dict[str, Any]:
    from services import aio
    from services.loadgen.sip_runner import run_sip_load

    driver = psutil.Process(up.proc.pid)
    ingress = _ingress(up)
    groups = _tree(driver)
    groups["load generator"] = [psutil.Process()]
    cpu0 = {role: _cpu_s(procs) for role, procs in groups.items()}
    ingress0 = _cpu_s([ingress])
    metrics0 = _scrape(up.port)
    wall0 = time.monotonic()
    loaded = aio.run(run_sip_load(_options(up, calls, args)))
    report = loaded.to_dict()
    wall = time.monotonic() - wall0
    metrics1 = _scrape(up.port)
    cores: dict[str, float] = {}
    for role, procs in {**_tree(driver), "load generator": [psutil.Process()]}.items():
        before = cpu0.get(role, {})
        cores[role] = round(sum(v - before.get(p, 0.0) for p, v in _cpu_s(procs).items()) / wall, 3)
    ingress_s = sum(v - ingress0.get(p, 0.0) for p, v in _cpu_s([ingress]).items())
    call_minutes = calls * args.duration / 60
    return {
        "calls": calls,
        "duration_s": args.duration,
        **_summary(report),
        "echo_drift": _drift(loaded, report),
        "cores_used": cores,
        "ingress_cores": round(ingress_s / wall, 3),
        "cpu_s_per_call_minute": {
            "sip_ingress": round(ingress_s / call_minutes, 4),
            "callray": round(cores["callray"] * wall / call_minutes, 4),
        },
        "node": {
            "rtp_in_to_host": _histogram(
                metrics0, metrics1, "callray_media_hop_seconds", direction="in"
            ),
            "host_to_ingress": _histogram(
                metrics0, metrics1, "callray_media_hop_seconds", direction="out"
            ),
            "pacer_lateness": _histogram(
                metrics0,
                metrics1,
                "callray_ingress_added_seconds",
                transport="sip",
                direction="out",
            ),
            "invite_to_200": _histogram(
                metrics0, metrics1, "callray_sip_invite_seconds", code="200"
            ),
            "rtp_dropped": _counter(metrics0, metrics1, "callray_rtp_dropped_total", "reason"),
        },
    }


def barge_phase(up: Up, args: argparse.Namespace) -> dict[str, Any]:
    from services import aio
    from services.loadgen.sip_runner import run_sip_load

    options = _options(up, args.barge_calls, args, duration_s=8.0, barge_in_rate=1.0)
    report = aio.run(run_sip_load(options)).to_dict()
    return {"calls": args.barge_calls, **_summary(report), "barge_in": report["barge_in"]}


def _live_rtp_port(up: Up) -> int:
    ingress = _ingress(up)
    ports = sorted(
        c.laddr.port
        for c in ingress.net_connections(kind="udp")
        if RTP_PORTS[0] <= c.laddr.port <= RTP_PORTS[1]
    )
    if not ports:
        raise RuntimeError("no live call's RTP port on the ingress")
    return int(ports[len(ports) // 2])


async def _flood_run(up: Up, args: argparse.Namespace) -> dict[str, Any]:
    from services.loadgen.sip_runner import run_sip_load

    ingress = _ingress(up)
    duration = 2 * args.flood_s + 12.0
    options = _options(up, args.flood_calls, args, duration_s=duration)
    task = asyncio.create_task(run_sip_load(options))
    await asyncio.sleep(options.ramp_s + 3.0)  # every call up and settled
    port = await asyncio.to_thread(_live_rtp_port, up)

    def cpu() -> float:
        t = ingress.cpu_times()
        return float(t.user + t.system)

    metrics0 = await asyncio.to_thread(_scrape, up.port)
    quiet0, began = cpu(), time.monotonic()
    await asyncio.sleep(args.flood_s)
    quiet = (cpu() - quiet0) / (time.monotonic() - began)
    flooder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FLOODER, str(port), str(args.flood_pps), str(args.flood_s),
        stdout=subprocess.PIPE,
    )  # fmt: skip
    flood0, began = cpu(), time.monotonic()
    stdout, _ = await flooder.communicate()
    flooded = (cpu() - flood0) / (time.monotonic() - began)
    await asyncio.sleep(1.5)  # the pacer adds drops to the metrics once a second
    metrics1 = await asyncio.to_thread(_scrape, up.port)
    report = await task
    data = report.to_dict()
    victim = next(c for c in data["sip"]["calls"] if c.get("ingress_rtp_port") == port)
    result = report.calls[victim["index"]]
    return {
        "calls": args.flood_calls,
        "packets_sent": int(stdout.decode().strip() or 0),
        "packets_per_s": args.flood_pps,
        "seconds": args.flood_s,
        "ingress_cores_quiet": round(quiet, 4),
        "ingress_cores_flooded": round(flooded, 4),
        "flood_cost_pct_of_a_core": round((flooded - quiet) * 100, 2),
        "rtp_dropped": _counter(metrics0, metrics1, "callray_rtp_dropped_total", "reason"),
        "all_calls": _summary(data),
        "flooded_call": {
            "frames_sent": result.frames_sent,
            "lost": result.lost,
            "echoed": result.echoed,
            "echo_ms": _spread(list(result.echo_latencies_ms)),
        },
    }


def _heard_ms_by_call(up_scratch: Path) -> dict[str, int]:
    """The assistant transcripts cut by the caller: their ``heard_ms``, by callray call id."""
    import redis

    url = (up_scratch / "data" / "redis.url").read_text().strip()
    client = redis.Redis.from_url(url, decode_responses=True)
    out: dict[str, int] = {}
    entries: Any = client.xrange("callray:call-events")
    for _, fields in entries:
        if fields.get("kind") == "transcript" and fields.get("heard_ms") not in (None, "null"):
            out[fields["call_id"]] = int(float(fields["heard_ms"]))
    client.close()
    return out


def truncation_phase(args: argparse.Namespace) -> dict[str, Any]:
    from services import aio
    from services.loadgen.sip_runner import run_sip_load

    scratch = Path(tempfile.mkdtemp(prefix="callray-sip-"))
    up = Up(scratch, {**ENV, "CALLRAY_MODEL_MODE": "scripted"})
    try:
        up.wait_ready()
        time.sleep(2.0)
        options = _options(
            up, args.truncation_calls, args, duration_s=3.0, barge_in_rate=1.0, echo=False
        )
        report = aio.run(run_sip_load(options)).to_dict()
        time.sleep(1.0)
        heard = _heard_ms_by_call(scratch)
    finally:
        up.stop()
    pairs = [
        {
            "caller_heard_ms": c.get("heard_before_cut_ms"),
            "truncated_at_ms": heard.get(c["callray_call_id"]),
        }
        for c in report["sip"]["calls"]
    ]
    exact = [p for p in pairs if p["caller_heard_ms"] == p["truncated_at_ms"] is not None]
    return {
        "calls": args.truncation_calls,
        "barge_in": report["barge_in"],
        "pairs": pairs,
        "exact": len(exact),
        "compared": sum(1 for p in pairs if None not in p.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loads", default="25,50,100")
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--rate", type=float, default=20.0, help="INVITEs a second")
    parser.add_argument("--phases", default="load,barge,flood,truncation")
    parser.add_argument("--barge-calls", type=int, default=10)
    parser.add_argument("--flood-calls", type=int, default=20)
    parser.add_argument("--flood-pps", type=int, default=5000)
    parser.add_argument("--flood-s", type=float, default=10.0)
    parser.add_argument("--truncation-calls", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from services import aio

    phases = args.phases.split(",")
    result: dict[str, Any] = {
        "benchmark": "sip",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "system": "callray up (its defaults), SIP callers in the benchmark's process",
        "env": ENV,
        "load": [],
    }
    if {"load", "barge", "flood"} & set(phases):
        up = Up(
            Path(tempfile.mkdtemp(prefix="callray-sip-")), {**ENV, "CALLRAY_MODEL_MODE": "echo"}
        )
        try:
            up.wait_ready()
            time.sleep(3.0)  # Ray's prestarted workers settle
            for load in (int(n) for n in args.loads.split(",") if "load" in phases):
                time.sleep(2.0)
                result["load"].append(load_phase(up, args, load))
                print(json.dumps(result["load"][-1]), flush=True)
            if "barge" in phases:
                result["barge"] = barge_phase(up, args)
                print(json.dumps(result["barge"]), flush=True)
            if "flood" in phases:
                time.sleep(2.0)
                result["flood"] = aio.run(_flood_run(up, args))
                print(json.dumps(result["flood"]), flush=True)
        finally:
            up.stop()
    if "truncation" in phases:
        result["truncation"] = truncation_phase(args)
        print(json.dumps(result["truncation"]), flush=True)
    result["targets"] = {
        "concurrent_calls_at_zero_loss": 100,
        "sip_ingress_cpu_s_per_call_minute": 0.3,
        "callray_cpu_s_per_call_minute": 0.6,
        "rtp_in_to_host_p99_ms_beyond_jitter_window": 2,
        "pacer_lateness_p99_ms_at_100_calls": 2,
        "invite_to_200_p99_ms": 100,
        "truncation": "exact to the packet",
        "wrong_source_flood_pct_of_a_core": 10,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
