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
    PlaybackCut,
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
        ("c1", PlaybackCut((("item_1", 0, 380), ("item_2", 0, 0)))),
        ("c2", CallerHungUp("stream_closed")),
        ("c1", b"\x00\x01"),
    ]
    sent_at, decoded = decode_inputs(encode_inputs(1234.5, batch))
    assert sent_at == 1234.5 and decoded == batch


def test_commands_round_trip_in_order() -> None:
    commands = [
        PlayAudio("c1", b"\x7f" * 160, "item_1", 0),
        AudioDone("c1", "item_1", 0),
        ClearPlayback("c2", 1234.25),
        Hangup("c1", "agent_hangup"),
        Transfer("c2", "queue:billing"),
        CallEnded("c1", "agent_hangup"),
    ]
    sent_at, decoded = decode_commands(encode_commands(99.5, commands))
    assert sent_at == 99.5 and decoded == commands
    clear = decoded[2]
    assert isinstance(clear, ClearPlayback) and clear.speech_at == 1234.25  # not compared by ==


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


async def test_channel_refuses_a_peer_without_the_key() -> None:
    import msgpack
    import websockets

    from services.runtime.media_channel import MediaChannelServer

    class NoHost:
        async def pull_output(self, *_: object, **__: object) -> list[object]:
            return []

        def feed(self, *_: object) -> int:
            raise AssertionError("a peer without the key must not reach the host")

    server = MediaChannelServer(NoHost())
    url = await server.start()
    try:
        async with websockets.connect(url) as ws:
            await ws.send(msgpack.packb(["hello", "intruder", "wrong-key"]))
            await ws.send(encode_inputs(0.0, [("c1", b"\xff" * 160)]))
            with pytest.raises(websockets.ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1008
    finally:
        await server.stop()
