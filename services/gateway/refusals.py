"""JSON refusals for the browser-facing routes (WebRTC offers, direct calls): each counted in
``callray_front_door_refused_total``, logged through the per-peer limiter, and told when to try
again where trying again can help (429: in a second; 503: in five)."""

from __future__ import annotations

import logging

from aiohttp import web

from services.observability import metrics
from services.observability.log_limits import LogLimiter

RETRY_AFTER = {429: "1", 503: "5"}


class Refusals:
    def __init__(self, logger: logging.Logger, *, what: str, prefix: str) -> None:
        self._log = LogLimiter(logger)
        self._what = what  # "a WebRTC offer": what the log line says was refused
        self._prefix = prefix  # of the metric's reason label

    def __call__(
        self, request: web.Request, status: int, reason: str, message: str
    ) -> web.Response:
        source = request.remote or "?"
        metrics.front_door_refused(f"{self._prefix}_{reason}")
        self._log.warning(source, reason, "refused %s from %s: %s", self._what, source, message)
        headers = {"Retry-After": RETRY_AFTER[status]} if status in RETRY_AFTER else {}
        return web.json_response({"error": message}, status=status, headers=headers)
