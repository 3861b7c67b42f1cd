"""Scenarios: what the scripted local model says, one step per response.

File format (JSON; ``scenarios/default.json`` is the example)::

    {
      "name": "acme-support",                      optional, for logs
      "steps": [                                   required, at least one
        {"say": "Thank you for calling ..."},      the response speaks this text
        {"user": "Where is my order?",             optional on any step: the transcript of the
                                                   user turn before this step's response
         "tool": {"name": "lookup_order",          the response is a function call ...
                  "arguments": {"order_id": "A1234"}},
         "then": "Your order {output}."}           ... and the response after its output says this
      ],
      "fallback": {"say": "Is there anything ..."},  optional; repeated after the last step
      "hold": "One moment, please."                optional; see below
    }

A step has exactly one of ``say`` and ``tool``; ``then`` goes with ``tool`` only, and ``{output}``
in it is replaced by the tool's output: when that output is a JSON object with a string
``message`` (else ``status``) field, by that field; otherwise by the output text itself. When the
step's tool is not a function tool of the session (or of the response, or ``tool_choice`` is
``"none"``), no call is made and the response says ``then`` with ``{output}`` replaced by
``unavailable``. A response asked for while a call's output has not arrived yet says ``hold`` and
keeps waiting for it.

Every problem is a :class:`~services.errors.ProtocolError` whose ``field`` is the JSON path of the
bad value (``steps[1].tool.name``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

from services.errors import ProtocolError

__all__ = ["DEFAULT_SCENARIO", "Scenario", "Step", "ToolCall", "load_scenario", "parse_scenario"]

DEFAULT_FALLBACK: Final = "Is there anything else I can help you with?"
DEFAULT_HOLD: Final = "One moment, please."
DEFAULT_SCENARIO: Final = "default.json"


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments, separators=(",", ":"))


@dataclass(frozen=True)
class Step:
    say: str | None = None
    user: str | None = None
    tool: ToolCall | None = None
    then: str | None = None

    def then_text(self, output: str) -> str:
        return (self.then or "").replace("{output}", output)


@dataclass(frozen=True)
class Scenario:
    steps: tuple[Step, ...]
    fallback: Step = Step(say=DEFAULT_FALLBACK)
    hold: str = DEFAULT_HOLD
    name: str = "scenario"

    def step(self, index: int) -> Step:
        return self.steps[index] if index < len(self.steps) else self.fallback


def output_text(output: str) -> str:
    """What ``{output}`` becomes for a function call's output string."""
    try:
        value = json.loads(output)
    except ValueError:
        return output.strip()
    if isinstance(value, dict):
        for key in ("message", "status"):
            if isinstance(value.get(key), str):
                return str(value[key])
    return output.strip()


def _fail(source: str, path: str, problem: str) -> ProtocolError:
    return ProtocolError(f"scenario {source}: '{path}' {problem}", field=path)


def _text(obj: dict[str, Any], key: str, path: str, source: str) -> str | None:
    if key not in obj:
        return None
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        raise _fail(source, f"{path}.{key}" if path else key, "must be a non-empty string")
    return value


def _parse_step(raw: Any, path: str, source: str) -> Step:
    if not isinstance(raw, dict):
        raise _fail(source, path, "must be an object")
    unknown = set(raw) - {"say", "user", "tool", "then"}
    if unknown:
        raise _fail(source, f"{path}.{sorted(unknown)[0]}", "is not a known step field")
    say, user, then = (_text(raw, k, path, source) for k in ("say", "user", "then"))
    tool = None
    if "tool" in raw:
        tool = _parse_tool(raw["tool"], f"{path}.tool", source)
        if say is not None:
            raise _fail(source, f"{path}.say", "cannot be combined with 'tool' (use 'then')")
        if then is None:
            raise _fail(source, f"{path}.then", "is required with 'tool'")
    elif then is not None:
        raise _fail(source, f"{path}.then", "is only allowed with 'tool'")
    elif say is None:
        raise _fail(source, f"{path}.say", "is required (or 'tool' and 'then')")
    return Step(say=say, user=user, tool=tool, then=then)


def _parse_tool(raw: Any, path: str, source: str) -> ToolCall:
    if not isinstance(raw, dict):
        raise _fail(source, path, "must be an object")
    unknown = set(raw) - {"name", "arguments"}
    if unknown:
        raise _fail(source, f"{path}.{sorted(unknown)[0]}", "is not a known tool field")
    name = _text(raw, "name", path, source)
    if name is None:
        raise _fail(source, f"{path}.name", "is required")
    arguments = raw.get("arguments", {})
    if not isinstance(arguments, dict):
        raise _fail(source, f"{path}.arguments", "must be an object")
    return ToolCall(name=name, arguments=arguments)


def parse_scenario(data: Any, source: str = "<scenario>") -> Scenario:
    """Validate a decoded scenario document."""
    if not isinstance(data, dict):
        raise _fail(source, "$", "must be a JSON object")
    unknown = set(data) - {"name", "steps", "fallback", "hold"}
    if unknown:
        raise _fail(source, sorted(unknown)[0], "is not a known scenario field")
    steps = data.get("steps")
    if not isinstance(steps, list) or not steps:
        raise _fail(source, "steps", "must be a non-empty array of steps")
    parsed = tuple(_parse_step(raw, f"steps[{i}]", source) for i, raw in enumerate(steps))
    fallback = Step(say=DEFAULT_FALLBACK)
    if "fallback" in data:
        fallback = _parse_step(data["fallback"], "fallback", source)
        if fallback.tool is not None:
            raise _fail(source, "fallback.tool", "is not allowed: the fallback repeats forever")
    hold = _text(data, "hold", "", source) if "hold" in data else DEFAULT_HOLD
    name = data.get("name", Path(source).stem)
    if not isinstance(name, str):
        raise _fail(source, "name", "must be a string")
    return Scenario(steps=parsed, fallback=fallback, hold=hold or DEFAULT_HOLD, name=name)


def load_scenario(path: str | Path | None = None) -> Scenario:
    """Load and validate a scenario file; ``None`` loads the packaged default."""
    if path is None:
        text = (resources.files(__package__) / "scenarios" / DEFAULT_SCENARIO).read_text()
        source = DEFAULT_SCENARIO
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ProtocolError(f"scenario {source}: cannot read: {exc}", field=None) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(
            f"scenario {source}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from exc
    return parse_scenario(data, source)
