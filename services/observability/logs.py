"""One log format for every callray process: the CLI, ``callray up``'s driver and every actor.

Text (the default) is one line per record: UTC time to the millisecond, level, logger, the call
id when the record is about one call, then the message::

    2026-12-06T01:52:03.412Z WARNING services.runtime.call_session call=CA9f… model reconnect …

``CALLRAY_LOG_FORMAT=json`` writes the same fields as one JSON object per line, for log
shippers (``ts``, ``level``, ``logger``, ``call_id`` when there is one, ``msg``, ``exc`` with a
traceback). A record is about a call when it carries ``call_id`` (``extra={"call_id": ...}``,
or a :func:`for_call` adapter). Call ids are provider identifiers, not personal data; nothing
here logs a number or a transcript.

Ray actors are processes of their own: each configures logging in its constructor from the
variables ``callray up`` passes them (:func:`configure_from_env`, at that process's entry).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["configure", "configure_from_env", "for_call"]

FORMAT_ENV: Final = "CALLRAY_LOG_FORMAT"
LEVEL_ENV: Final = "CALLRAY_LOG_LEVEL"


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        call = getattr(record, "call_id", None)
        head = f"{_timestamp(record)} {record.levelname} {record.name}"
        if call:
            head += f" call={call}"
        line = f"{head} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        call = getattr(record, "call_id", None)
        if call:
            out["call_id"] = call
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(level: str | int = "INFO", fmt: str = "text") -> None:
    """Install the format on the root logger of this process (replacing earlier handlers)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)


def configure_from_env(env: Mapping[str, str] | None = None) -> None:
    """:func:`configure` from ``CALLRAY_LOG_FORMAT`` and ``CALLRAY_LOG_LEVEL``: for a process's
    entry point (an actor's constructor), the one place it reads them."""
    source = os.environ if env is None else env
    fmt = source.get(FORMAT_ENV, "text").strip().lower() or "text"
    configure(source.get(LEVEL_ENV, "INFO").strip() or "INFO", "json" if fmt == "json" else "text")


def for_call(logger: logging.Logger, call_id: str) -> logging.LoggerAdapter[logging.Logger]:
    """``logger`` with ``call_id`` on every record."""
    return logging.LoggerAdapter(logger, {"call_id": call_id})
