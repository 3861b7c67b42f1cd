"""The per-frame codecs against the well-kept libraries that could replace them.

Each per-frame job done three ways, checked to give the same result: the standard library
(``json``, ``base64``, a string template), ``orjson`` and ``pybase64``, and callray's code as it
is (which chose by these figures: orjson and pybase64 to parse, templates with pybase64 to
write):

* Twilio ``media`` in (160 bytes of μ-law, as Twilio sends): ``json.loads`` + ``b64decode``
  against ``orjson.loads`` + ``pybase64.b64decode``; and the serializer's whole ``parse``;
* Twilio ``media`` out (100 ms, 800 bytes): the template against ``orjson.dumps``;
* ``input_audio_buffer.append`` out (20 ms) and ``response.output_audio.delta`` in (20 ms).

    .venv/bin/python -m bench.codecs

CPU-µs per operation, median of 5 runs of 50,000. Writes ``bench/results/codecs.json``.
"""

from __future__ import annotations

import base64
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "codecs.json"
SID = "MZ" + "7" * 32
N = 50_000


def _time(fn: Callable[[], Any]) -> float:
    runs = []
    for _ in range(5):
        begin = time.process_time()
        for _ in range(N):
            fn()
        runs.append((time.process_time() - begin) / N * 1e6)
    return round(statistics.median(runs), 3)


def main() -> None:
    import orjson
    import pybase64

    from services.realtime.client_events import encode_audio_append
    from services.telephony.media_streams import TwilioSerializer

    audio20 = bytes(range(160))
    audio100 = bytes(n % 256 for n in range(800))
    media_in = json.dumps(
        {
            "event": "media",
            "sequenceNumber": "4",
            "media": {
                "track": "inbound",
                "chunk": "2",
                "timestamp": "40",
                "payload": base64.b64encode(audio20).decode(),
            },
            "streamSid": SID,
        }
    )
    delta_in = json.dumps(
        {
            "type": "response.output_audio.delta",
            "event_id": "event_123",
            "response_id": "resp_1",
            "item_id": "item_1",
            "output_index": 0,
            "content_index": 0,
            "delta": base64.b64encode(audio20).decode(),
        }
    )
    serializer = TwilioSerializer()
    serializer.parse(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    serializer.parse(
        json.dumps(
            {
                "event": "start",
                "streamSid": SID,
                "start": {
                    "streamSid": SID,
                    "accountSid": "AC" + "0" * 32,
                    "callSid": "CA" + "1" * 32,
                    "tracks": ["inbound"],
                    "customParameters": {},
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
            }
        )
    )

    rows: dict[str, dict[str, float]] = {}
    STD, LIB, OURS = "stdlib json + base64", "orjson + pybase64", "callray's code"

    def row(name: str, **ways: Callable[[], Any] | None) -> None:
        results = {k: fn() for k, fn in ways.items() if fn is not None}
        first = next(iter(results.values()))
        assert all(r == first for r in results.values()), name  # or the comparison is void
        labels = {"std": STD, "lib": LIB, "ours": OURS}
        rows[name] = {labels[k]: _time(fn) for k, fn in ways.items() if fn is not None}

    row(
        "Twilio media in (20 ms), to its audio",
        std=lambda: base64.b64decode(json.loads(media_in)["media"]["payload"], validate=True),
        lib=(lambda: pybase64.b64decode(orjson.loads(media_in)["media"]["payload"], validate=True)),
        ours=lambda: serializer.parse(media_in).payload,  # type: ignore[union-attr]
    )

    def media_out_template_std() -> str:
        payload = base64.b64encode(audio100).decode("ascii")
        return f'{{"event":"media","streamSid":"{SID}","media":{{"payload":"{payload}"}}}}'

    def media_out_orjson() -> str:
        payload = pybase64.b64encode(audio100).decode("ascii")
        message = {"event": "media", "streamSid": SID, "media": {"payload": payload}}
        return str(orjson.dumps(message).decode())

    row(
        "Twilio media out (100 ms)",
        std=media_out_template_std,
        lib=media_out_orjson,
        ours=lambda: serializer.encode_media(SID, audio100),
    )

    def append_std() -> str:
        audio = base64.b64encode(audio20).decode("ascii")
        return '{"type":"input_audio_buffer.append","audio":"' + audio + '"}'

    def append_orjson() -> str:
        audio = pybase64.b64encode(audio20).decode("ascii")
        return str(orjson.dumps({"type": "input_audio_buffer.append", "audio": audio}).decode())

    row(
        "input_audio_buffer.append out (20 ms)",
        std=append_std,
        lib=append_orjson,
        ours=lambda: encode_audio_append(audio20),
    )
    row(
        "response.output_audio.delta in (20 ms), to its audio",
        std=lambda: base64.b64decode(json.loads(delta_in)["delta"], validate=True),
        lib=(lambda: pybase64.b64decode(orjson.loads(delta_in)["delta"], validate=True)),
    )
    for name, figures in rows.items():
        print(f"{name}: " + ", ".join(f"{k} {v} µs" for k, v in figures.items()))
    versions = {"orjson": orjson.__version__, "pybase64": pybase64.__version__}
    result = {
        "benchmark": "codecs",
        "date": time.strftime("%Y-%m-%d"),
        "cpu_us": rows,
        "versions": versions,
    }
    RESULTS.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
