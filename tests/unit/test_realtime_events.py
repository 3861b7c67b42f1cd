"""Typed Realtime events: golden server events round-trip; bad input gives precise errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.errors import RealtimeProtocolError
from services.realtime import client_events as ce
from services.realtime import server_events as se
from tests.wire import validate_client_event, validate_server_event

GOLDEN = Path(__file__).parent.parent / "fixtures" / "realtime" / "server_events.jsonl"
EVENTS = [json.loads(line) for line in GOLDEN.read_text().splitlines()]


def test_golden_covers_every_server_event_type() -> None:
    assert {e["type"] for e in EVENTS} == set(se.SERVER_EVENTS.classes)


@pytest.mark.parametrize("raw", EVENTS, ids=[e["type"] for e in EVENTS])
def test_server_event_round_trips(raw: dict) -> None:
    validate_server_event(raw)  # the fixture itself matches the official models
    event = se.parse_server_event(raw)
    assert not isinstance(event, se.UnknownEvent)
    assert event.type == raw["type"]
    assert event.to_wire() == {k: v for k, v in raw.items() if v is not None}


def test_unknown_type_is_an_event_not_an_error() -> None:
    raw = {"type": "response.brand_new_thing", "event_id": "e1", "x": 1}
    event = se.parse_server_event(raw)
    assert isinstance(event, se.UnknownEvent)
    assert event.type == "response.brand_new_thing"
    assert event.raw is raw


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"type": "input_audio_buffer.speech_started", "item_id": "i"}, "audio_start_ms"),
        (
            {"type": "input_audio_buffer.speech_started", "item_id": "i", "audio_start_ms": "5"},
            "audio_start_ms",
        ),
        ({"type": "response.output_audio.delta", "item_id": "i"}, "response_id"),
        (
            {
                "type": "conversation.item.truncated",
                "item_id": "i",
                "content_index": 0,
                "audio_end_ms": True,
            },
            "audio_end_ms",
        ),
        ({"type": 3}, "type"),
    ],
)
def test_bad_server_event_names_the_field(raw: dict, field: str) -> None:
    with pytest.raises(RealtimeProtocolError) as info:
        se.parse_server_event(raw)
    assert info.value.field == field
    assert field in str(info.value)


def test_non_object_is_rejected() -> None:
    with pytest.raises(RealtimeProtocolError, match="JSON object"):
        se.parse_server_event(["not", "an", "object"])


CLIENT_SAMPLES = [
    ce.SessionUpdate(session={"type": "realtime", "instructions": "hi"}),
    ce.InputAudioBufferAppend(audio="AAAA"),
    ce.InputAudioBufferCommit(),
    ce.InputAudioBufferClear(),
    ce.OutputAudioBufferClear(),
    ce.ConversationItemCreate(
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        previous_item_id="root",
    ),
    ce.ConversationItemRetrieve(item_id="item_1"),
    ce.ConversationItemTruncate(item_id="item_1", content_index=0, audio_end_ms=1200),
    ce.ConversationItemDelete(item_id="item_1"),
    ce.ResponseCreate(response={"instructions": "greet"}, event_id="e1"),
    ce.ResponseCancel(),
]


def test_samples_cover_every_client_event_type() -> None:
    assert {e.type for e in CLIENT_SAMPLES} == set(ce.CLIENT_EVENTS.classes)


@pytest.mark.parametrize("event", CLIENT_SAMPLES, ids=lambda e: e.type)
def test_client_event_validates_and_round_trips(event: ce.ClientEvent) -> None:
    wire = event.to_wire()
    validate_client_event(wire)
    assert ce.parse_client_event(wire).to_wire() == wire


def test_fast_append_encoding_matches_json() -> None:
    text = ce.encode_audio_append(bytes(range(256)))
    event = json.loads(text)
    validate_client_event(event)
    assert event == ce.InputAudioBufferAppend(audio=event["audio"]).to_wire()


def test_unknown_client_event_is_rejected() -> None:
    with pytest.raises(RealtimeProtocolError, match="unknown client event type"):
        ce.parse_client_event({"type": "session.delete"})
