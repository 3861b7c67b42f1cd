"""Tool bus envelopes: round trips as Redis hands them back, and every way an entry can be bad."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from services.errors import ProtocolError
from services.toolbus.envelopes import ENVELOPE_VERSION, ToolReply, ToolRequest
from services.toolbus.streams import result_stream

REQUEST = ToolRequest(
    call_id="call_abc",
    tool="lookup_order",
    arguments='{"order": "A-17", "note": "naïve ✓"}',
    agent="Support",
    session_id="cr_123",
    host_id="host-1",
    reply_to=result_stream("host-1"),
    deadline=1_760_000_030.25,
    sent_at=1_760_000_000.125,
)
REPLY = ToolReply(
    call_id="call_abc",
    output="Order A-17 ships tomorrow.",
    outcome="ok",
    executor="exec-2",
    duration_s=0.0425,
    sent_at=1_760_000_000.5,
)


def as_redis_returns(fields: dict[str, str]) -> dict[bytes, bytes]:
    """What redis-py gives back without ``decode_responses``."""
    return {k.encode(): v.encode() for k, v in fields.items()}


def test_request_round_trips_as_str_and_as_bytes() -> None:
    fields = REQUEST.to_fields()
    assert fields["v"] == str(ENVELOPE_VERSION) == "1"
    assert all(isinstance(v, str) for v in fields.values())
    assert ToolRequest.from_fields(fields) == REQUEST
    assert ToolRequest.from_fields(as_redis_returns(fields)) == REQUEST


def test_reply_round_trips_as_str_and_as_bytes() -> None:
    fields = REPLY.to_fields()
    assert ToolReply.from_fields(fields) == REPLY
    assert ToolReply.from_fields(as_redis_returns(fields)) == REPLY


def test_arguments_travel_verbatim_even_when_not_json() -> None:
    # The tool tells the model its arguments were invalid; the envelope is not broken.
    request = dataclasses.replace(REQUEST, arguments="{not json", agent="", session_id="")
    assert ToolRequest.from_fields(request.to_fields()) == request


def test_unknown_fields_are_ignored() -> None:
    fields = {**REQUEST.to_fields(), "trace_id": "t-1"}
    assert ToolRequest.from_fields(fields) == REQUEST


def test_numbers_must_be_finite_to_be_sent() -> None:
    with pytest.raises(ValueError, match="finite"):
        dataclasses.replace(REQUEST, deadline=float("nan")).to_fields()


def _without(fields: dict[str, str], name: str) -> dict[str, str]:
    return {k: v for k, v in fields.items() if k != name}


REQUEST_FIELDS = list(REQUEST.to_fields())


@pytest.mark.parametrize("name", REQUEST_FIELDS)
def test_request_missing_field_is_named(name: str) -> None:
    with pytest.raises(ProtocolError, match=f"'{name}': missing") as info:
        ToolRequest.from_fields(_without(REQUEST.to_fields(), name))
    assert info.value.field == name


@pytest.mark.parametrize("name", list(REPLY.to_fields()))
def test_reply_missing_field_is_named(name: str) -> None:
    with pytest.raises(ProtocolError, match=f"'{name}': missing") as info:
        ToolReply.from_fields(_without(REPLY.to_fields(), name))
    assert info.value.field == name


BAD_REQUESTS: list[tuple[str, dict[str, Any], str]] = [
    ("v", {"v": "2"}, "unknown envelope version '2'"),
    ("v", {"v": ""}, "unknown envelope version"),
    ("call_id", {"call_id": ""}, "empty"),
    ("tool", {"tool": ""}, "empty"),
    ("reply_to", {"reply_to": ""}, "empty"),
    ("reply_to", {"reply_to": "callray:tool-calls"}, "not a result stream"),
    ("reply_to", {"reply_to": "callray:tool-results:"}, "not a result stream"),
    ("deadline", {"deadline": "soon"}, "bad JSON"),
    ("deadline", {"deadline": ""}, "bad JSON"),
    ("deadline", {"deadline": '"17"'}, "not a number"),
    ("deadline", {"deadline": "true"}, "not a number"),
    ("deadline", {"deadline": "[1]"}, "not a number"),
    ("deadline", {"deadline": "NaN"}, "bad JSON"),
    ("sent_at", {"sent_at": "Infinity"}, "bad JSON"),
    ("sent_at", {"sent_at": "1e999"}, "not finite"),
]


@pytest.mark.parametrize(("field", "change", "problem"), BAD_REQUESTS)
def test_bad_request_field_is_named(field: str, change: dict[str, str], problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem) as info:
        ToolRequest.from_fields({**REQUEST.to_fields(), **change})
    assert info.value.field == field
    assert f"'{field}'" in str(info.value)


def test_text_that_is_not_utf8_is_named() -> None:
    fields = as_redis_returns(REQUEST.to_fields())
    fields[b"agent"] = b"\xff\xfe"
    with pytest.raises(ProtocolError, match="'agent': not UTF-8") as info:
        ToolRequest.from_fields(fields)
    assert info.value.field == "agent"


BAD_REPLIES: list[tuple[str, dict[str, str], str]] = [
    ("v", {"v": "0"}, "unknown envelope version '0'"),
    ("call_id", {"call_id": ""}, "empty"),
    ("outcome", {"outcome": "great"}, "unknown outcome 'great'"),
    ("outcome", {"outcome": ""}, "unknown outcome"),
    ("duration_s", {"duration_s": "fast"}, "bad JSON"),
    ("sent_at", {"sent_at": "null"}, "not a number"),
]


@pytest.mark.parametrize(("field", "change", "problem"), BAD_REPLIES)
def test_bad_reply_field_is_named(field: str, change: dict[str, str], problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem) as info:
        ToolReply.from_fields({**REPLY.to_fields(), **change})
    assert info.value.field == field


@pytest.mark.parametrize("outcome", ["ok", "tool_error", "error", "timeout", "invalid_arguments"])
def test_every_tool_outcome_is_a_valid_reply(outcome: str) -> None:
    reply = dataclasses.replace(REPLY, outcome=outcome)  # type: ignore[arg-type]
    assert ToolReply.from_fields(reply.to_fields()).outcome == outcome
