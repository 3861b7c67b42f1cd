"""The floor of a whole call: the simplest relay between a Twilio media stream and the model.

One plain process (aiohttp on uvloop, no Ray, no channel, no session logic, no metrics) does
only what no design can avoid for a Twilio call in echo mode, with callray's default message
counts: per 20 ms caller frame one ``input_audio_buffer.append`` to the model; per audio delta
one ``media`` to the caller, a mark after every 100 ms of it; ``clear`` on ``speech_started``.
The same simulated callers (``callray loadtest``'s, echo tagging, 20% barging in) and the same
local model in echo mode as ``bench/calls.py``, so its CPU per call-minute is the cost of the
messages themselves, the figure callray's is read against (``bench/README.md``).

    unshare -n sh -c 'ip link set lo up; .venv/bin/python -m bench.relay --loads 25,50,100'

Writes ``bench/results/relay.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "relay.json"
MARK_BYTES = 800  # 100 ms of 8 kHz mu-law, callray's CALLRAY_MARK_MS default


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(port: int, model_url: str) -> None:
    from services import aio

    async def main() -> None:
        await start_relay(port, model_url)
        await asyncio.Event().wait()

    aio.run(main())


async def start_relay(port: int, model_url: str) -> Any:
    """Serve the relay on the running loop: ``POST /twilio/voice`` answers TwiML,
    ``/twilio/media`` relays. Returns the aiohttp runner."""
    import orjson
    import pybase64
    import websockets
    from aiohttp import WSMsgType, web

    from services.realtime.client_events import encode_audio_append
    from services.runtime.call_session import phone_config
    from services.telephony.media_streams import (
        DEFAULT_MAX_MESSAGE_BYTES,
        MarkReceived,
        MediaReceived,
        StreamStarted,
        StreamStopped,
        TwilioSerializer,
    )
    from services.telephony.twiml import connect_stream_twiml

    session_update = json.dumps(
        {"type": "session.update", "session": {"type": "realtime", **phone_config("audio/pcmu")}}
    )

    async def voice(request: web.Request) -> web.Response:
        url = f"ws://{request.host}/twilio/media"
        return web.Response(text=connect_stream_twiml(url, {}), content_type="text/xml")

    async def from_model(model: Any, ws: web.WebSocketResponse, ser: TwilioSerializer) -> None:
        unmarked, marks = 0, 0
        async for text in model:
            event = orjson.loads(text)
            kind = event["type"]
            if kind == "response.output_audio.delta":
                audio = pybase64.b64decode(event["delta"])
                stream = ser.stream_id or ""
                await ws.send_str(ser.encode_media(stream, audio))
                unmarked += len(audio)
                if unmarked >= MARK_BYTES:
                    marks, unmarked = marks + 1, 0
                    await ws.send_str(ser.encode_mark(stream, f"m{marks}"))
            elif kind == "input_audio_buffer.speech_started":
                await ws.send_str(ser.encode_clear(ser.stream_id or ""))
                unmarked = 0

    async def media(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=DEFAULT_MAX_MESSAGE_BYTES)
        await ws.prepare(request)
        ser = TwilioSerializer()
        model: Any = None
        reader: asyncio.Task[None] | None = None
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    break
                event = ser.parse(msg.data)
                if isinstance(event, MediaReceived) and model is not None:
                    await model.send(encode_audio_append(event.payload))
                elif isinstance(event, StreamStarted):
                    model = await websockets.connect(model_url, compression=None, proxy=None)
                    await model.send(session_update)
                    reader = asyncio.create_task(from_model(model, ws, ser))
                elif isinstance(event, MarkReceived):
                    pass  # playback accounting would read it; nothing to send
                elif isinstance(event, StreamStopped):
                    break
        finally:
            if reader is not None:
                reader.cancel()
            if model is not None:
                await model.close()
        return ws

    app = web.Application()
    app.router.add_post("/twilio/voice", voice)
    app.router.add_get("/twilio/media", media)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loads", default="25,50,100")
    parser.add_argument("--duration", type=float, default=45.0)
    parser.add_argument("--barge-in-rate", type=float, default=0.2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import multiprocessing

    from services import aio
    from services.embedded.model_process import ModelProcess
    from services.loadgen import LoadOptions, run_load

    scratch = Path(tempfile.mkdtemp(prefix="callray-relay-"))
    model = ModelProcess(mode="echo", log=scratch / "model.log")
    model_url = model.start()
    port = _free_port()
    relay = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(port, model_url), daemon=True
    )
    relay.start()
    result: dict[str, Any] = {
        "benchmark": "relay",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "system": "one-process Twilio <-> model relay (aiohttp + websockets on uvloop)",
        "runs": [],
    }
    try:
        time.sleep(3.0)
        procs = {
            "relay": psutil.Process(relay.pid),
            "local model": psutil.Process(model.pid),
            "load generator": psutil.Process(),
        }
        for load in [int(x) for x in args.loads.split(",")]:
            time.sleep(2.0)
            cpu0 = {role: _cpu(p) for role, p in procs.items()}
            wall0 = time.monotonic()
            options = LoadOptions(
                base_url=f"http://127.0.0.1:{port}",
                calls=load,
                ramp_s=min(5.0, load / 20),
                duration_s=args.duration,
                barge_in_rate=args.barge_in_rate,
                seed=load,
            )
            report = aio.run(run_load(options)).to_dict()
            wall = time.monotonic() - wall0
            cores = {role: round((_cpu(p) - cpu0[role]) / wall, 3) for role, p in procs.items()}
            call_minutes = load * args.duration / 60.0
            run = {
                "calls": load,
                "duration_s": args.duration,
                "completed": sum(1 for c in report["per_call"] if c["outcome"] == "completed"),
                "frames": report["frames"],
                "added_latency_ms": report["echo_latency_ms"],
                "cpu_s_per_call_minute": round(cores["relay"] * wall / call_minutes, 4),
                "cores_used": cores,
            }
            result["runs"].append(run)
            print(json.dumps(run), flush=True)
    finally:
        relay.terminate()
        model.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
