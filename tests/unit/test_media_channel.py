"""The ingress ↔ host media channel's messages: every input and command round-trips; bad bytes
are a ProtocolError, never something executed."""

from __future__ import annotations

import pickle

import pytest

from services.errors import ProtocolError
from services.runtime.commands import (
    AudioDone,
    CallEnded,
    CallerHungUp,
    ClearPlayback,
    Dtmf,
    Hangup,
    PlayAudio,
    Played,
    Transfer,
)
from services.runtime.media_channel import (
    decode_commands,
    decode_inputs,
    encode_commands,
    encode_inputs,
)


def test_inputs_round_trip_in_order() -> None:
    batch = [
        ("c1", b"\xff" * 160),
        ("c2", Played("item_1", 0, 20.0)),
        ("c1", Dtmf("#")),
        ("c2", CallerHungUp("stream_closed")),
        ("c1", b"\x00\x01"),
    ]
    sent_at, decoded = decode_inputs(encode_inputs(1234.5, batch))
    assert sent_at == 1234.5 and decoded == batch


def test_commands_round_trip_in_order() -> None:
    commands = [
        PlayAudio("c1", b"\x7f" * 160, "item_1", 0),
        AudioDone("c1", "item_1", 0),
        ClearPlayback("c2"),
        Hangup("c1", "agent_hangup"),
        Transfer("c2", "queue:billing"),
        CallEnded("c1", "agent_hangup"),
    ]
    assert decode_commands(encode_commands(commands)) == commands


@pytest.mark.parametrize(
    "message",
    [
        b"\xc1garbage",
        b"",
        pickle.dumps(["not", "ours"]),
        b"\x92\xcb\x00\x00\x00\x00\x00\x00\x00\x00\x91\x92\xa1z\xa1c",
    ],
)
def test_malformed_messages_are_protocol_errors(message: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_inputs(message)
    with pytest.raises(ProtocolError):
        decode_commands(message)
