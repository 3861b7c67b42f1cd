"""Browser calls under load: aiortc callers against ``callray up``'s WebRTC ingress.

``callray up`` runs in a child process (its defaults; ICE on 127.0.0.1); the callers are
:class:`services.loadgen.webrtc_caller.WebRTCCaller`, in this process, dialled at ``--rate``
offers a second. Two phases per run:

* **scripted** (the demo agent greets): offer → answer (the POST of the offer until its answer),
  click → first audible model audio (token, offer, ICE, DTLS, the model's greeting), and, at the
  end, each caller's tab "closed" (its audio stops without a hang-up) → the ingress's call count
  drops (``CALLRAY_WEBRTC_SILENCE_S``);
* **echo** (the local model streams the caller's audio back): every caller sends a 200 ms tone
  every 2 s; the round trip is timed from the tone's first frame sent to the echo's onset heard
  (Opus both ways, the ingress, the host, the model), frames received are counted against the
  50 a second a call should get, and the ingress process's CPU and RSS are read over the steady
  part: "calls per ingress core" is 1 / (its CPU-s per second per call);
* **transport** (no ``callray up``): ``OpenAIRealtimeWebRTC.connect()`` against the local model
  in this process, ``--connects`` times, and its fallback when ``session.updated`` never comes.

Run inside a loopback-only namespace (Ray and aiortc then bind 127.0.0.1)::

    unshare -n sh -c 'ip link set lo up; .venv/bin/python -m bench.webrtc --calls 10'

Writes ``bench/results/webrtc.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.calls import Up

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "webrtc.json"


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(float(np.percentile(np.asarray(values), q)), 1)


def _summary_ms(seconds: list[float]) -> dict[str, Any]:
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "p50_ms": _pct(ms, 50), "p99_ms": _pct(ms, 99), "max_ms": _pct(ms, 100)}


def _ingress(up: Up) -> psutil.Process:
    for proc in psutil.Process(up.proc.pid).children(recursive=True):
        try:
            if "ray::IngressActor" in " ".join(proc.cmdline()):
                return proc
        except psutil.NoSuchProcess:
            continue
    raise RuntimeError("no IngressActor process under callray up")


def _histograms(port: int, name: str) -> dict[str, Any]:
    """The node's histogram ``name`` per label set, as Prometheus would read it: the count, and
    the upper bound of the bucket holding p50 and p99 (bucket resolution, not exact)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    series: dict[str, list[tuple[float, float]]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == name + "_bucket":
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "le")
                series.setdefault(labels, []).append((float(sample.labels["le"]), sample.value))
    out: dict[str, Any] = {}
    for labels, buckets in series.items():
        buckets.sort()
        count = buckets[-1][1]
        if not count:
            continue

        def bound(
            q: float, buckets: list[tuple[float, float]] = buckets, count: float = count
        ) -> float:
            return next(le for le, n in buckets if n >= q * count) * 1000

        out[labels or "all"] = {
            "n": int(count),
            "p50_le_ms": bound(0.5),
            "p99_le_ms": bound(0.99),
            "within_5ms": round(next((n for le, n in buckets if le >= 0.005), count) / count, 4),
        }
    return out


def _calls_up(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
        return int(json.loads(reply.read())["calls"])


async def _dial_all(base: str, calls: int, rate: float) -> list[Any]:
    from services.loadgen.webrtc_caller import WebRTCCaller

    callers = [WebRTCCaller(base) for _ in range(calls)]
    start = time.monotonic()
    tasks = []
    for n, caller in enumerate(callers):
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(caller.dial()))
    statuses = await asyncio.gather(*tasks)
    return [c for c, s in zip(callers, statuses, strict=True) if s == 201]


async def scripted_phase(up: Up, args: argparse.Namespace) -> dict[str, Any]:
    base = f"http://127.0.0.1:{up.port}"
    callers = await _dial_all(base, args.calls, args.rate)
    deadline = time.monotonic() + 15
    # Polled: the figures are set in aiortc's receive tasks, which signal nothing.
    while time.monotonic() < deadline and not all(c.first_audio_at for c in callers):  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    first_audio = [c.first_audio_at - c.clicked_at for c in callers if c.first_audio_at]
    # Tabs closed without a hang-up: their audio stops, their connections stay.
    before = await asyncio.to_thread(_calls_up, up.port)
    closed_at = time.monotonic()
    for caller in callers:
        caller.source.stop()
    ended_after = None
    while time.monotonic() - closed_at < 15:
        if await asyncio.to_thread(_calls_up, up.port) == 0:
            ended_after = time.monotonic() - closed_at
            break
        await asyncio.sleep(0.05)
    for caller in callers:
        await caller.close()
    return {
        "calls": args.calls,
        "answered": len(callers),
        "offer_to_answer": _summary_ms([c.offer_s for c in callers]),
        "offer_at_ingress": await asyncio.to_thread(
            _histograms, up.port, "callray_webrtc_offer_seconds"
        ),
        "call_setup_at_host": await asyncio.to_thread(
            _histograms, up.port, "callray_call_setup_seconds"
        ),
        "click_to_first_audio": _summary_ms(first_audio),
        "calls_up_before_tabs_closed": before,
        "tabs_closed_to_all_ended_s": None if ended_after is None else round(ended_after, 2),
    }


async def echo_phase(up: Up, args: argparse.Namespace, calls: int) -> dict[str, Any]:
    base = f"http://127.0.0.1:{up.port}"
    ingress = _ingress(up)
    rss_idle = ingress.memory_info().rss
    callers = await _dial_all(base, calls, args.rate)
    await asyncio.sleep(3.0)  # connected and settled

    async def talk(caller: Any) -> None:
        offset = np.random.default_rng(hash(caller.call_id) % 2**32).uniform(0, 2.0)
        await asyncio.sleep(offset)
        while True:
            caller.source.speaking = True
            await asyncio.sleep(0.2)
            caller.source.speaking = False
            await asyncio.sleep(1.8)

    # Under the model's VAD (RMS 0.028 of full scale against its 0.05), over the callers'
    # "audible" (peak 500): a tone the echo model returns without taking it for a barge-in,
    # which would cut the echo item it arrives in (the ingress drops a cut item's late audio).
    for caller in callers:
        caller.source.level = 0.04
    talkers = [asyncio.create_task(talk(c)) for c in callers]
    frames_before = [c.received_frames for c in callers]
    cpu_before = ingress.cpu_times()
    began = time.monotonic()
    await asyncio.sleep(args.duration)
    elapsed = time.monotonic() - began
    cpu_after = ingress.cpu_times()
    rss_busy = ingress.memory_info().rss
    frames = [c.received_frames - b for c, b in zip(callers, frames_before, strict=True)]
    for task in talkers:
        task.cancel()
    round_trips: list[float] = []
    for caller in callers:
        heard = sorted(caller.onsets)
        for sent in caller.source.sent_onsets:
            if sent < began:
                continue
            later = [h for h in heard if sent < h < sent + 1.5]
            if later:
                round_trips.append(later[0] - sent)
    added = await asyncio.to_thread(_histograms, up.port, "callray_ingress_added_seconds")
    for caller in callers:
        await caller.hang_up()
    cpu_s = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    per_call = cpu_s / elapsed / max(1, len(callers))
    expected = elapsed * 50
    return {
        "calls": calls,
        "answered": len(callers),
        "ingress_added": added,
        "seconds": round(elapsed, 1),
        "ingress_cpu_cores": round(cpu_s / elapsed, 3),
        "ingress_cpu_per_call_pct": round(per_call * 100, 2),
        "calls_per_ingress_core": round(1 / per_call, 1) if per_call else None,
        "frames_received_of_expected": round(sum(frames) / (expected * len(callers)), 4),
        "round_trip": _summary_ms(round_trips),
        "ingress_rss_mb_idle": round(rss_idle / 2**20, 1),
        "rss_per_call_mb": round((rss_busy - rss_idle) / 2**20 / max(1, len(callers)), 2),
    }


async def transport_phase(args: argparse.Namespace) -> dict[str, Any]:
    """``OpenAIRealtimeWebRTC.connect()`` against the local model in this process: offer,
    answer, ICE, DTLS, the channel, the session.updated ack; then with the ack withheld, the
    fallback's timing (``ack_timeout_s`` 5)."""
    import math

    from services.config import LocalModelSettings
    from services.localmodel.server import LocalModelServer
    from services.realtime.transports.webrtc import OpenAIRealtimeWebRTC

    settings = LocalModelSettings(port=0, mode="echo")
    connects: list[float] = []
    fallbacks: list[float] = []
    async with LocalModelServer(settings, ice_addresses=("127.0.0.1",)) as model:
        for _ in range(args.connects):
            transport = OpenAIRealtimeWebRTC(base_url=model.calls_url)
            began = time.monotonic()
            await transport.connect()
            connects.append(time.monotonic() - began)
            await transport.close()
        model.delay_session_updated(math.inf)
        for _ in range(args.fallbacks):
            transport = OpenAIRealtimeWebRTC(base_url=model.calls_url)
            began = time.monotonic()
            await transport.connect()
            fallbacks.append(time.monotonic() - began)
            await transport.close()
    return {
        "connect": _summary_ms(connects),
        "fallback_s": [round(f, 3) for f in fallbacks],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=10, help="scripted phase")
    parser.add_argument("--loads", default="5,10", help="echo phase: concurrent calls")
    parser.add_argument("--rate", type=float, default=10.0, help="offers a second")
    parser.add_argument("--duration", type=float, default=20.0, help="echo phase, per load")
    parser.add_argument("--phases", default="scripted,echo,transport")
    parser.add_argument("--connects", type=int, default=50, help="transport phase")
    parser.add_argument("--fallbacks", type=int, default=3, help="transport phase")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from services import aio

    env = {
        "CALLRAY_WEBRTC_ICE_ADDRESSES": "127.0.0.1",
        "CALLRAY_WEBRTC_OFFERS_PER_SOURCE_S": "1000",  # every caller here is 127.0.0.1
    }
    result: dict[str, Any] = {
        "benchmark": "webrtc",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "system": "callray up (its defaults), aiortc callers in the benchmark's process",
    }
    phases = args.phases.split(",")
    if "scripted" in phases:
        up = Up(
            Path(tempfile.mkdtemp(prefix="callray-webrtc-")),
            {**env, "CALLRAY_MODEL_MODE": "scripted"},
        )
        try:
            up.wait_ready()
            time.sleep(2.0)
            result["scripted"] = aio.run(scripted_phase(up, args))
            print(json.dumps(result["scripted"]), flush=True)
        finally:
            up.stop()
    if "transport" in phases:
        from services.webrtc import ice

        ice.install(("127.0.0.1",))
        result["transport"] = aio.run(transport_phase(args))
        print(json.dumps(result["transport"]), flush=True)
    result["echo"] = []
    for load in (int(n) for n in args.loads.split(",") if "echo" in phases):
        up = Up(
            Path(tempfile.mkdtemp(prefix="callray-webrtc-")), {**env, "CALLRAY_MODEL_MODE": "echo"}
        )
        try:
            up.wait_ready()
            time.sleep(2.0)
            run = aio.run(echo_phase(up, args, load))
        finally:
            up.stop()
        result["echo"].append(run)
        print(json.dumps(run), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
