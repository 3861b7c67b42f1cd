"""function_tool schemas, argument checking, and what the model is told when a tool fails."""

from __future__ import annotations

import asyncio
import json
import logging
import threading

import pytest

from services.errors import ToolError
from services.realtime.agent import Handoff, RealtimeAgent
from services.realtime.session_config import build_initial_config
from services.realtime.tools import (
    GENERIC_FAILURE,
    InProcessToolRunner,
    ToolCall,
    ToolContext,
    function_tool,
)
from tests.wire import validate_client_event


@function_tool
def lookup_order(order_id: str, include_items: bool = False) -> dict:
    """Look up an order by its number.

    More detail that is not part of the description.

    Args:
        order_id: The order number, e.g. A1234.
        include_items: Whether to list the items.
    """
    if order_id == "missing":
        raise ToolError("No order with that number.")
    if order_id == "crash":
        raise RuntimeError("database password is hunter2")
    return {"order_id": order_id, "status": "shipped", "items": [] if include_items else None}


@function_tool(name="book_callback", timeout=0.05, needs_approval=True)
async def slow_callback(ctx: ToolContext, minutes: int) -> str:
    await asyncio.sleep(minutes)
    return f"booked for {ctx.agent_name}"


def ctx_for(tool_name: str, args: dict) -> ToolContext:
    return ToolContext(call=ToolCall("call_1", tool_name, json.dumps(args)), agent_name="Support")


def test_schema_comes_from_hints_and_docstring() -> None:
    assert lookup_order.name == "lookup_order"
    assert lookup_order.description == "Look up an order by its number."
    schema = lookup_order.params_json_schema
    assert schema["required"] == ["order_id"]
    assert schema["properties"]["order_id"] == {
        "type": "string",
        "description": "The order number, e.g. A1234.",
    }
    assert schema["properties"]["include_items"]["type"] == "boolean"
    assert schema["additionalProperties"] is False


def test_context_parameter_is_not_in_the_schema() -> None:
    assert list(slow_callback.params_json_schema["properties"]) == ["minutes"]
    assert slow_callback.name == "book_callback" and slow_callback.needs_approval


async def test_tool_results_and_failures() -> None:
    runner = InProcessToolRunner()
    ok = await runner.run(lookup_order, ctx_for("lookup_order", {"order_id": "A1"}))
    assert ok.outcome == "ok" and json.loads(ok.output)["status"] == "shipped"
    told = await runner.run(lookup_order, ctx_for("lookup_order", {"order_id": "missing"}))
    assert (told.outcome, told.output) == ("tool_error", "No order with that number.")
    bad = await runner.run(lookup_order, ctx_for("lookup_order", {"order": 5}))
    assert bad.outcome == "invalid_arguments" and "order_id" in bad.output


async def test_internal_errors_stay_internal(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        result = await InProcessToolRunner().run(
            lookup_order, ctx_for("lookup_order", {"order_id": "crash"})
        )
    assert result.outcome == "error" and result.output == GENERIC_FAILURE
    assert "hunter2" not in result.output
    assert "lookup_order failed" in caplog.text


async def test_deadline_gives_timeout_output() -> None:
    result = await InProcessToolRunner().run(
        slow_callback, ctx_for("book_callback", {"minutes": 5})
    )
    assert result.outcome == "timeout"
    assert result.output == "The tool book_callback timed out after 0.05 seconds."


async def test_blocking_sync_tool_runs_off_the_event_loop() -> None:
    loop_thread = threading.get_ident()
    seen = []

    @function_tool
    def blocking() -> str:
        seen.append(threading.get_ident())
        return "done"

    result = await InProcessToolRunner().run(blocking, ctx_for("blocking", {}))
    assert result.output == "done" and seen and seen[0] != loop_thread


def test_initial_config_merges_options_over_defaults() -> None:
    billing = RealtimeAgent(name="Billing Desk", instructions="Billing.")
    agent = RealtimeAgent(
        name="Support",
        instructions=lambda ctx, a: f"Help {ctx['caller']}.",
        voice="cedar",
        tools=[lookup_order],
        handoffs=[billing],
    )
    config = build_initial_config(
        agent,
        {
            "audio": {
                "input": {"format": "g711_ulaw", "turn_detection": {"type": "server_vad"}},
                "output": {"format": {"type": "audio/pcma"}},
            }
        },
        model="gpt-realtime",
        context={"caller": "Ana"},
    )
    assert config["type"] == "realtime" and config["model"] == "gpt-realtime"
    assert config["instructions"] == "Help Ana."
    assert config["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    # A different mode or format replaces the default whole: their fields do not mix.
    assert config["audio"]["input"]["turn_detection"] == {"type": "server_vad"}
    assert config["audio"]["output"] == {
        "format": {"type": "audio/pcma"},
        "speed": 1.0,
        "voice": "cedar",
    }
    assert [t["name"] for t in config["tools"]] == ["lookup_order", "transfer_to_billing_desk"]
    assert Handoff.to(billing).tool_name == "transfer_to_billing_desk"
    validate_client_event({"type": "session.update", "session": config})


def test_sip_config_refuses_fields_the_calls_api_rejects() -> None:
    agent = RealtimeAgent(name="A")
    with pytest.raises(Exception, match="threshold"):
        build_initial_config(
            agent,
            {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 0.4}}}},
            for_sip=True,
        )
