"""``RealtimeAgent``: who the model is on a call, and ``Handoff`` between agents."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

from services.realtime.guardrails import OutputGuardrail
from services.realtime.tools import FunctionTool

Instructions = str | Callable[[Any, "RealtimeAgent"], str]


@dataclasses.dataclass(frozen=True)
class RealtimeAgent:
    """An agent: name, instructions (text, or a function of the call context), voice, tools,
    the agents it can hand the call to, and guardrails on what it says."""

    name: str
    instructions: Instructions = ""
    voice: str | None = None
    tools: Sequence[FunctionTool] = ()
    handoffs: Sequence[RealtimeAgent | Handoff] = ()
    output_guardrails: Sequence[OutputGuardrail] = ()
    handoff_description: str | None = None
    # Phone calls: also tell the model about keypad presses (they always reach call events).
    dtmf_to_model: bool = False
    # Phone calls: where to transfer the caller when the model cannot be reached (a ``tel:`` or
    # ``sip:`` target, e.g. a human queue) instead of hanging up; None hangs up.
    fallback_transfer: str | None = None

    def resolve_instructions(self, context: Any = None) -> str:
        if callable(self.instructions):
            return self.instructions(context, self)
        return self.instructions

    def all_handoffs(self) -> list[Handoff]:
        return [h if isinstance(h, Handoff) else Handoff.to(h) for h in self.handoffs]

    def tool_definitions(self) -> list[dict[str, Any]]:
        return [t.definition() for t in self.tools] + [h.definition() for h in self.all_handoffs()]

    def find_tool(self, name: str) -> FunctionTool | None:
        return next((t for t in self.tools if t.name == name), None)

    def find_handoff(self, name: str) -> Handoff | None:
        return next((h for h in self.all_handoffs() if h.tool_name == name), None)


def _snake(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "_", name).strip("_").lower() or "agent"


@dataclasses.dataclass(frozen=True)
class Handoff:
    """A tool the model calls to hand the conversation to another agent."""

    agent: RealtimeAgent
    tool_name: str
    tool_description: str

    @classmethod
    def to(
        cls, agent: RealtimeAgent, *, tool_name: str | None = None, description: str | None = None
    ) -> Handoff:
        default = f"Handoff to the {agent.name} agent to handle the request."
        if agent.handoff_description:
            default += f" {agent.handoff_description}"
        return cls(agent, tool_name or f"transfer_to_{_snake(agent.name)}", description or default)

    def definition(self) -> dict[str, Any]:
        return {
            "type": "function",
            "name": self.tool_name,
            "description": self.tool_description,
            "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
        }

    def transfer_message(self) -> str:
        return '{"assistant": "' + self.agent.name.replace('"', "'") + '"}'
