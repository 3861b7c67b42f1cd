"""The ``callray`` command line.

``callray model`` runs our local Realtime-compatible model server; the distributed runtime
(``callray up``) comes with the runtime itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace

from services import __doc__ as package_doc
from services.config import load_settings
from services.errors import CallrayError


def _model_command(args: argparse.Namespace) -> int:
    from services.localmodel.server import LocalModelServer, serve_forever

    settings = load_settings().local_model
    settings = replace(
        settings,
        host=args.host,
        port=args.port,
        mode=args.mode,
        scenario=args.scenario,
        speed=args.speed,
    )

    def banner(server: LocalModelServer) -> None:
        base = f"http://{settings.host}:{server.port}/v1"
        print(
            f"callray local model: {server.url} (mode {settings.mode}, "
            f"scenario {settings.scenario or 'default'}, audio at {settings.speed:g}x real time)\n"
            f"  official client: AsyncOpenAI(base_url='{base}')\n"
            "  Ctrl-C stops it.",
            flush=True,
        )

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(settings, on_ready=banner))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="callray", description=package_doc)
    parser.add_argument("--log-level", default=os.environ.get("CALLRAY_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="run the local Realtime-compatible model server")
    model.add_argument("--host", default="127.0.0.1")
    model.add_argument("--port", type=int, default=8765)
    model.add_argument("--mode", choices=("echo", "scripted"), default="scripted")
    model.add_argument("--scenario", help="scenario JSON file (default: the shipped demo)")
    model.add_argument(
        "--speed", type=float, default=4.0, help="output audio speed as a multiple of real time"
    )
    model.set_defaults(run=_model_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.run(args)
    except CallrayError as exc:
        print(f"callray: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
