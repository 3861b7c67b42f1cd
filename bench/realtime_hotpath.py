"""Hot-path micro-benchmark of the Realtime core, without sockets.

Measures events per CPU-second for the two per-frame paths of every call:

* inbound: parse and dispatch ``response.output_audio.delta`` carrying 20 ms of μ-law (160 bytes)
  through the transport's protocol core: JSON decode, typed event, base64 decode, playback
  bookkeeping and the ``audio`` event to a listener;
* outbound: ``send_audio`` of a 20 ms μ-law frame: build and serialise
  ``input_audio_buffer.append`` and queue it for the socket writer, as the transport does.

Both run through ``OpenAIRealtimeWebSocket`` itself, with no socket behind it.

Run: ``.venv/bin/python -m bench.realtime_hotpath [--events N]``. Writes
``bench/results/realtime_hotpath.json``. Target (issue 2): >= 100,000 events per CPU-second
each way.
"""

from __future__ import annotations

import argparse
import base64
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from services.realtime.transports.websocket import OpenAIRealtimeWebSocket

FRAME = bytes(range(160))  # 20 ms of 8 kHz μ-law
RESULTS = Path(__file__).parent / "results" / "realtime_hotpath.json"
TARGET = 100_000


def _connected_transport() -> OpenAIRealtimeWebSocket:
    """The real WebSocket transport, marked connected, with no socket behind its outbox."""
    transport = OpenAIRealtimeWebSocket()
    transport._socket = object()  # type: ignore[assignment]
    transport._status = "connected"
    return transport


def _delta_text(n: int) -> str:
    return json.dumps(
        {
            "type": "response.output_audio.delta",
            "event_id": f"event_{n}",
            "response_id": "resp_1",
            "item_id": "item_1",
            "output_index": 0,
            "content_index": 0,
            "delta": base64.b64encode(FRAME).decode(),
        }
    )


def bench_inbound(events: int) -> float:
    transport = _connected_transport()
    transport.receive_text(
        json.dumps(
            {
                "type": "session.updated",
                "event_id": "e",
                "session": {
                    "type": "realtime",
                    "audio": {"output": {"format": {"type": "audio/pcmu"}}},
                },
            }
        )
    )
    received = 0

    def on_audio(audio: Any) -> None:
        nonlocal received
        received += len(audio.data)

    transport.on("audio", on_audio)
    texts = [_delta_text(n) for n in range(1000)]
    start = time.process_time()
    for n in range(events):
        transport.receive_text(texts[n % 1000])
    elapsed = time.process_time() - start
    assert received == events * len(FRAME), "audio was not delivered"
    return events / elapsed


def bench_outbound(events: int) -> float:
    transport = _connected_transport()
    start = time.process_time()
    for _ in range(events):
        transport.send_audio(FRAME)
    elapsed = time.process_time() - start
    # The writer task would now send these texts; nothing is lost on the way to it.
    assert len(transport._outbox) == events
    transport._outbox.clear()
    return events / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    inbound = [bench_inbound(args.events) for _ in range(args.repeats)]
    outbound = [bench_outbound(args.events) for _ in range(args.repeats)]
    result = {
        "benchmark": "realtime_hotpath",
        "date": time.strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "events_per_run": args.events,
        "repeats": args.repeats,
        "inbound_audio_delta_events_per_cpu_s": {
            "median": round(statistics.median(inbound)),
            "min": round(min(inbound)),
            "max": round(max(inbound)),
        },
        "outbound_append_events_per_cpu_s": {
            "median": round(statistics.median(outbound)),
            "min": round(min(outbound)),
            "max": round(max(outbound)),
        },
        "target_events_per_cpu_s": TARGET,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
