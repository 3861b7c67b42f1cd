"""The ``callray`` command line.

``callray up`` runs the whole system on embedded defaults; ``callray model`` runs our local
Realtime-compatible model server alone; ``callray events tail`` prints the call-event stream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from services import __doc__ as package_doc
from services import aio
from services.config import load_settings, webhook_secret
from services.errors import CallrayError, ConfigError
from services.observability import logs


def _model_command(args: argparse.Namespace) -> int:
    from services.localmodel.server import LocalModelServer, serve_forever
    from services.localmodel.sip_front import SipFrontSettings

    settings = load_settings().local_model
    if args.webhook_url:
        settings = replace(
            settings,
            webhook_url=args.webhook_url,
            webhook_secret=webhook_secret(args.webhook_secret or "", "--webhook-secret"),
        )
    settings = replace(
        settings,
        host=args.host,
        port=args.port,
        mode=args.mode,
        scenario=args.scenario,
        speed=args.speed,
        drop_after_events=args.drop_after,
        ice_addresses=tuple(args.ice_address) or settings.ice_addresses,
    )

    if args.sip_port is not None and not 0 <= args.sip_port <= 65535:
        raise ConfigError(f"--sip-port must be a UDP port (0..65535), got {args.sip_port}")
    front = SipFrontSettings(port=args.sip_port or 0, host=args.host)

    def banner(server: LocalModelServer) -> None:
        base = f"http://{settings.host}:{server.port}/v1"
        sip = f"  SIP calls announced to: {settings.webhook_url}\n" if settings.webhook_url else ""
        if server.sip_port is not None:
            sip += f"  SIP: sip:{front.user}@{settings.host}:{server.sip_port} (UDP)\n"
        print(
            f"callray local model: {server.url} (mode {settings.mode}, "
            f"scenario {settings.scenario or 'default'}, audio at {settings.speed:g}x real time)\n"
            f"  official client: AsyncOpenAI(base_url='{base}')\n"
            f"  WebRTC calls: POST {server.calls_url}\n"
            f"{sip}"
            "  Ctrl-C stops it.",
            flush=True,
        )

    with contextlib.suppress(KeyboardInterrupt):
        sip = front if args.sip_port is not None else None
        aio.run(serve_forever(settings, on_ready=banner, sip=sip))
    return 0


def _up_command(args: argparse.Namespace) -> int:
    from services.up import run_up

    # The call page opens in a browser for a person at a terminal; never under CI or a pipe.
    interactive = sys.stdout.isatty() and not os.environ.get("CI")
    return run_up(load_settings(), open_browser=interactive and not args.no_browser)


def _redis_url_for_tools(data_dir: str) -> str:
    settings = load_settings().runtime
    if settings.redis_url:
        return settings.redis_url
    saved = Path(data_dir or settings.data_dir) / "redis.url"
    if saved.exists():
        return saved.read_text().strip()
    raise ConfigError("set REDIS_URL, or run `callray up` first (it records its Redis URL)")


def _events_command(args: argparse.Namespace) -> int:

    from redis.exceptions import RedisError

    from services.redis_client import connect as connect_redis
    from services.redis_client import without_password
    from services.toolbus.call_events import format_event, tail_events

    url = _redis_url_for_tools(args.data_dir)

    async def tail() -> None:
        client = connect_redis(url)
        try:
            async for event in tail_events(client, start=args.start):
                print(format_event(event), flush=True)
        finally:
            await client.aclose()

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(tail())
    except (RedisError, OSError) as exc:
        where = without_password(url)
        print(f"callray events: Redis at {where} unreachable: {exc}", file=sys.stderr)
        return 1
    return 0


def _drain_command(args: argparse.Namespace) -> int:
    from actors import _ray
    from actors.drain import run_drain

    # The cluster `callray up` started on this machine, or RAY_ADDRESS's.
    _ray.init(address=load_settings().runtime.ray_address or "auto")
    try:
        return run_drain(args.hosts, all_hosts=args.all, timeout_s=args.timeout)
    finally:
        _ray.shutdown()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="callray", description=package_doc)
    parser.add_argument("--log-level", default=os.environ.get("CALLRAY_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="run the local Realtime-compatible model server")
    model.add_argument("--host", default="127.0.0.1")
    model.add_argument("--port", type=int, default=8765)
    model.add_argument("--mode", choices=("echo", "scripted"), default="scripted")
    model.add_argument(
        "--ice-address",
        action="append",
        default=[],
        metavar="IP",
        help="where WebRTC calls gather ICE candidates (repeatable; default "
        "CALLRAY_WEBRTC_ICE_ADDRESSES, else every interface address but loopback)",
    )
    model.add_argument("--scenario", help="scenario JSON file (default: the shipped demo)")
    model.add_argument(
        "--speed", type=float, default=4.0, help="output audio speed as a multiple of real time"
    )
    model.add_argument(
        "--drop-after",
        type=int,
        default=0,
        metavar="N",
        help="fault injection: close each connection with 1011 after N client events",
    )
    model.add_argument(
        "--sip-port",
        type=int,
        metavar="P",
        help="take SIP calls as OpenAI's SIP connector does: INVITEs and G.711 RTP on UDP P "
        "(0: any free port), each announced by webhook (--webhook-url) and held until accepted",
    )
    model.add_argument(
        "--webhook-url",
        metavar="URL",
        help="announce each SIP call with a signed realtime.call.incoming webhook to URL "
        "(e.g. http://127.0.0.1:8080/openai/sip/webhook)",
    )
    model.add_argument(
        "--webhook-secret",
        metavar="WHSEC",
        help="the Standard Webhooks secret (whsec_...) the webhooks are signed with",
    )
    model.set_defaults(run=_model_command)

    up = sub.add_parser("up", help="run the whole system on embedded defaults")
    up.add_argument("--no-browser", action="store_true", help="do not open the call page")
    up.set_defaults(run=_up_command)

    from services.loadgen.cli import add_loadtest_parser

    add_loadtest_parser(sub)

    drain = sub.add_parser(
        "drain", help="take session hosts out of service once their calls have ended"
    )
    drain.add_argument("hosts", nargs="*", metavar="HOST_ID", help="session hosts to drain")
    drain.add_argument("--all", action="store_true", help="every session host")
    drain.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds calls may finish by themselves (600); then they move to other hosts, "
        "or end with a goodbye when none has room",
    )
    drain.set_defaults(run=_drain_command)

    events = sub.add_parser("events", help="the call-event stream")
    events_sub = events.add_subparsers(dest="events_command", required=True)
    tail = events_sub.add_parser("tail", help="print call events as they happen")
    tail.add_argument("--start", default="$", help="stream id to start after ($: only new, 0: all)")
    tail.add_argument("--data-dir", default="", help="callray up's data directory")
    tail.set_defaults(run=_events_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level, os.environ.get(logs.FORMAT_ENV, "text").strip().lower())
    try:
        code: int = args.run(args)
    except CallrayError as exc:
        print(f"callray: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
