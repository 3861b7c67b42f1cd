"""Function tools: the ``function_tool`` decorator, the tool-runner interface and its in-process
implementation.

A tool's JSON schema comes from its type hints (through a pydantic model), its description from
the docstring's first paragraph, and parameter descriptions from a Google-style ``Args:`` section.
A :class:`~services.errors.ToolError` raised by a tool is shown to the model; any other exception
is logged and the model hears only that the tool failed, so internals never reach the caller.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol, get_type_hints, overload

import pydantic

from services.errors import ToolError, UserError

logger = logging.getLogger(__name__)

ToolOutcome = Literal["ok", "tool_error", "error", "timeout", "invalid_arguments", "rejected"]


@dataclasses.dataclass(frozen=True, slots=True)
class ToolCall:
    """One call of a tool by the model."""

    call_id: str
    name: str
    arguments: str  # JSON text, as the model sent it
    item_id: str = ""
    response_id: str | None = None


@dataclasses.dataclass(slots=True)
class ToolContext:
    """Passed to tools that declare a first parameter annotated ``ToolContext``."""

    call: ToolCall
    agent_name: str
    context: Any = None  # the application's own per-call object (caller metadata, CRM handle, ...)
    # The same for every delivery of one tool call (its call_id): an executor may run a call
    # again after another executor died mid-run, so a tool with a side effect makes it
    # exactly-once by keying it on this, e.g. ``SET done:{idempotency_key} 1 NX``.
    idempotency_key: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class ToolResult:
    output: str  # what the model is told
    outcome: ToolOutcome


@dataclasses.dataclass(frozen=True)
class FunctionTool:
    name: str
    description: str
    params_json_schema: dict[str, Any]
    invoke: Callable[[ToolContext, str], Awaitable[Any]]
    needs_approval: bool = False
    timeout_s: float | None = None
    # Tools normally go to the configured runner (the Redis-streams executor pool in the
    # distributed runtime); a cheap tool may run inside the session's own process instead.
    in_process: bool = False

    def definition(self) -> dict[str, Any]:
        """The ``session.tools[]`` entry (reference §2.1)."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.params_json_schema,
        }


_ARGS_SECTION = re.compile(r"^\s*(Args|Arguments|Parameters):\s*$", re.M)
_ARG_LINE = re.compile(r"^\s{2,}(\w+)(?:\s*\([^)]*\))?:\s*(.+)$")


def _parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    if not doc:
        return "", {}
    doc = inspect.cleandoc(doc)
    match = _ARGS_SECTION.search(doc)
    head = doc[: match.start()] if match else doc
    description = " ".join(head.strip().split("\n\n")[0].split())
    params: dict[str, str] = {}
    if match:
        for line in doc[match.end() :].splitlines():
            arg = _ARG_LINE.match(line)
            if arg:
                params[arg.group(1)] = arg.group(2).strip()
            elif line.strip() and not line.startswith(" "):
                break
    return description, params


def _schema_for(fn: Callable[..., Any]) -> tuple[type[pydantic.BaseModel], bool, dict[str, Any]]:
    hints = get_type_hints(fn)
    params = list(inspect.signature(fn).parameters.values())
    takes_context = bool(params) and hints.get(params[0].name) is ToolContext
    if takes_context:
        params = params[1:]
    _, docs = _parse_docstring(fn.__doc__)
    fields: dict[str, Any] = {}
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise UserError(f"tool {fn.__name__}: *args/**kwargs cannot be described to the model")
        annotation = hints.get(p.name, Any)
        default = ... if p.default is p.empty else p.default
        fields[p.name] = (annotation, pydantic.Field(default, description=docs.get(p.name)))
    model = pydantic.create_model(f"{fn.__name__}_args", **fields)
    schema = model.model_json_schema()
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    schema["additionalProperties"] = False
    schema.setdefault("properties", {})
    return model, takes_context, schema


def _to_output(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump_json()
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return str(value)


class InvalidToolArguments(ToolError):
    """The model's arguments did not match the tool's schema; the model is told why."""


def _make_tool(
    fn: Callable[..., Any],
    *,
    name: str | None,
    description: str | None,
    needs_approval: bool,
    timeout: float | None,
    in_process: bool,
) -> FunctionTool:
    model, takes_context, schema = _schema_for(fn)
    doc_description, _ = _parse_docstring(fn.__doc__)
    tool_name = name or fn.__name__
    is_async = inspect.iscoroutinefunction(fn)

    async def invoke(ctx: ToolContext, arguments: str) -> Any:
        try:
            parsed = model.model_validate_json(arguments or "{}")
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
                for e in exc.errors()
            )
            raise InvalidToolArguments(f"Invalid arguments for {tool_name}: {problems}") from None
        kwargs = {k: getattr(parsed, k) for k in type(parsed).model_fields}
        args = (ctx,) if takes_context else ()
        if is_async:
            return await fn(*args, **kwargs)
        # A blocking tool runs in a thread so it can never stall the audio of the call.
        return await asyncio.to_thread(fn, *args, **kwargs)

    return FunctionTool(
        name=tool_name,
        description=description or doc_description or tool_name,
        params_json_schema=schema,
        invoke=invoke,
        needs_approval=needs_approval,
        timeout_s=timeout,
        in_process=in_process,
    )


@overload
def function_tool(fn: Callable[..., Any], /) -> FunctionTool: ...


@overload
def function_tool(
    *,
    name: str | None = None,
    description: str | None = None,
    needs_approval: bool = False,
    timeout: float | None = None,
    in_process: bool = False,
) -> Callable[[Callable[..., Any]], FunctionTool]: ...


def function_tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    needs_approval: bool = False,
    timeout: float | None = None,
    in_process: bool = False,
) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
    """Turn a plain (sync or async) function into a tool the model can call."""

    def wrap(f: Callable[..., Any]) -> FunctionTool:
        return _make_tool(
            f,
            name=name,
            description=description,
            needs_approval=needs_approval,
            timeout=timeout,
            in_process=in_process,
        )

    return wrap(fn) if fn is not None else wrap


GENERIC_FAILURE = "An error occurred while running the tool. Please try again later."


def timeout_output(tool_name: str, limit_s: float) -> str:
    """What the model is told when a tool passes its deadline."""
    return f"The tool {tool_name} timed out after {limit_s:g} seconds."


async def run_tool(
    tool: FunctionTool, ctx: ToolContext, *, limit_s: float | None = None
) -> ToolResult:
    """Run one tool call and turn every way it can end into what the model is told."""
    limit = limit_s if limit_s is not None else tool.timeout_s
    try:
        value = await asyncio.wait_for(tool.invoke(ctx, ctx.call.arguments), limit)
    except TimeoutError:
        logger.warning("tool %s timed out after %ss", tool.name, limit)
        return ToolResult(timeout_output(tool.name, limit or 0.0), "timeout")
    except InvalidToolArguments as exc:
        return ToolResult(str(exc), "invalid_arguments")
    except ToolError as exc:
        return ToolResult(str(exc), "tool_error")
    except Exception:
        # Details stay in our logs: they may hold internals or personal data.
        logger.exception("tool %s failed", tool.name)
        return ToolResult(GENERIC_FAILURE, "error")
    return ToolResult(_to_output(value), "ok")


class ToolRunner(Protocol):
    """Runs tool calls for a session. The distributed runtime sends them over Redis streams."""

    async def run(self, tool: FunctionTool, ctx: ToolContext) -> ToolResult: ...


class InProcessToolRunner:
    """Runs tools on the session's own event loop (sync tools in a thread)."""

    def __init__(self, *, default_timeout: float | None = 30.0) -> None:
        self.default_timeout = default_timeout

    async def run(self, tool: FunctionTool, ctx: ToolContext) -> ToolResult:
        timeout = tool.timeout_s if tool.timeout_s is not None else self.default_timeout
        return await run_tool(tool, ctx, limit_s=timeout)
