"""One log format in every process: UTC timestamps, level, logger, the call id when the record
is about a call; JSON lines on request."""

from __future__ import annotations

import json
import logging
import re

import pytest

from services.observability import logs


def _record(msg: str, call_id: str | None = None, exc: bool = False) -> logging.LogRecord:
    record = logging.LogRecord("services.x", logging.WARNING, __file__, 1, msg, (), None)
    record.created = 1_796_000_000.25
    record.msecs = 250.0
    if call_id is not None:
        record.call_id = call_id
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            record.exc_info = sys.exc_info()
    return record


def test_text_lines_carry_time_level_logger_and_call() -> None:
    line = logs.TextFormatter().format(_record("model away", call_id="CA1"))
    assert line == "2026-11-30T00:53:20.250Z WARNING services.x call=CA1 model away"
    plain = logs.TextFormatter().format(_record("no call here"))
    assert re.fullmatch(r"\S+Z WARNING services\.x no call here", plain)


def test_json_lines_parse_and_keep_the_traceback() -> None:
    line = logs.JsonFormatter().format(_record("failed", call_id="CA2", exc=True))
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["ts"] == "2026-11-30T00:53:20.250Z" and obj["level"] == "WARNING"
    assert obj["logger"] == "services.x" and obj["call_id"] == "CA2" and obj["msg"] == "failed"
    assert "ValueError: boom" in obj["exc"]


def test_configure_from_env_installs_one_handler(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        logs.configure_from_env({"CALLRAY_LOG_FORMAT": "json", "CALLRAY_LOG_LEVEL": "info"})
        logs.configure_from_env({"CALLRAY_LOG_FORMAT": "json", "CALLRAY_LOG_LEVEL": "info"})
        assert len(root.handlers) == 1 and root.level == logging.INFO
        logs.for_call(logging.getLogger("services.y"), "CA3").warning("hello %s", "there")
        obj = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert obj["msg"] == "hello there" and obj["call_id"] == "CA3"
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
