"""Versioned envelopes of the tool bus: what the fields of a stream entry mean.

Every entry carries ``v`` (now ``1``). A reader refuses a version it does not know rather than
guess at it (the executor moves such an entry to the dead-letter stream); fields it does not know
are ignored, so a version can gain optional fields without a bump.

Text fields are UTF-8, verbatim. Numbers are JSON numbers (finite). ``arguments`` is the model's
JSON text exactly as it was sent and is deliberately *not* parsed here: malformed arguments are
answered by the tool (the model hears "invalid arguments" and can try again); they do not make
the envelope broken.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Final, cast, get_args

from services.errors import ProtocolError
from services.realtime.tools import ToolOutcome
from services.toolbus.streams import RESULT_STREAM_PREFIX, Fields

ENVELOPE_VERSION: Final = 1
_OUTCOMES: Final = frozenset(get_args(ToolOutcome))


class _Reader:
    """Pulls typed fields out of a stream entry; every failure names the field."""

    def __init__(self, kind: str, fields: Fields) -> None:
        self.kind = kind
        self.fields: dict[str, bytes | str] = {}
        for key, value in fields.items():
            name = key.decode(errors="replace") if isinstance(key, bytes) else key
            self.fields[name] = value
        version = self.text("v")
        if version != str(ENVELOPE_VERSION):
            raise self.error("v", f"unknown envelope version {version!r}")

    def error(self, name: str, problem: str) -> ProtocolError:
        return ProtocolError(f"{self.kind} field {name!r}: {problem}", field=name)

    def text(self, name: str, *, nonempty: bool = False) -> str:
        if name not in self.fields:
            raise self.error(name, "missing")
        value = self.fields[name]
        if isinstance(value, bytes):
            try:
                value = value.decode()
            except UnicodeDecodeError:
                raise self.error(name, "not UTF-8") from None
        if nonempty and not value:
            raise self.error(name, "empty")
        return value

    def number(self, name: str) -> float:
        text = self.text(name)
        try:
            value = json.loads(text, parse_constant=_no_constant)
        except ValueError:
            raise self.error(name, f"bad JSON {text[:40]!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(name, f"not a number: {text[:40]!r}")
        if not math.isfinite(value):
            raise self.error(name, "not finite")
        return float(value)


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number")


def _number_text(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"envelope numbers must be finite, got {value}")
    return json.dumps(value)


@dataclasses.dataclass(frozen=True, slots=True)
class ToolRequest:
    """A tool call a session host asks the executor pool to run (stream ``callray:tool-calls``)."""

    call_id: str  # the model's tool call id: the dedup key, the same on every delivery
    tool: str
    arguments: str  # JSON text, as the model sent it
    agent: str
    session_id: str  # the callray call the tool call belongs to ("" if unknown)
    host_id: str
    reply_to: str  # the requesting host's result stream
    deadline: float  # unix seconds; after it the session has told the model the tool timed out
    sent_at: float

    def to_fields(self) -> dict[str, str]:
        return {
            "v": str(ENVELOPE_VERSION),
            "call_id": self.call_id,
            "tool": self.tool,
            "arguments": self.arguments,
            "agent": self.agent,
            "session_id": self.session_id,
            "host_id": self.host_id,
            "reply_to": self.reply_to,
            "deadline": _number_text(self.deadline),
            "sent_at": _number_text(self.sent_at),
        }

    @classmethod
    def from_fields(cls, fields: Fields) -> ToolRequest:
        r = _Reader("tool request", fields)
        reply_to = r.text("reply_to", nonempty=True)
        # An executor writes to this key: never let an entry point it at anything else.
        if not reply_to.startswith(RESULT_STREAM_PREFIX) or reply_to == RESULT_STREAM_PREFIX:
            raise r.error("reply_to", f"not a result stream: {reply_to[:80]!r}")
        return cls(
            call_id=r.text("call_id", nonempty=True),
            tool=r.text("tool", nonempty=True),
            arguments=r.text("arguments"),
            agent=r.text("agent"),
            session_id=r.text("session_id"),
            host_id=r.text("host_id"),
            reply_to=reply_to,
            deadline=r.number("deadline"),
            sent_at=r.number("sent_at"),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class ToolReply:
    """The result of one tool call, on the requesting host's result stream."""

    call_id: str
    output: str  # what the model is told
    outcome: ToolOutcome
    executor: str  # the consumer name of the executor that completed the call
    duration_s: float  # how long the tool ran
    sent_at: float

    def to_fields(self) -> dict[str, str]:
        return {
            "v": str(ENVELOPE_VERSION),
            "call_id": self.call_id,
            "output": self.output,
            "outcome": self.outcome,
            "executor": self.executor,
            "duration_s": _number_text(self.duration_s),
            "sent_at": _number_text(self.sent_at),
        }

    @classmethod
    def from_fields(cls, fields: Fields) -> ToolReply:
        r = _Reader("tool reply", fields)
        outcome = r.text("outcome")
        if outcome not in _OUTCOMES:
            raise r.error("outcome", f"unknown outcome {outcome[:40]!r}")
        return cls(
            call_id=r.text("call_id", nonempty=True),
            output=r.text("output"),
            outcome=cast(ToolOutcome, outcome),  # checked against ToolOutcome above
            executor=r.text("executor"),
            duration_s=r.number("duration_s"),
            sent_at=r.number("sent_at"),
        )
