"""The floor of the caller leg: what receiving Twilio's 50 media frames per second per call costs
a server that does nothing else.

A bare aiohttp WebSocket server (the library the ingress uses, on uvloop) parses every frame with
callray's Twilio serializer and drops it; N clients in this process send Twilio-shaped ``media``
frames on the 20 ms grid, their phases spread over the tick. Only the server's CPU is counted.
These are the messages no setting can remove; ``bench/calls.py``'s figures are read against it.

    .venv/bin/python -m bench.floor --calls 25 --seconds 30

Writes ``bench/results/floor.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "floor.json"


def _serve(port: int, ready: Any) -> None:
    from aiohttp import WSMsgType, web

    from services import aio
    from services.telephony.media_streams import DEFAULT_MAX_MESSAGE_BYTES, TwilioSerializer

    async def media(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=DEFAULT_MAX_MESSAGE_BYTES)  # as the ingress
        await ws.prepare(request)
        serializer = TwilioSerializer()
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                serializer.parse(msg.data)
        return ws

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/media", media)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.sleep(1e9)

    aio.run(main())


async def _callers(port: int, calls: int, seconds: float) -> None:
    import websockets

    from services.loadgen.wire import StreamIdentity, TwilioCallerCodec

    loop = asyncio.get_running_loop()
    begin = loop.time()
    audio = b"\xff" * 160

    async def caller(n: int) -> None:
        # Twilio's messages, written by the load generator's codec (as in bench/calls.py).
        codec = TwilioCallerCodec(StreamIdentity.generate("AC" + "0" * 32))
        async with websockets.connect(f"ws://127.0.0.1:{port}/media", compression=None) as ws:
            await ws.send(codec.connected())
            await ws.send(codec.start({}))
            await asyncio.sleep(n * 0.02 / calls)
            t0, k = loop.time(), 0
            while loop.time() - begin < seconds:
                k += 1
                await ws.send(codec.media(k, (k - 1) * 20, audio))
                await asyncio.sleep(max(0.0, t0 + k * 0.02 - loop.time()))

    await asyncio.gather(*(caller(n) for n in range(calls)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=25)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ready = multiprocessing.Event()
    server = multiprocessing.Process(target=_serve, args=(port, ready), daemon=True)
    server.start()
    ready.wait(30)
    proc = psutil.Process(server.pid)

    async def measure() -> float:
        load = asyncio.create_task(_callers(port, args.calls, args.seconds))
        await asyncio.sleep(3.0)  # connected and on the grid
        t = proc.cpu_times()
        cpu0, wall0 = t.user + t.system, time.monotonic()
        await asyncio.sleep(args.seconds - 6.0)
        t = proc.cpu_times()
        cores = (t.user + t.system - cpu0) / (time.monotonic() - wall0)
        await load
        return cores

    from services import aio

    cores = aio.run(measure())
    server.terminate()
    result = {
        "benchmark": "floor",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "calls": args.calls,
        "server_cores": round(cores, 4),
        "cpu_s_per_call_minute": round(cores * 60 / args.calls, 4),
        "cpu_us_per_inbound_frame": round(cores / (args.calls * 50) * 1e6, 1),
    }
    print(json.dumps(result))
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
