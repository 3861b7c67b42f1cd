"""Generic typed wire events: one dataclass per Realtime event ``type``, parsed once at the edge.

Each event class declares its fields with type hints; :func:`wire_event` registers it under its
``type`` and compiles a field spec used to parse a JSON object into it (checking required fields
and JSON types) and to serialise it back. Parsing reports the first problem as a
:class:`~services.errors.RealtimeProtocolError` whose ``field`` names the offending key. Unknown
extra keys are kept in ``raw`` (forward compatibility, as the ``openai`` models keep them).

The per-audio-frame events override ``from_wire``/``to_wire`` by hand; everything else uses the
compiled spec, which costs a few microseconds per event.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from services.errors import RealtimeProtocolError
from services.json_kinds import KIND_NAMES, json_kind

_MISSING = dataclasses.MISSING
JSON = dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class _FieldSpec:
    name: str
    kinds: tuple[type, ...]
    required: bool
    default: Any
    default_factory: Callable[[], Any] | None


@dataclasses.dataclass(slots=True, kw_only=True)
class WireEvent:
    """Base of every typed Realtime event. ``raw`` is the JSON object as received (or ``{}``)."""

    TYPE: ClassVar[str] = ""
    _SPEC: ClassVar[tuple[_FieldSpec, ...]] = ()

    event_id: str | None = None
    raw: JSON = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def type(self) -> str:
        return self.TYPE

    @classmethod
    def from_wire(cls, data: JSON) -> typing.Self:
        kwargs: dict[str, Any] = {"raw": data}
        for spec in cls._SPEC:
            value = data.get(spec.name, _MISSING)
            if value is _MISSING:
                if spec.required:
                    raise RealtimeProtocolError(
                        f"{cls.TYPE} event is missing required field {spec.name!r}",
                        field=spec.name,
                    )
                continue
            if not isinstance(value, spec.kinds) or (
                isinstance(value, bool) and bool not in spec.kinds
            ):
                raise RealtimeProtocolError(
                    f"{cls.TYPE} field {spec.name!r} must be {_describe(spec.kinds)}, "
                    f"got {json_kind(value)}",
                    field=spec.name,
                )
            kwargs[spec.name] = value
        return cls(**kwargs)

    def to_wire(self) -> JSON:
        out: JSON = {"type": self.TYPE}
        for spec in self._SPEC:
            value = getattr(self, spec.name)
            # Optional fields left at None are omitted, as the API's own SDKs do.
            if value is None and not spec.required:
                continue
            out[spec.name] = value
        return out


_KIND_NAMES = KIND_NAMES


def _describe(kinds: tuple[type, ...]) -> str:
    names = list(dict.fromkeys(_KIND_NAMES.get(k, k.__name__) for k in kinds))
    if "an integer" in names and "a number" in names:
        names.remove("an integer")
    return " or ".join(names)


def _kinds_of(annotation: Any) -> tuple[type, ...]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        out: tuple[type, ...] = ()
        for arg in typing.get_args(annotation):
            out += _kinds_of(arg)
        return out
    if origin is typing.Literal:
        return tuple({type(v) for v in typing.get_args(annotation)})
    if annotation is Any:
        return (object,)
    if annotation is float:
        return (int, float)
    if origin is not None:
        return (origin,)
    if annotation is None or annotation is type(None):
        return (type(None),)
    return (annotation,)


E = TypeVar("E", bound=WireEvent)


class EventRegistry:
    """Maps ``type`` strings to event classes for one direction (client or server)."""

    def __init__(self, direction: str) -> None:
        self.direction = direction
        self.classes: dict[str, type[WireEvent]] = {}

    def register(self, type_name: str) -> Callable[[type[E]], type[E]]:
        def decorate(cls: type[E]) -> type[E]:
            if type_name in self.classes:
                raise RuntimeError(f"duplicate {self.direction} event type {type_name}")
            cls.TYPE = type_name
            hints = typing.get_type_hints(cls)
            specs = []
            for f in dataclasses.fields(cls):
                if f.name in ("event_id", "raw"):
                    continue
                required = f.default is _MISSING and f.default_factory is _MISSING
                specs.append(
                    _FieldSpec(
                        name=f.name,
                        kinds=_kinds_of(hints[f.name]),
                        required=required,
                        default=f.default,
                        default_factory=None
                        if f.default_factory is _MISSING
                        else f.default_factory,
                    )
                )
            # event_id goes first on the wire, as the API writes it.
            cls._SPEC = (
                _FieldSpec("event_id", (str, type(None)), False, None, None),
                *specs,
            )
            self.classes[type_name] = cls
            return cls

        return decorate
