"""Which jitter buffer for a browser caller's audio: aiortc's, at three prefetches, or ours.

A deterministic simulation on virtual time (seeded). A caller sends a 20 ms Opus-sized packet
every 20 ms for 60 s, starting near sequence number 65535 so every run wraps. Each packet is
lost (independently, or in bursts of 3 on average: a Gilbert model) or arrives 20 ms plus a
jitter later, the jitter exponential with a mean (and standard deviation) of 5 or 20 ms. An
"iid" network draws each packet's delay independently, so at 20 ms about one packet in six
overtakes its predecessor; a "fifo" one keeps the order (a queue), as most real paths do.

The packets are handed to each candidate in arrival order as ``aiortc.rtp.RtpPacket`` objects,
as ``RTCRtpReceiver._handle_rtp_packet`` does, and a frame a candidate releases leaves at the
arrival time of the packet whose ``add`` released it (the receiver decodes it then). Per sent
frame: its delay from being sent to being released (p50, p99, max over the delivered), or lost
by the network, or given up by the buffer (arrived but late, skipped or overflowed). The last
0.5 s, still in the buffers when the run ends, is not counted.

Chosen: ours, prefetch 1 (skip_after 2). aiortc's buffer keeps about 300 ms for the rest of a
call after its first lost packet, at any prefetch, and before that the depth the deepest
reordered packet made it wait (20 ms at 5 ms of jitter, 120 ms at 20). Ours keeps 20 ms more
than no buffer at all, loses nothing to a lost packet and uses a packet that overtook its
predecessor. Prefetch 0 saves those 20 ms only where packets are never reordered, and gives up
every one that is; prefetch 2 or skip_after 3 cost 20 ms more for what only an implausibly
reordering network (20 ms iid) gives back.

    .venv/bin/python -m bench.jitter

Writes ``bench/results/jitter.json``.
"""

from __future__ import annotations

import itertools
import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from services.webrtc.jitter import AudioJitterBuffer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "jitter.json"
FRAME_MS = 20
SAMPLES = 960  # 20 ms at Opus's 48 kHz RTP clock
SECONDS = 60
FRAMES = SECONDS * 1000 // FRAME_MS
FIRST_SEQ = 65_000
FIRST_TS = 4_294_000_000  # wraps too
BASE_MS = 20.0
PAYLOAD = 60  # bytes: about 24 kbit/s of Opus speech
TAIL = 25  # the last 0.5 s is still in the buffers when the run ends: not counted
SEED = 20261204


@dataclass(frozen=True)
class Network:
    jitter_ms: float
    loss: float
    burst: float = 1.0  # mean length of a loss burst; 1 = independent losses
    fifo: bool = False

    @property
    def name(self) -> str:
        bursts = " in bursts" if self.burst > 1 else ""
        order = "fifo" if self.fifo else "iid"
        return f"{self.jitter_ms:g} ms {order}, {100 * self.loss:g}% lost{bursts}"


NETWORKS = [
    Network(5, 0.0, fifo=True),
    Network(5, 0.01, fifo=True),
    Network(5, 0.0),
    Network(5, 0.01),
    Network(5, 0.05),
    Network(5, 0.05, burst=3.0),
    Network(20, 0.0),
    Network(20, 0.01),
    Network(20, 0.05),
    Network(20, 0.01, fifo=True),
]

CANDIDATES: dict[str, Callable[[], Any]] = {
    "aiortc prefetch=4 (default)": lambda: JitterBuffer(capacity=16, prefetch=4),
    "aiortc prefetch=1": lambda: JitterBuffer(capacity=16, prefetch=1),
    "aiortc prefetch=0": lambda: JitterBuffer(capacity=16, prefetch=0),
    "ours prefetch=0 skip_after=1": lambda: AudioJitterBuffer(prefetch=0, skip_after=1),
    "ours prefetch=0 skip_after=2": lambda: AudioJitterBuffer(prefetch=0, skip_after=2),
    "ours prefetch=1 skip_after=2": lambda: AudioJitterBuffer(prefetch=1, skip_after=2),
    "ours prefetch=1 skip_after=3": lambda: AudioJitterBuffer(prefetch=1, skip_after=3),
    "ours prefetch=2 skip_after=3": lambda: AudioJitterBuffer(prefetch=2, skip_after=3),
}


def trace(net: Network, seed: int) -> list[tuple[float, int]]:
    """(arrival ms, frame index) of every packet that arrives, in arrival order."""
    rng = random.Random(seed)
    # Gilbert model: P(bad) = loss, mean stay in bad = burst.
    leave_bad = 1 / net.burst
    enter_bad = net.loss * leave_bad / (1 - net.loss) if net.loss else 0.0
    bad = False
    arrivals: list[tuple[float, int]] = []
    last = 0.0
    for i in range(FRAMES):
        bad = rng.random() < (1 - leave_bad if bad else enter_bad)
        delay = BASE_MS + rng.expovariate(1 / net.jitter_ms)
        if bad:
            continue
        at = i * FRAME_MS + delay
        if net.fifo:
            at = last = max(at, last + 0.01)
        arrivals.append((at, i))
    arrivals.sort()
    return arrivals


def packet(i: int) -> RtpPacket:
    p = RtpPacket(
        payload_type=111,
        sequence_number=(FIRST_SEQ + i) % 65536,
        timestamp=(FIRST_TS + i * SAMPLES) % (1 << 32),
        ssrc=1,
        payload=i.to_bytes(4, "big") + bytes(PAYLOAD - 4),
    )
    p._data = p.payload  # type: ignore[attr-defined]  # what the receiver's depayload sets
    return p


def run(make: Callable[[], Any], arrivals: list[tuple[float, int]]) -> dict[str, Any]:
    buffer = make()
    packets = [(at, packet(i)) for at, i in arrivals]
    released: dict[int, float] = {}
    begin = time.process_time()
    for at, p in packets:
        _, frame = buffer.add(p)
        if frame is not None:
            released[int.from_bytes(frame.data[:4], "big")] = at
    cpu = time.process_time() - begin
    counted = FRAMES - TAIL
    arrived = {i for _, i in arrivals if i < counted}
    delays = sorted(released[i] - i * FRAME_MS for i in released if i < counted)
    given_up = len(arrived) - len(delays)
    return {
        "p50_ms": round(statistics.median(delays), 1),
        "p99_ms": round(delays[int(0.99 * (len(delays) - 1))], 1),
        "max_ms": round(delays[-1], 1),
        "network_lost_pct": round(100 * (counted - len(arrived)) / counted, 2),
        "given_up_pct": round(100 * given_up / counted, 2),
        "cpu_us_per_packet": round(cpu / len(packets) * 1e6, 2),
    }


def main() -> None:
    results: list[dict[str, Any]] = []
    for n, net in enumerate(NETWORKS):
        arrivals = trace(net, SEED + n)
        reordered = sum(1 for a, b in itertools.pairwise(arrivals) if b[1] < a[1])
        for name, make in CANDIDATES.items():
            results.append(
                {"network": net.name, "candidate": name, "reordered": reordered}
                | run(make, arrivals)
            )
    RESULTS.write_text(
        json.dumps(
            {
                "seconds": SECONDS,
                "frame_ms": FRAME_MS,
                "base_delay_ms": BASE_MS,
                "seed": SEED,
                "networks": [{"name": n.name} | vars(n) for n in NETWORKS],
                "results": results,
            },
            indent=2,
            ensure_ascii=False,
        )
        + "\n"
    )
    print(f"{'delay ms':>41} {'p50':>6} {'p99':>6} {'max':>6}  net lost %  given up %")
    for r in results:
        if r["candidate"] == next(iter(CANDIDATES)):
            print(f"{r['network']} ({r['reordered']} packets overtook their predecessor)")
        print(
            f"  {r['candidate']:39} {r['p50_ms']:6.1f} {r['p99_ms']:6.1f} {r['max_ms']:6.1f}"
            f"  {r['network_lost_pct']:10.2f}  {r['given_up_pct']:10.2f}"
        )


if __name__ == "__main__":
    main()
