"""Output guardrails: checks run on what the model says (its transcript) while it speaks.

A guardrail returns :class:`GuardrailResult`; when ``tripwire_triggered`` is true the session
emits ``guardrail_tripped``, interrupts the model and asks it to answer again.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Awaitable, Callable
from typing import Any


@dataclasses.dataclass(frozen=True, slots=True)
class GuardrailResult:
    tripwire_triggered: bool
    output_info: Any = None


GuardrailFn = Callable[[Any, Any, str], "GuardrailResult | Awaitable[GuardrailResult]"]


@dataclasses.dataclass(frozen=True)
class OutputGuardrail:
    """``check(context, agent, text)`` → :class:`GuardrailResult` (sync or async)."""

    name: str
    check: GuardrailFn

    async def run(self, context: Any, agent: Any, text: str) -> GuardrailResult:
        result = self.check(context, agent, text)
        if inspect.isawaitable(result):
            result = await result
        if not isinstance(result, GuardrailResult):
            raise TypeError(f"guardrail {self.name} must return GuardrailResult")
        return result


@dataclasses.dataclass(frozen=True, slots=True)
class GuardrailTripped:
    """``guardrail_tripped`` payload."""

    guardrail: str
    result: GuardrailResult
    item_id: str
    text: str


def output_guardrail(
    fn: GuardrailFn | None = None, *, name: str | None = None
) -> OutputGuardrail | Callable[[GuardrailFn], OutputGuardrail]:
    def wrap(f: GuardrailFn) -> OutputGuardrail:
        return OutputGuardrail(name=name or str(getattr(f, "__name__", "guardrail")), check=f)

    return wrap(fn) if fn is not None else wrap
