"""Loads the agents a deployment answers calls with, from ``CALLRAY_AGENT=package.module:attr``.

The attribute is a :class:`RealtimeAgent` or a mapping of names to agents; the module must be
importable on every node (session hosts build sessions from it, tool executors run its tools).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from services.errors import ConfigError
from services.realtime.agent import RealtimeAgent
from services.realtime.tools import FunctionTool

DEFAULT_AGENT_SPEC = "services.agents.demo:DEMO_AGENT"


@dataclass(frozen=True)
class AgentRegistry:
    agents: Mapping[str, RealtimeAgent]
    default: str

    def get(self, name: str | None = None) -> RealtimeAgent:
        key = name or self.default
        if key not in self.agents:
            raise ConfigError(f"no agent named {key!r}; known: {', '.join(self.agents)}")
        return self.agents[key]

    def all_agents(self) -> Iterator[RealtimeAgent]:
        """Every agent, including those reachable only through handoffs."""
        seen: set[int] = set()
        stack = list(self.agents.values())
        while stack:
            agent = stack.pop()
            if id(agent) in seen:
                continue
            seen.add(id(agent))
            yield agent
            stack.extend(h.agent for h in agent.all_handoffs())

    def tools(self) -> dict[str, FunctionTool]:
        """Every function tool by name; two different tools with one name is an error."""
        found: dict[str, FunctionTool] = {}
        for agent in self.all_agents():
            for tool in agent.tools:
                other = found.get(tool.name)
                if other is not None and other is not tool:
                    raise ConfigError(f"two different tools are named {tool.name!r}")
                found[tool.name] = tool
        return found


def load_object(spec: str, *, setting: str) -> object:
    """The object at ``package.module:attr`` (the one loader of such specs); ``setting`` names
    where the spec came from, for the error."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{setting} must look like package.module:attr, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {setting} module {module_name!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{setting}: module {module_name!r} has no {attr!r}") from None


def load_agents(spec: str | None = None) -> AgentRegistry:
    """Import ``package.module:attr`` (default: the demo agent)."""
    spec = spec or DEFAULT_AGENT_SPEC
    value = load_object(spec, setting="CALLRAY_AGENT")
    if isinstance(value, RealtimeAgent):
        return AgentRegistry({value.name: value}, value.name)
    if (
        isinstance(value, Mapping)
        and value
        and all(isinstance(k, str) and isinstance(v, RealtimeAgent) for k, v in value.items())
    ):
        return AgentRegistry(dict(value), next(iter(value)))
    raise ConfigError(f"{spec} must be a RealtimeAgent or a mapping of names to agents")
