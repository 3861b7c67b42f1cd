"""Hot-path micro-benchmark of the load generator's simulated Twilio caller, without sockets.

Measures CPU-µs per *call-frame*: everything one simulated call does in 20 ms at steady state
against callray in echo mode (what ``bench/calls.py`` runs), through ``TwilioCaller`` itself:

* ``tick``: one ``media`` message out (a tagged 160-byte μ-law frame, base64 in JSON) and the
  echo of the ``mark`` whose audio finished playing in the last period;
* ``receive``: the echo of a frame (a ``media`` message: parse, base64, tag scan, echo ledger,
  playback) and the ``mark`` the gateway sends after it.

The replies are what callray's gateway encodes (``TwilioSerializer``), recorded once from the
frames a caller sends. The calls are interleaved frame by frame like concurrent calls, and
drain to their ``stop`` at the end; every call must come out with all frames echoed and all
marks answered, or the run fails. Single codec operations are timed too, for the breakdown.

With ``--sockets-calls N`` it also measures the whole load generator with its sockets:
``run_load`` with N calls in this process against an echo peer in a child process (aiohttp on
loopback, answering like callray in echo mode: each frame's audio back, then a mark), and
records this process's CPU per call-frame and cores used. Only the load generator is in this
process, so that figure is its own; everything else on the box still competes for the cores.

Run: ``.venv/bin/python -m bench.loadgen_hotpath [--sockets-calls 100] [--label after]``.
Writes the figures under ``label`` in ``bench/results/loadgen_hotpath.json``, keeping the other
labels (``before`` was taken with this same script on a checkout of the code before the
optimisation).
"""

from __future__ import annotations

import argparse
import base64
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.loadgen.audio import FRAME_BYTES, SILENCE, tone_ulaw
from services.loadgen.frame_tags import TagScanner, tag_frame
from services.loadgen.script import CallerScript
from services.loadgen.twilio_caller import TwilioCaller
from services.loadgen.wire import StreamIdentity, TwilioCallerCodec
from services.telephony.media_streams import MediaReceived, TwilioSerializer

RESULTS = Path(__file__).parent / "results" / "loadgen_hotpath.json"
IDS = StreamIdentity("AC" + "0" * 32, "CA" + "1" * 32, "MZ" + "2" * 32)
PARAMETERS = {"token": "t0k"}
TICK_S = 0.02
ECHO_DELAY_S = 0.006  # when a frame's echo and its mark arrive after the frame was sent
APP = TwilioSerializer()  # only its encoders, which are stateless
TARGET_CHANGE = -0.30  # CPU per call-frame at 100 calls, with sockets, against "before"


def _script(frames: int) -> CallerScript:
    # No opening speech and no barge-in: every frame is a tagged silent frame, the steady state.
    return CallerScript(duration_s=frames * TICK_S, speech=tone_ulaw(1000), drain_s=1.0)


def _mark_name(k: int) -> str:
    # The shape of the gateway's names (services/telephony/twilio_playback.py, ``_mark``).
    return f"item_C0ffee5eed:{(k + 1) * 20}:g1:m{k + 1}"


def record_replies(frames: int) -> list[tuple[str, str]]:
    """For each frame a caller sends, what callray in echo mode sends back: its audio, a mark."""
    caller = TwilioCaller(IDS, _script(frames), PARAMETERS)
    ingress = TwilioSerializer()
    for message in caller.open(0.0):
        ingress.parse(message)
    replies = []
    for k in range(frames):
        for message in caller.tick(k * TICK_S):
            event = ingress.parse(message)
            if isinstance(event, MediaReceived):
                replies.append(
                    (
                        APP.encode_media(IDS.stream_sid, event.payload),
                        APP.encode_mark(IDS.stream_sid, _mark_name(k)),
                    )
                )
    assert len(replies) == frames
    return replies


def bench_calls(calls: int, replies: list[tuple[str, str]]) -> float:
    """CPU-µs per call-frame of ``calls`` interleaved calls of ``len(replies)`` frames each."""
    frames = len(replies)
    callers = [TwilioCaller(IDS, _script(frames), PARAMETERS) for _ in range(calls)]
    for caller in callers:
        caller.open(0.0)
    sent = 0
    start = time.process_time()
    for k, (media, mark) in enumerate(replies):
        now = k * TICK_S
        echo_at = now + ECHO_DELAY_S
        for caller in callers:
            sent += len(caller.tick(now))
            caller.receive(media, echo_at)
            caller.receive(mark, echo_at)
    k = frames
    while not all(caller.done for caller in callers):
        for caller in callers:
            sent += len(caller.tick(k * TICK_S))
        k += 1
    elapsed = time.process_time() - start
    for caller in callers:
        stats, echo = caller.stats, caller.stats.echo
        assert echo is not None and caller.ended_by == "caller"
        assert stats.frames_sent == echo.echoed == frames, "a frame was not echoed"
        assert stats.marks_echoed == stats.marks_received == frames, "a mark was not answered"
        assert (echo.lost(), echo.reordered, echo.duplicates, echo.unknown) == (0, 0, 0, 0)
    # media + mark echo per frame, connected/start not counted, stop once per call
    assert sent == calls * (2 * frames + 1)
    return elapsed / (calls * frames) * 1e6


def _per_op_us(operation: Callable[[int], object], count: int) -> float:
    start = time.process_time()
    for n in range(count):
        operation(n)
    return (time.process_time() - start) / count * 1e6


def bench_operations(count: int, replies: list[tuple[str, str]]) -> dict[str, float]:
    """CPU-µs of single codec operations (public API only, so old and new code compare)."""
    codec = TwilioCallerCodec(IDS)
    silent = bytes([SILENCE]) * FRAME_BYTES
    tagged = [tag_frame(silent, n) for n in range(len(replies))]
    names = [_mark_name(n) for n in range(len(replies))]
    size = len(replies)
    scanner = TagScanner()
    return {
        "tag_frame": _per_op_us(lambda n: tag_frame(silent, n), count),
        "encode_media": _per_op_us(lambda n: codec.media(n + 1, n * 20, tagged[n % size]), count),
        "encode_mark": _per_op_us(lambda n: codec.mark(names[n % size]), count),
        "parse_media": _per_op_us(lambda n: codec.parse(replies[n % size][0]), count),
        "parse_mark": _per_op_us(lambda n: codec.parse(replies[n % size][1]), count),
        "scan_tags": _per_op_us(lambda n: scanner.feed(tagged[n % size]), count),
    }


def run_peer() -> None:
    """The echo peer (``--peer``): prints its port, serves until killed."""
    import asyncio

    from aiohttp import WSMsgType, web

    from services import aio
    from services.telephony.twiml import connect_stream_twiml

    async def voice(request: web.Request) -> web.Response:
        twiml = connect_stream_twiml(f"ws://{request.host}/twilio/media", PARAMETERS)
        return web.Response(text=twiml, content_type="text/xml")

    async def media(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        sid, frames = "", 0
        async for message in socket:
            if message.type is not WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if data["event"] == "start":
                sid = data["streamSid"]
            elif data["event"] == "media":
                audio = base64.b64decode(data["media"]["payload"])
                await socket.send_str(APP.encode_media(sid, audio))
                await socket.send_str(APP.encode_mark(sid, _mark_name(frames)))
                frames += 1
            elif data["event"] == "stop":
                break
        await socket.close()
        return socket

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/twilio/voice", voice)
        app.router.add_get("/twilio/media", media)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    aio.run(serve())


def bench_sockets(calls: int, duration_s: float) -> dict[str, Any]:
    """The load generator's own CPU for ``calls`` calls of ``duration_s`` against the peer."""
    from services import aio
    from services.loadgen import LoadOptions, run_load

    peer = subprocess.Popen(
        [sys.executable, "-m", "bench.loadgen_hotpath", "--peer"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert peer.stdout is not None
        port = int(peer.stdout.readline())
        options = LoadOptions(
            base_url=f"http://127.0.0.1:{port}",
            calls=calls,
            ramp_s=min(5.0, calls / 20),  # as bench/calls.py
            duration_s=duration_s,
            progress=False,
        )
        wall, cpu = time.monotonic(), time.process_time()
        report = aio.run(run_load(options)).to_dict()
        wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    finally:
        peer.kill()
        peer.wait()
    frames = report["frames"]
    assert report["calls"]["completed"] == calls and frames["lost"] == 0, report["calls"]
    return {
        "cpu_us_per_call_frame": cpu / frames["sent"] * 1e6,
        "cores": cpu / wall,
        "echo_latency_p99_ms": report["echo_latency_ms"]["p99"],
        "max_tick_lag_ms": report["loadgen"]["max_tick_lag_ms"],
    }


def add_changes(result: dict[str, Any]) -> None:
    """After vs before, when both are recorded: the relative change of CPU per call-frame."""
    changes = {}
    for part in ("sans_io", "sockets"):
        try:
            before, after = (
                result[label][part]["cpu_us_per_call_frame"]["median"]
                for label in ("before", "after")
            )
        except KeyError:
            continue
        changes[part] = round(after / before - 1, 3)
    result["cpu_per_call_frame_change"] = changes
    result["target_change_with_sockets_at_100_calls"] = TARGET_CHANGE


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--frames", type=int, default=3000, help="per call; 3000 is 60 s")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sockets-calls", type=int, default=0, help="0: skip")
    parser.add_argument("--sockets-duration", type=float, default=20.0)
    parser.add_argument("--sockets-repeats", type=int, default=3)
    parser.add_argument("--label", default="after")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        run_peer()
        return
    replies = record_replies(args.frames)
    per_frame = [bench_calls(args.calls, replies) for _ in range(args.repeats)]
    operations = [bench_operations(50_000, replies) for _ in range(args.repeats)]
    figures: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "sans_io": {
            "calls": args.calls,
            "frames_per_call": args.frames,
            "repeats": args.repeats,
            "cpu_us_per_call_frame": _summary(per_frame),
            "cpu_us_per_operation_median": {
                name: round(statistics.median(run[name] for run in operations), 3)
                for name in operations[0]
            },
        },
    }
    if args.sockets_calls:
        runs = [
            bench_sockets(args.sockets_calls, args.sockets_duration)
            for _ in range(args.sockets_repeats)
        ]
        figures["sockets"] = {
            "calls": args.sockets_calls,
            "duration_s": args.sockets_duration,
            "repeats": args.sockets_repeats,
        } | {name: _summary([run[name] for run in runs]) for name in runs[0]}
    result: dict[str, Any] = {"benchmark": "loadgen_hotpath"}
    if args.out.exists():
        result |= json.loads(args.out.read_text())
    result[args.label] = figures
    add_changes(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({args.label: figures}, indent=2))


if __name__ == "__main__":
    main()
