"""Checks every Realtime event on the wire against the official `openai` package's models.

The `openai` union types carry a discriminator pydantic ignores; wrapping them with
``Field(discriminator="type")`` gives precise errors and an error for an unknown ``type``
(reference/realtime-protocol.md, section 8.2).
"""

from __future__ import annotations

from typing import Annotated, Any

from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from pydantic import Field, TypeAdapter, ValidationError

SERVER_EVENTS: TypeAdapter[Any] = TypeAdapter(
    Annotated[RealtimeServerEvent, Field(discriminator="type")]
)
CLIENT_EVENTS: TypeAdapter[Any] = TypeAdapter(
    Annotated[RealtimeClientEvent, Field(discriminator="type")]
)


class WireValidator:
    """Collects events that do not validate; a test fixture fails on the first one."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.counts = {"client": 0, "server": 0}
        self._tolerated: set[tuple[str, str]] = set()
        self.client_log: list[dict[str, Any]] = []  # client events in the order they were seen

    def tolerate(self, direction: str, event_type: str) -> None:
        """Skip ``event_type`` in ``direction``: for tests that send invalid events on purpose."""
        self._tolerated.add((direction, event_type))

    def __call__(self, direction: str, event: dict[str, Any]) -> None:
        adapter = SERVER_EVENTS if direction == "server" else CLIENT_EVENTS
        self.counts[direction] += 1
        if direction == "client":
            self.client_log.append(event)
        if (direction, event.get("type")) in self._tolerated:
            return
        try:
            adapter.validate_python(event)
        except ValidationError as exc:
            shown = {k: (v if k not in ("audio", "delta") else "...") for k, v in event.items()}
            self.failures.append(f"{direction} event {event.get('type')!r} invalid: {exc}\n{shown}")

    def check(self) -> None:
        if self.failures:
            raise AssertionError(self.failures[0])


def validate_server_event(event: dict[str, Any]) -> None:
    SERVER_EVENTS.validate_python(event)


def validate_client_event(event: dict[str, Any]) -> None:
    CLIENT_EVENTS.validate_python(event)
