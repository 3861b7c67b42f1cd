"""The session side of path (a), without sockets: the accept body built for an agent (minus the
turn-detection fields the Calls API rejects for SIP), the transport's refusals, transfer
targets a SIP REFER may carry, and the caller metadata taken from untrusted SIP headers."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from services.errors import ToolError, UserError
from services.gateway.openai_sip import caller_metadata
from services.realtime.agent import RealtimeAgent
from services.realtime.tools import function_tool
from services.realtime.transports.sip import (
    OpenAIRealtimeSIP,
    TransferRefused,
    build_sip_initial_config,
    check_transfer_target,
    rest_base,
    sip_accept_payload,
)
from services.runtime.call_session import phone_config


@function_tool
def lookup(order_id: str) -> str:
    """Look an order up.

    Args:
        order_id: The order.
    """
    return order_id


AGENT = RealtimeAgent(name="Desk", instructions="Be brief.", voice="marin", tools=[lookup])
TUNED = {
    "audio": {
        "input": {
            "turn_detection": {
                "type": "server_vad",
                "threshold": 0.6,
                "prefix_padding_ms": 300,
                "silence_duration_ms": 500,
                "create_response": True,
            }
        }
    }
}


def test_the_accept_body_is_the_agents_config_without_the_sip_refused_fields() -> None:
    body = build_sip_initial_config(AGENT, TUNED, model="gpt-realtime")
    assert body["type"] == "realtime" and body["model"] == "gpt-realtime"
    assert body["instructions"] == "Be brief."
    assert [t["name"] for t in body["tools"]] == ["lookup"]
    assert body["audio"]["output"]["voice"] == "marin"
    detection = body["audio"]["input"]["turn_detection"]
    assert detection == {"type": "server_vad", "create_response": True}


def test_a_phone_call_config_goes_through_unchanged_and_the_input_is_not_mutated() -> None:
    config = build_sip_initial_config(AGENT, phone_config("audio/pcmu"))
    assert config["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert config["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert sip_accept_payload(config) == config
    original: dict[str, Any] = {"type": "realtime", **copy.deepcopy(TUNED)}
    kept = copy.deepcopy(original)
    sip_accept_payload(original)
    assert original == kept


def test_turn_detection_off_or_absent_is_fine() -> None:
    for config in (
        {"type": "realtime"},
        {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
        {"type": "realtime", "audio": None},
    ):
        assert sip_accept_payload(config) == config


@pytest.mark.parametrize(
    "target", ["tel:+14155550123", "sip:agent@example.com", "SIP:desk@10.0.0.5:5060;transport=udp"]
)
def test_tel_and_sip_targets_may_be_referred_to(target: str) -> None:
    assert check_transfer_target(target) == target


@pytest.mark.parametrize(
    "target",
    [
        "queue:billing",
        "+14155550123",
        "sips:agent@example.com",
        "http://example.com",
        "tel:",
        "sip:agent@example.com\r\nX-Injected: 1",
        "sip:a b@example.com",
        "sip:<agent@example.com>",
        "sip:" + "a" * 300,
    ],
)
def test_anything_else_is_refused_with_a_message_for_the_model(target: str) -> None:
    with pytest.raises(TransferRefused) as info:
        check_transfer_target(target)
    assert isinstance(info.value, ToolError)  # its text goes to the model
    assert "tel:" in str(info.value) and "sip:" in str(info.value)


async def test_the_transport_needs_a_call_id_and_never_sends_audio() -> None:
    transport = OpenAIRealtimeSIP(model="gpt-realtime")
    with pytest.raises(UserError, match="call_id"):
        await transport.connect(url="ws://127.0.0.1:9/v1/realtime")
    with pytest.raises(UserError, match="SIP leg"):
        transport.send_audio(b"\xff" * 160)


def test_rest_base_follows_the_model_url() -> None:
    assert rest_base("wss://api.openai.com/v1/realtime") == "https://api.openai.com/v1"
    assert rest_base("ws://127.0.0.1:8765/v1/realtime/") == "http://127.0.0.1:8765/v1"


def test_caller_metadata_is_from_and_to_bounded_and_without_control_characters() -> None:
    headers = [
        {"name": "Via", "value": "SIP/2.0/UDP x"},
        {"name": "f", "value": "<sip:+1415@carrier>;tag=1\r\nX: evil"},
        {"name": "To", "value": "<sip:+1800@us>" + "x" * 1000},
        {"name": "From", "value": "second from, ignored"},
        {"name": 5, "value": "bad"},
        "not a header",
    ]
    caller = caller_metadata(headers)
    assert caller["from"] == "<sip:+1415@carrier>;tag=1X: evil"
    assert caller["to"].startswith("<sip:+1800@us>") and len(caller["to"]) == 256
    assert set(caller) == {"from", "to"}
    assert caller_metadata(None) == {} and caller_metadata("x") == {}
