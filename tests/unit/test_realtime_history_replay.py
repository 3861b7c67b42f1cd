"""replay_items: the conversation as a new connection can be given it, bounded, in order."""

from __future__ import annotations

from services.realtime.history import replay_items
from services.realtime.items import (
    ContentPart,
    FunctionCallItem,
    FunctionCallOutputItem,
    MessageItem,
)


def _user(item_id: str, transcript: str | None) -> MessageItem:
    return MessageItem(item_id, "user", [ContentPart("input_audio", transcript=transcript)])


def _assistant(item_id: str, transcript: str) -> MessageItem:
    return MessageItem(item_id, "assistant", [ContentPart("output_audio", transcript=transcript)])


def test_turns_become_text_and_tool_calls_keep_their_outputs() -> None:
    history = [
        _assistant("a1", "Hello, how can I help?"),
        _user("u1", "Where is my order?"),
        _user("u2", None),  # no words yet: nothing to replay
        FunctionCallItem("f1", "lookup_order", "call_1", '{"id": 1}', output='{"ok": true}'),
        FunctionCallOutputItem("o1", "call_1", '{"ok": true}'),
        FunctionCallItem("f2", "book_callback", "call_2", "{}", output="booked"),  # no echo yet
        FunctionCallItem("f3", "slow_tool", "call_3", "{}"),  # still running
    ]
    wire = [item.to_wire() for item in replay_items(history, 50)]
    assert wire == [
        {
            "type": "message",
            "id": "a1",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hello, how can I help?"}],
        },
        {
            "type": "message",
            "id": "u1",
            "role": "user",
            "content": [{"type": "input_text", "text": "Where is my order?"}],
        },
        {
            "type": "function_call",
            "id": "f1",
            "name": "lookup_order",
            "call_id": "call_1",
            "arguments": '{"id": 1}',
        },
        {"type": "function_call_output", "id": "o1", "call_id": "call_1", "output": '{"ok": true}'},
        {
            "type": "function_call",
            "id": "f2",
            "name": "book_callback",
            "call_id": "call_2",
            "arguments": "{}",
        },
        {"type": "function_call_output", "id": "out_f2", "call_id": "call_2", "output": "booked"},
        {
            "type": "function_call",
            "id": "f3",
            "name": "slow_tool",
            "call_id": "call_3",
            "arguments": "{}",
        },
    ]


def test_only_the_most_recent_items_are_kept_and_no_output_without_its_call() -> None:
    history = [
        _assistant("a1", "Hi."),
        FunctionCallItem("f1", "lookup_order", "call_1", "{}"),
        FunctionCallOutputItem("o1", "call_1", "found"),
        _assistant("a2", "It is on its way."),
        _user("u1", "Thanks."),
    ]
    assert [i.item_id for i in replay_items(history, 3)] == ["a2", "u1"]  # o1 lost its call
    assert [i.item_id for i in replay_items(history, 4)] == ["f1", "o1", "a2", "u1"]
    assert replay_items(history, 0) == []
