"""Hot-path benchmark of the local model server in echo mode: CPU per 20 ms append.

Two measurements of one workload:

* **engine** (no sockets): CPU-µs per ``input_audio_buffer.append`` through the sans-I/O engine,
  fed the way the server's connection handler (``services/localmodel/server.py``) feeds it: the
  frame is parsed and handled, speech requests are collected, the next deadline is read, and
  every event the append produced is serialised to the JSON text that would go on the socket.
  In echo mode that is at least one ``response.output_audio.delta`` per append, plus the VAD's
  turn events.
* **server** (``--server-seconds``, 0 to skip): the real server process (``callray model --mode
  echo``, on uvloop) with one WebSocket client per session in this process over loopback; the
  server's own CPU time (user + system) per append while all sessions stream.

Each session gets the session of a phone leg (``phone_config("audio/pcmu")`` of the session
host: μ-law both ways, server VAD, transcription) and sends one 20 ms μ-law append (160 bytes,
base64 in JSON, as callray's transport serialises it) every 20 ms. The audio is what the load
generator sends: near-silence (silence carrying the 12-byte sequence tags of
``services/loadgen/frame_tags.py``), with 600 ms of a -12 dBFS tone every 10 s per session,
staggered across sessions, so each session has one VAD turn (speech started, stopped, commit,
transcript, echo response closed and reopened) per 10 s.

Run: ``.venv/bin/python -m bench.localmodel_hotpath [--sessions N]``. Writes the ``current``
entry of ``bench/results/localmodel_hotpath.json`` and keeps its ``baseline`` entry: the code
before the hot-path work (commit cdb01f1), measured by this same script::

    git archive cdb01f1 services | tar -x -C /tmp/base && cp -r bench /tmp/base/
    cd /tmp/base && /work/main/.venv/bin/python -m bench.localmodel_hotpath --baseline \\
        --out /work/main/bench/results/localmodel_hotpath.json

``--compare-with DIR --pairs N`` compares the server process of another checkout (``DIR``, e.g.
the commit before a change to the server) with this tree's: N pairs of runs, interleaved and in
alternating order, as this box drifts by ~15 % an hour; the ratio of each pair's figures is
what to read. It writes the ``server_comparison`` entry (engine runs are skipped)::

    git archive 506d526 | tar -x -C /tmp/before
    .venv/bin/python -m bench.localmodel_hotpath --compare-with /tmp/before --pairs 6
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
from websockets.asyncio.client import connect

from services import aio
from services.embedded.model_process import ModelProcess
from services.loadgen.audio import FRAME_BYTES, SILENCE, tone_ulaw
from services.loadgen.frame_tags import tag_frame
from services.localmodel.engine import RealtimeEngine
from services.localmodel.speech import SpeechSynthesizer
from services.realtime.client_events import encode_audio_append
from services.runtime.call_session import phone_config

RESULTS = Path(__file__).parent / "results" / "localmodel_hotpath.json"
FRAME_S = 0.02
TURN_EVERY_FRAMES = 500  # 10 s
SPEECH_FRAMES = 30  # 600 ms
TAGGED_FRAMES = 1000  # distinct near-silent frames, reused round robin
SERVER_WARMUP_S = 3.0


def _frames_out(engine: RealtimeEngine) -> list[str]:
    """The texts the server sends after a frame. The baseline's engine has no ``take_frames``:
    its server serialised every event dict with ``json.dumps``."""
    take_frames = getattr(engine, "take_frames", None)
    if take_frames is None:
        return [json.dumps(event) for event in engine.take_events()]
    texts: list[str] = take_frames()
    return texts


def _serve_frame(engine: RealtimeEngine, text: str, now: float) -> list[str]:
    """One client frame, as the server's connection handler processes it (no observer)."""
    engine.receive_frame(text, now)
    engine.speech_requests()
    out = _frames_out(engine)
    engine.next_deadline()
    return out


class Workload:
    """The append texts, and which one each session sends at each 20 ms step."""

    def __init__(self) -> None:
        silent = bytes([SILENCE]) * FRAME_BYTES
        self.quiet = [encode_audio_append(tag_frame(silent, n)) for n in range(TAGGED_FRAMES)]
        tone = tone_ulaw(SPEECH_FRAMES * 20)
        self.loud = [
            encode_audio_append(tone[i : i + FRAME_BYTES]) for i in range(0, len(tone), FRAME_BYTES)
        ]
        session = {"type": "realtime", "model": "gpt-realtime", **phone_config("audio/pcmu")}
        self.update = json.dumps({"type": "session.update", "session": session})

    def text(self, session: int, step: int) -> str:
        turn_step = (step - session * 97) % TURN_EVERY_FRAMES
        return self.loud[turn_step] if turn_step < SPEECH_FRAMES else self.quiet[step % 1000]


def bench_engine(sessions: int, steps: int) -> tuple[float, Counter[str], int]:
    """(CPU-µs per append, events sent by type, bytes sent) for ``steps`` frames per session."""
    work = Workload()
    speech = SpeechSynthesizer(None)
    engines = []
    for _ in range(sessions):
        engine = RealtimeEngine(mode="echo", speech=speech, unix_time=int(time.time()))
        engine.receive_frame(work.update, 0.0)
        _frames_out(engine)
        engines.append(engine)
    plan = [[work.text(s, step) for step in range(steps)] for s in range(sessions)]
    sent: list[str] = []
    start = time.process_time()
    for step in range(steps):
        now = step * FRAME_S
        for engine, texts in zip(engines, plan, strict=True):
            sent += _serve_frame(engine, texts[step], now)
    elapsed = time.process_time() - start
    counts = Counter(json.loads(text)["type"] for text in sent)
    assert counts["response.output_audio.delta"] == sessions * steps, "an append was not echoed"
    assert counts["error"] == 0, "the engine rejected an event"
    return elapsed / (sessions * steps) * 1e6, counts, sum(map(len, sent))


async def _server_run(url: str, pid: int, sessions: int, seconds: float) -> dict[str, Any]:
    work = Workload()
    server = psutil.Process(pid)
    start = time.monotonic() + 1.0
    stop = start + SERVER_WARMUP_S + seconds
    received = Counter[str]()

    async def caller(session: int) -> None:
        async with connect(url, compression=None, max_size=None) as ws:
            await ws.send(work.update)

            async def listen() -> None:
                async for message in ws:
                    received[json.loads(message)["type"]] += 1

            listener = asyncio.create_task(listen())
            at, step = start + session % 50 * 0.0004, 0  # spread within each 20 ms
            while at < stop:
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                await ws.send(work.text(session, step))
                at, step = at + FRAME_S, step + 1
            await asyncio.sleep(0.5)
            listener.cancel()

    callers = [asyncio.create_task(caller(s)) for s in range(sessions)]
    await asyncio.sleep(start + SERVER_WARMUP_S - time.monotonic())
    before, t0 = server.cpu_times(), time.monotonic()
    await asyncio.sleep(seconds)
    after, t1 = server.cpu_times(), time.monotonic()
    await asyncio.gather(*callers)
    user, system = after.user - before.user, after.system - before.system
    appends = sessions * (t1 - t0) / FRAME_S
    return {
        "server_cpu_us_per_append": round((user + system) / appends * 1e6, 1),
        "server_cores": round((user + system) / (t1 - t0), 3),
        "user_share": round(user / (user + system), 2),
        "deltas_received": received["response.output_audio.delta"],
        "errors_received": received["error"],
    }


@contextlib.contextmanager
def _working_directory(tree: Path | None) -> Iterator[None]:
    """Where ``python -m services.cli`` finds ``services``: another checkout, or this one."""
    if tree is None:
        yield
        return
    here = Path.cwd()
    os.chdir(tree)
    try:
        yield
    finally:
        os.chdir(here)


def bench_server(sessions: int, seconds: float, tree: Path | None = None) -> dict[str, Any]:
    model = ModelProcess(mode="echo", log=Path(tempfile.mkdtemp()) / "model.log")
    with _working_directory(tree):
        url = model.start()
    assert model.pid is not None
    try:
        return aio.run(_server_run(url, model.pid, sessions, seconds))
    finally:
        model.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0, help="virtual time per engine run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--server-seconds", type=float, default=30.0, help="0: skip")
    parser.add_argument("--server-repeats", type=int, default=3)
    parser.add_argument("--baseline", action="store_true", help="record as the baseline entry")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--compare-with", type=Path, help="another checkout's server (before)")
    parser.add_argument("--pairs", type=int, default=6)
    args = parser.parse_args()
    if args.compare_with is not None:
        _write(args.out, {"server_comparison": compare(args)})
        return
    steps = round(args.seconds / FRAME_S)
    runs = [bench_engine(args.sessions, steps) for _ in range(args.repeats)]
    us = [r[0] for r in runs]
    appends = args.sessions * steps
    entry: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "engine_cpu_us_per_append": {
            "median": round(statistics.median(us), 2),
            "min": round(min(us), 2),
            "max": round(max(us), 2),
        },
        "engine_appends_per_cpu_s": round(1e6 / statistics.median(us)),
        "server_events_per_append": round(sum(runs[0][1].values()) / appends, 4),
        "server_bytes_per_append": round(runs[0][2] / appends, 1),
        "server_events": dict(sorted(runs[0][1].items())),
    }
    if args.server_seconds > 0:
        server = [
            bench_server(args.sessions, args.server_seconds) for _ in range(args.server_repeats)
        ]
        per_append = [s["server_cpu_us_per_append"] for s in server]
        entry["server_process"] = {
            "cpu_us_per_append_median": statistics.median(per_append),
            "runs": server,
        }
    result = {
        "benchmark": "localmodel_hotpath",
        "sessions": args.sessions,
        "engine_appends_per_run": appends,
        "engine_repeats": args.repeats,
        "server_seconds_per_run": args.server_seconds,
        "baseline" if args.baseline else "current": entry,
    }
    _write(args.out, result)


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Server CPU per append of ``--compare-with``'s tree (before) and this one (after), in
    ``--pairs`` interleaved pairs."""
    before: list[float] = []
    after: list[float] = []
    for pair in range(args.pairs):
        order = [(args.compare_with, before), (None, after)]
        for tree, runs in order if pair % 2 == 0 else order[::-1]:
            run = bench_server(args.sessions, args.server_seconds, tree)
            assert run["errors_received"] == 0 and run["deltas_received"] > 0
            runs.append(run["server_cpu_us_per_append"])
            print(f"pair {pair}: {'before' if tree else 'after'} {runs[-1]} us", flush=True)
    ratios = [round(a / b, 3) for a, b in zip(after, before, strict=True)]
    return {
        "date": time.strftime("%Y-%m-%d"),
        "before_tree": str(args.compare_with),
        "sessions": args.sessions,
        "server_seconds_per_run": args.server_seconds,
        "before_cpu_us_per_append": before,
        "after_cpu_us_per_append": after,
        "after_over_before": ratios,
        "after_over_before_median": statistics.median(ratios),
    }


def _write(out: Path, update: dict[str, Any]) -> None:
    result: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    result.update(update)
    if "baseline" in result and "current" in result:
        result["reduction_pct"] = _reductions(result["baseline"], result["current"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _reductions(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    def cut(old: float, new: float) -> float:
        return round(100 * (1 - new / old), 1)

    key = "engine_cpu_us_per_append"
    reductions = {"engine_cpu_per_append": cut(before[key]["median"], after[key]["median"])}
    if "server_process" in before and "server_process" in after:
        old, new = (e["server_process"]["cpu_us_per_append_median"] for e in (before, after))
        reductions["server_cpu_per_append"] = cut(old, new)
    return reductions


if __name__ == "__main__":
    main()
