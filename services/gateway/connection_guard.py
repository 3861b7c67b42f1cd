"""Closes HTTP connections that never send a whole request (the I/O half of
:class:`~.front_door.SilentConnections`).

aiohttp's server has no deadline for a request's line and headers, so a peer sending them a
byte at a time holds a connection for ever. Every ``every_s`` this sweeps the server's open
connections and force-closes what the policy says: silent past the request deadline, or past
the bounds on unauthenticated connections.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from services.config import GatewaySettings
from services.gateway.front_door import SilentConnections
from services.observability import metrics
from services.observability.log_limits import LogLimiter

logger = logging.getLogger(__name__)


def has_sent_a_request(handler: Any) -> bool:
    """Whether an aiohttp connection has parsed a whole request (line and headers). aiohttp
    keeps no public record of it: ``RequestHandler._request_count`` (3.9 to 3.14) counts them,
    and ``tests/unit/test_connection_guard.py`` fails if that moves."""
    return int(handler._request_count) > 0


def source_of(handler: Any) -> str:
    transport = handler.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    return str(peer[0]) if peer else "?"


def sweep_once(server: web.Server, policy: SilentConnections, log: LogLimiter) -> int:
    """One sweep; returns how many connections were closed."""
    connections = [(h, source_of(h), has_sent_a_request(h)) for h in server.connections]
    closing = policy.sweep(time.monotonic(), connections)
    sources: dict[Any, str] = {h: s for h, s, _ in connections}
    for handler, why in closing:
        assert isinstance(handler, web.RequestHandler)
        source = sources[handler]
        metrics.front_door_refused(why)
        log.warning(source, why, "closed an HTTP connection from %s: %s", source, why)
        handler.force_close()
    return len(closing)


async def guard_connections(
    server: web.Server, settings: GatewaySettings, *, every_s: float = 0.5
) -> None:
    """Run until cancelled."""
    policy = SilentConnections(
        deadline_s=settings.request_timeout_s,
        total=settings.max_pending_streams,
        per_source=settings.max_pending_per_source,
    )
    log = LogLimiter(logger)
    while True:
        await asyncio.sleep(every_s)
        try:
            sweep_once(server, policy, log)
        except Exception:  # a sweep must never end the guard
            logger.exception("the connection guard's sweep failed")
