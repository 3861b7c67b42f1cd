"""``callray loadtest``: simulated Twilio or SIP callers against a running ingress.

Settings come from the flags, plus ``TWILIO_AUTH_TOKEN`` and ``CALLRAY_PUBLIC_URL`` read once
here (the entry point; STYLE.md practice 6) so that an ingress that checks
``X-Twilio-Signature`` accepts the simulated calls. ``--provider sip`` places SIP calls (INVITE,
then μ-law RTP) at ``--target`` instead (127.0.0.1 only).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from services import aio
from services.errors import UserError
from services.loadgen.options import LoadOptions

__all__ = ["add_loadtest_parser", "loadtest_command"]


def add_loadtest_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``loadtest`` to the ``callray`` subcommands (``subparsers`` is what
    ``ArgumentParser.add_subparsers`` returned); it sets ``run`` to :func:`loadtest_command`."""
    parser = subparsers.add_parser(
        "loadtest",
        help="simulated Twilio or SIP callers against a running ingress",
        description=(
            "Start simulated Twilio (or, with --provider sip, SIP/RTP) callers against a "
            "callray ingress and report call setup time, per-frame echo latency and loss (with "
            "the local model in echo mode), and barge-in timing. Prints the JSON report unless "
            "--out is given."
        ),
    )
    defaults = LoadOptions()
    add = parser.add_argument
    add(
        "--provider",
        choices=("twilio", "sip"),
        default=defaults.provider,
        help="how calls arrive: a Twilio webhook and media stream, or SIP/RTP (default "
        "%(default)s)",
    )
    add("--url", default=defaults.base_url, help="the ingress base URL (default %(default)s)")
    add(
        "--target",
        default=defaults.target,
        help="SIP: the UAS's udp address, 127.0.0.1:<port> (default %(default)s)",
    )
    add("--calls", type=int, default=defaults.calls, help="number of calls (default %(default)s)")
    add(
        "--ramp",
        type=float,
        default=defaults.ramp_s,
        help="seconds over which calls start (default %(default)s)",
    )
    add("--rate", type=float, help="calls started a second (instead of --ramp)")
    add(
        "--duration",
        type=float,
        default=defaults.duration_s,
        help="seconds each call streams (default %(default)s)",
    )
    add(
        "--barge-in-rate",
        type=float,
        default=defaults.barge_in_rate,
        help="fraction of callers that interrupt the model once (0..1)",
    )
    add("--wav", help="the callers' voice: a WAV file, μ-law or 16-bit PCM (default: a tone)")
    add("--concurrency", type=int, help="most calls at once (default: all)")
    add(
        "--opening-ms",
        type=int,
        default=defaults.opening_ms,
        help="callers speak for this long first (default %(default)s: they listen first)",
    )
    add(
        "--no-echo",
        action="store_true",
        help="the model talks instead of echoing: skip per-frame echo accounting",
    )
    add("--seed", type=int, default=defaults.seed, help="seed for barge-in times")
    add("--out", help="write the JSON report to this file")
    add("--png", help="write the latency histogram to this PNG file")
    add("--progress", action="store_true", help="progress lines even when stderr is no terminal")
    parser.set_defaults(run=loadtest_command)


def loadtest_command(args: argparse.Namespace) -> int:
    """Run the load test; exit code 0 if no call failed, 1 otherwise (rejections are fine:
    turning calls away when full is the ingress working as designed)."""
    from services.config import load_gateway_settings
    from services.loadgen.histogram_png import write_histogram_png
    from services.loadgen.report import Histogram
    from services.loadgen.runner import run_load

    gateway = load_gateway_settings(os.environ)
    if args.rate is not None and not args.rate > 0:
        raise UserError(f"--rate must be positive, got {args.rate}")
    options = LoadOptions(
        provider=args.provider,
        target=args.target,
        base_url=args.url,
        calls=args.calls,
        ramp_s=args.calls / args.rate if args.rate else args.ramp,
        duration_s=args.duration,
        barge_in_rate=args.barge_in_rate,
        wav=args.wav,
        concurrency=args.concurrency,
        opening_ms=args.opening_ms,
        echo=not args.no_echo,
        seed=args.seed,
        progress=True if args.progress else None,
        auth_token=gateway.twilio_auth_token,
        public_url=gateway.public_url,
    )
    report = aio.run(run_load(options))
    data = report.to_dict()
    if args.out:
        Path(args.out).write_text(report.to_json() + "\n")
    else:
        print(report.to_json())
    if args.png:
        latencies = report.echo_latencies_ms()
        if latencies.size:
            histogram, label = report.histogram(), "echo latency (ms)"
        else:
            setup = [c.first_audio_ms for c in report.calls if c.first_audio_ms is not None]
            histogram, label = Histogram.of(setup), "call setup to first audio (ms)"
        write_histogram_png(args.png, histogram, xlabel=label)
    print(summary(data), file=sys.stderr)
    return 0 if report.count("failed") == 0 else 1


def summary(data: dict[str, Any]) -> str:
    """One human line from :meth:`LoadReport.to_dict`."""
    calls, frames, barge = data["calls"], data["frames"], data["barge_in"]
    parts = [
        f"calls {calls['requested']}: {calls['completed']} completed, "
        f"{calls['rejected']} rejected, {calls['failed']} failed"
    ]
    invite = data["setup_ms"].get("invite_to_200")
    if invite:
        parts.append(f"INVITE to 200 p50 {invite['p50']:.0f} ms p99 {invite['p99']:.0f} ms")
    sip = data.get("sip")
    if sip and set(sip["final_status"]) - {"200"}:
        parts.append("SIP finals " + ", ".join(f"{k}: {v}" for k, v in sip["final_status"].items()))
    setup = data["setup_ms"]["first_audio"]
    if setup:
        parts.append(f"first audio p50 {setup['p50']:.0f} ms")
    latency = data["echo_latency_ms"]
    if latency:
        parts.append(f"echo p50 {latency['p50']:.1f} ms p99 {latency['p99']:.1f} ms")
        parts.append(f"lost {frames['lost']}/{frames['sent']} frames")
    if barge["planned"]:
        clear = barge["clear_latency_ms"]
        timing = f", clear p50 {clear['p50']:.0f} ms" if clear else ""
        parts.append(f"barge-in {barge['cleared']}/{barge['started']} cleared{timing}")
    return "; ".join(parts)
