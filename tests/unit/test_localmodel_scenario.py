"""Scenario files: the packaged default, validation errors that name the field, and playback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.errors import ProtocolError
from services.localmodel.replies import CallTool, Say, ScriptPlayer
from services.localmodel.scenario import Step, load_scenario, output_text, parse_scenario


def test_default_scenario_is_a_call_center_demo() -> None:
    scenario = load_scenario()
    assert scenario.name == "acme-support"
    greeting, lookup, goodbye = scenario.steps
    assert greeting.say == "Thank you for calling Acme support. How can I help you today?"
    assert lookup.tool is not None
    assert (lookup.tool.name, lookup.tool.arguments) == ("lookup_order", {"order_id": "A1234"})
    assert lookup.then == "Your order {output}."
    assert goodbye.say
    assert scenario.fallback.say == "Is there anything else I can help you with?"


def test_load_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "short.json"
    path.write_text(json.dumps({"steps": [{"say": "Hi."}]}))
    scenario = load_scenario(path)
    assert scenario.steps == (Step(say="Hi."),)
    assert scenario.name == "short"


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ([], "$"),
        ({}, "steps"),
        ({"steps": []}, "steps"),
        ({"steps": [{"say": "x"}], "colour": "red"}, "colour"),
        ({"steps": ["hello"]}, "steps[0]"),
        ({"steps": [{"say": ""}]}, "steps[0].say"),
        ({"steps": [{"say": "x"}, {"user": "hi"}]}, "steps[1].say"),
        ({"steps": [{"sya": "x"}]}, "steps[0].sya"),
        ({"steps": [{"say": "x", "then": "y"}]}, "steps[0].then"),
        ({"steps": [{"tool": {"name": "t"}}]}, "steps[0].then"),
        ({"steps": [{"tool": {"name": "t"}, "then": "y", "say": "z"}]}, "steps[0].say"),
        ({"steps": [{"tool": {"arguments": {}}, "then": "y"}]}, "steps[0].tool.name"),
        ({"steps": [{"tool": {"name": "t", "arguments": "x"}, "then": "y"}]},
         "steps[0].tool.arguments"),
        ({"steps": [{"tool": "t", "then": "y"}]}, "steps[0].tool"),
        ({"steps": [{"say": "x", "user": 3}]}, "steps[0].user"),
        ({"steps": [{"say": "x"}], "fallback": {"tool": {"name": "t"}, "then": "y"}},
         "fallback.tool"),
        ({"steps": [{"say": "x"}], "hold": ""}, "hold"),
    ],
)  # fmt: skip
def test_validation_names_the_bad_field(doc: Any, field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_scenario(doc, "test.json")
    assert info.value.field == field
    assert "test.json" in str(info.value)
    assert f"'{field}'" in str(info.value)


def test_bad_json_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"steps": [')
    with pytest.raises(ProtocolError, match="not valid JSON"):
        load_scenario(path)
    with pytest.raises(ProtocolError, match="cannot read"):
        load_scenario(tmp_path / "missing.json")


@pytest.mark.parametrize(
    ("output", "text"),
    [
        ('{"status": "shipped", "eta": "Friday"}', "shipped"),
        ('{"message": "has shipped", "status": "ok"}', "has shipped"),
        ('{"status": 3}', '{"status": 3}'),
        ("has shipped", "has shipped"),
        ("  42  ", "42"),
    ],
)
def test_output_substitution(output: str, text: str) -> None:
    assert output_text(output) == text


def test_player_steps_tool_hold_then_and_fallback() -> None:
    scenario = parse_scenario(
        {
            "steps": [
                {"say": "Hello."},
                {
                    "user": "Order?",
                    "tool": {"name": "lookup", "arguments": {"id": 1}},
                    "then": "It {output}.",
                },
                {"say": "Bye."},
            ]
        }
    )
    player = ScriptPlayer(scenario)
    assert player.reply(["lookup"]) == Say("Hello.")
    assert player.user_transcript() == "Order?"
    assert player.reply(["lookup"]) == CallTool("lookup", '{"id":1}')
    player.call_started("call_1")
    assert player.user_transcript() is None
    assert player.reply(["lookup"]) == Say("One moment, please.")  # output not here yet
    player.note_output("call_1", '{"status": "shipped"}')
    assert player.reply(["lookup"]) == Say("It shipped.")
    assert player.reply(["lookup"], out_of_band=True) == Say(scenario.fallback.say or "")
    assert player.reply(["lookup"]) == Say("Bye.")
    assert player.reply(["lookup"]) == Say("Is there anything else I can help you with?")
    assert player.reply(["lookup"]) == Say("Is there anything else I can help you with?")


def test_player_says_unavailable_when_the_tool_is_not_offered() -> None:
    scenario = parse_scenario(
        {"steps": [{"tool": {"name": "lookup"}, "then": "Status: {output}."}]}
    )
    assert ScriptPlayer(scenario).reply(["other_tool"]) == Say("Status: unavailable.")
