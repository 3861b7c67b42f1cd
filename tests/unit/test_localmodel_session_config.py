"""``session.update``: defaults, partial-update semantics, and rejected updates (code + param)."""

from __future__ import annotations

from typing import Any

import pytest

from services.localmodel.engine import RealtimeEngine
from services.localmodel.session_config import apply_session_update, default_session
from services.localmodel.speech import SpeechSynthesizer
from services.localmodel.validation import InvalidRequest
from tests.wire import validate_server_event


@pytest.fixture
def session() -> dict[str, Any]:
    return default_session("gpt-realtime", "sess_1", 1_700_000_000)


def update(session: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return apply_session_update(session, {"type": "realtime", **fields})


def test_defaults_are_a_valid_ga_session(session: dict[str, Any]) -> None:
    validate_server_event({"type": "session.created", "event_id": "event_1", "session": session})
    assert session["audio"]["input"]["turn_detection"] == {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    }
    assert session["audio"]["output"]["voice"] == "marin"
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert (session["tools"], session["tool_choice"], session["output_modalities"]) == (
        [],
        "auto",
        ["audio"],
    )


def test_only_present_fields_change(session: dict[str, Any]) -> None:
    new = update(session, audio={"output": {"voice": "cedar"}})
    assert new["audio"]["output"]["voice"] == "cedar"
    assert new["audio"]["output"]["format"] == session["audio"]["output"]["format"]
    assert new["audio"]["input"] == session["audio"]["input"]
    assert new["instructions"] == session["instructions"]
    assert session["audio"]["output"]["voice"] == "marin"  # the old session is untouched


def test_clearing_values(session: dict[str, Any]) -> None:
    tools = [{"type": "function", "name": "lookup_order", "parameters": {"type": "object"}}]
    with_tools = update(session, tools=tools, instructions="Be brief.")
    assert with_tools["tools"] == tools
    cleared = update(
        with_tools, tools=[], instructions="", audio={"input": {"turn_detection": None}}
    )
    assert cleared["tools"] == []
    assert cleared["instructions"] == ""
    assert cleared["audio"]["input"]["turn_detection"] is None


def test_turn_detection_object_replaces_with_defaults(session: dict[str, Any]) -> None:
    new = update(session, audio={"input": {"turn_detection": {"type": "semantic_vad"}}})
    assert new["audio"]["input"]["turn_detection"] == {
        "type": "semantic_vad",
        "eagerness": "auto",
        "create_response": True,
        "interrupt_response": True,
    }
    partial = update(
        session, audio={"input": {"turn_detection": {"type": "server_vad", "threshold": 0.8}}}
    )
    assert partial["audio"]["input"]["turn_detection"]["threshold"] == 0.8
    assert partial["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 500


def test_formats_and_unchanged_model_are_accepted(session: dict[str, Any]) -> None:
    new = update(
        session,
        model="gpt-realtime",
        audio={
            "input": {"format": {"type": "audio/pcmu"}},
            "output": {"format": {"type": "audio/pcma"}},
        },
    )
    assert new["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert new["audio"]["output"]["format"] == {"type": "audio/pcma"}
    assert update(session, audio={"input": {"format": {"type": "audio/pcm"}}})["audio"]["input"][
        "format"
    ] == {"type": "audio/pcm", "rate": 24000}


BAD_UPDATES: list[tuple[Any, str, str]] = [
    ({"instructions": "x"}, "missing_required_parameter", "session.type"),
    ({"type": "transcription"}, "invalid_value", "session.type"),
    ({"type": "realtime", "modalities": ["audio"]}, "unknown_parameter", "session.modalities"),
    ({"type": "realtime", "model": "gpt-4o"}, "invalid_value", "session.model"),
    ({"type": "realtime", "instructions": 5}, "invalid_type", "session.instructions"),
    ({"type": "realtime", "output_modalities": ["audio", "text"]}, "invalid_value",
     "session.output_modalities"),
    ({"type": "realtime", "max_output_tokens": 5000}, "integer_above_max_value",
     "session.max_output_tokens"),
    ({"type": "realtime", "max_output_tokens": "lots"}, "invalid_value",
     "session.max_output_tokens"),
    ({"type": "realtime", "audio": {"input": {"format": "pcm16"}}}, "invalid_type",
     "session.audio.input.format"),
    ({"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
     "invalid_value", "session.audio.input.format.rate"),
    ({"type": "realtime", "audio": {"output": {"format": {"type": "audio/opus"}}}},
     "invalid_value", "session.audio.output.format.type"),
    ({"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu", "rate": 8000}}}},
     "unknown_parameter", "session.audio.input.format.rate"),
    ({"type": "realtime", "audio": {"output": {"voice": 7}}}, "invalid_type",
     "session.audio.output.voice"),
    ({"type": "realtime", "audio": {"output": {"speed": 3}}}, "decimal_above_max_value",
     "session.audio.output.speed"),
    ({"type": "realtime", "audio": {"input": {"turn_detection": {"type": "push_to_talk"}}}},
     "invalid_value", "session.audio.input.turn_detection.type"),
    ({"type": "realtime", "audio": {"input": {"turn_detection": {"threshold": 0.5}}}},
     "missing_required_parameter", "session.audio.input.turn_detection.type"),
    ({"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad",
                                                                 "threshold": 1.5}}}},
     "decimal_above_max_value", "session.audio.input.turn_detection.threshold"),
    ({"type": "realtime", "audio": {"input": {"turn_detection": {"type": "semantic_vad",
                                                                 "threshold": 0.5}}}},
     "unknown_parameter", "session.audio.input.turn_detection.threshold"),
    ({"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad",
                                                                 "silence_duration_ms": -1}}}},
     "integer_below_min_value", "session.audio.input.turn_detection.silence_duration_ms"),
    ({"type": "realtime", "audio": {"input": {"turn_detection": {"type": "semantic_vad",
                                                                 "eagerness": "eager"}}}},
     "invalid_value", "session.audio.input.turn_detection.eagerness"),
    ({"type": "realtime", "audio": {"input": {"noise_reduction": {"type": "loud"}}}},
     "invalid_value", "session.audio.input.noise_reduction.type"),
    ({"type": "realtime", "audio": {"input": {"transcription": {"model": 1}}}}, "invalid_type",
     "session.audio.input.transcription.model"),
    ({"type": "realtime", "audio": {"inputs": {}}}, "unknown_parameter", "session.audio.inputs"),
    ({"type": "realtime", "tools": {"name": "x"}}, "invalid_type", "session.tools"),
    ({"type": "realtime", "tools": [{"type": "function"}]}, "missing_required_parameter",
     "session.tools[0].name"),
    ({"type": "realtime", "tools": [{"type": "code", "name": "x"}]}, "invalid_value",
     "session.tools[0].type"),
    ({"type": "realtime", "tools": [{"type": "function", "name": "x", "strict": True}]},
     "unknown_parameter", "session.tools[0].strict"),
    ({"type": "realtime", "tool_choice": "always"}, "invalid_value", "session.tool_choice"),
    ({"type": "realtime", "tool_choice": {"type": "function"}}, "missing_required_parameter",
     "session.tool_choice.name"),
    ({"type": "realtime", "truncation": "sometimes"}, "invalid_value", "session.truncation"),
]  # fmt: skip


@pytest.mark.parametrize(("payload", "code", "param"), BAD_UPDATES)
def test_invalid_updates_name_code_and_param(
    session: dict[str, Any], payload: Any, code: str, param: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        apply_session_update(session, payload)
    assert (info.value.code, info.value.param) == (code, param)
    assert param in str(info.value)


def test_voice_is_locked_after_audio_but_may_be_repeated(session: dict[str, Any]) -> None:
    same = {"type": "realtime", "audio": {"output": {"voice": "marin"}}}
    assert apply_session_update(session, same, voice_locked=True) == session
    with pytest.raises(InvalidRequest) as info:
        apply_session_update(
            session, {"type": "realtime", "audio": {"output": {"voice": "ash"}}}, voice_locked=True
        )
    assert info.value.code == "cannot_update_voice"


def test_tracing_cannot_change_once_enabled(session: dict[str, Any]) -> None:
    traced = update(session, tracing="auto")
    assert update(traced, tracing="auto")["tracing"] == "auto"
    with pytest.raises(InvalidRequest, match="Tracing cannot be modified"):
        update(traced, tracing={"workflow_name": "calls"})


def test_engine_rejects_whole_update_and_keeps_the_session() -> None:
    engine = RealtimeEngine(speech=SpeechSynthesizer(None))
    before = engine.take_events()[0]["session"]
    bad = {
        "type": "session.update",
        "event_id": "evt_42",
        "session": {
            "type": "realtime",
            "instructions": "changed",  # valid, but the update is rejected as a whole
            "audio": {"input": {"format": "pcm16"}},
        },
    }
    engine.receive(bad, 0.0)
    (error,) = engine.take_events()
    validate_server_event(error)
    assert error["type"] == "error"
    assert error["error"] == {
        "type": "invalid_request_error",
        "code": "invalid_type",
        "message": "Invalid type for 'session.audio.input.format': expected an object, "
        "but got a string instead.",
        "param": "session.audio.input.format",
        "event_id": "evt_42",
    }
    engine.receive({"type": "session.update", "session": {"type": "realtime"}}, 0.0)
    (updated,) = engine.take_events()
    assert updated["type"] == "session.updated"
    assert updated["session"] == before
