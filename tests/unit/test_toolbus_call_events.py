"""Call events without Redis: parsing stream entries and the one-line format of the tail."""

from __future__ import annotations

import pytest

from services.errors import ProtocolError
from services.toolbus.call_events import CallEvent, format_event

TS = 1_760_000_000.25  # 2025-10-09T08:53:20.250Z


def entry(**fields: str) -> dict[bytes, bytes]:
    base = {"v": "1", "kind": "transcript", "call_id": "cr-7", "ts": str(TS)}
    return {k.encode(): v.encode() for k, v in {**base, **fields}.items()}


def test_an_entry_parses_into_envelope_and_fields() -> None:
    event = CallEvent.from_entry("1-0", entry(role="user", text="hi"))
    assert event == CallEvent("1-0", "transcript", "cr-7", TS, {"role": "user", "text": "hi"})


@pytest.mark.parametrize("missing", ["v", "kind", "call_id", "ts"])
def test_a_missing_envelope_field_is_named(missing: str) -> None:
    fields = {k: v for k, v in entry().items() if k != missing.encode()}
    with pytest.raises(ProtocolError, match=f"'{missing}': missing") as info:
        CallEvent.from_entry("1-0", fields)
    assert info.value.field == missing


def test_unknown_version_and_bad_time_are_named() -> None:
    with pytest.raises(ProtocolError, match="version '2'"):
        CallEvent.from_entry("1-0", entry(v="2"))
    with pytest.raises(ProtocolError, match="'ts': not a number") as info:
        CallEvent.from_entry("1-0", entry(ts="yesterday"))
    assert info.value.field == "ts"


def test_format_puts_time_call_kind_fields_and_quoted_text_on_one_line() -> None:
    event = CallEvent.from_entry("1-0", entry(role="user", text='Say "hi"\nplease'))
    assert format_event(event) == (
        '2025-10-09T08:53:20.250Z cr-7 transcript role=user "Say \\"hi\\"\\nplease"'
    )


def test_format_orders_known_fields_then_the_rest() -> None:
    fields = {"outcome": "ok", "tool": "lookup", "tool_call_id": "call_1", "zone": "eu"}
    event = CallEvent.from_entry("1-0", entry(kind="tool.returned", **fields))
    assert format_event(event) == (
        "2025-10-09T08:53:20.250Z cr-7 tool.returned tool=lookup tool_call_id=call_1 outcome=ok"
        " zone=eu"
    )


def test_format_of_an_event_without_fields() -> None:
    event = CallEvent.from_entry("1-0", entry(kind="interrupted"))
    assert format_event(event) == "2025-10-09T08:53:20.250Z cr-7 interrupted"
