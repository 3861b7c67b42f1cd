"""The media channel's sans-I/O protocol: every input and command round-trips; the handshake
checks version and key; bad bytes are a ChannelError, never something executed; the outbox
drops the oldest audio under backpressure and never a control; a broken batch keeps its
controls for the next one and backs off, on no clock but the policy's own."""

from __future__ import annotations

import pickle

import msgpack
import pytest

from services.errors import ProtocolError
from services.media import channel
from services.media.channel import (
    ChannelError,
    Redelivery,
    accept_hello,
    check_welcome,
    command_outbox,
    decode_commands,
    decode_inputs,
    encode_commands,
    encode_hello,
    encode_inputs,
    input_outbox,
)
from services.media.vocabulary import (
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
    TransferFailed,
)


def test_inputs_round_trip_in_order() -> None:
    batch = [
        ("c1", b"\xff" * 160),
        ("c2", Played("item_1", 0, 20.0)),
        ("c1", Dtmf("#")),
        ("c1", PlaybackCut((("item_1", 0, 380), ("item_2", 0, 0)))),
        ("c2", CallerHungUp("stream_closed")),
        ("c1", TransferFailed("tel:+14155550123", 486)),
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


def test_a_batch_is_not_mistaken_for_the_other_direction() -> None:
    with pytest.raises(ChannelError, match="'out' batch"):
        decode_commands(encode_inputs(1.0, [("c1", b"\xff")]))
    with pytest.raises(ChannelError, match="'in' batch"):
        decode_inputs(encode_commands(1.0, [Hangup("c1", "x")]))


@pytest.mark.parametrize(
    "message",
    [
        b"\xc1garbage",
        b"",
        "text, not binary",
        pickle.dumps(["not", "ours"]),
        msgpack.packb(["in", 0.0, [["z", "c1"]]]),
        msgpack.packb(["out", 0.0, [["z", "c1"]]]),
        msgpack.packb(["in", 0.0, [["p", "c1", "item", "zero", 1.0]]]),
        msgpack.packb(["out", 0.0, [["a"]]]),
        msgpack.packb(["in", "yesterday", []]),
        msgpack.packb([[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]),
    ],
)
def test_malformed_messages_are_channel_errors(message: bytes | str) -> None:
    with pytest.raises(ChannelError):
        decode_inputs(message)
    with pytest.raises(ChannelError):
        decode_commands(message)
    assert issubclass(ChannelError, ProtocolError)


def test_hello_with_the_key_and_version_is_welcomed() -> None:
    ingress_id, welcome = accept_hello(encode_hello("ingress-0", "k" * 32), "k" * 32)
    assert ingress_id == "ingress-0"
    check_welcome(welcome)


@pytest.mark.parametrize(
    ("hello", "why"),
    [
        (encode_hello("ingress-0", "wrong"), "wrong media channel key"),
        (msgpack.packb(["hello", 99, "ingress-0", "k" * 32]), "version 99 is not 1"),
        (msgpack.packb(["hello", channel.VERSION, 7, "k" * 32]), "without an ingress id"),
        (msgpack.packb(["hello", "ingress-0", "k" * 32]), "expected hello"),  # version 0 shape
        (encode_inputs(0.0, []), "expected hello"),
    ],
)
def test_a_bad_hello_is_refused_with_the_reason(hello: bytes, why: str) -> None:
    with pytest.raises(ChannelError, match=why):
        accept_hello(hello, "k" * 32)


def test_a_welcome_of_another_version_is_refused() -> None:
    with pytest.raises(ChannelError, match="expected welcome"):
        check_welcome(msgpack.packb(["welcome", 2]))


def test_outbox_wakes_its_sender_once_per_empty_to_non_empty() -> None:
    box = command_outbox()
    wakes: list[int] = []
    box.on_ready = lambda: wakes.append(len(box))
    box.put(Hangup("c1", "a"))
    box.put(Hangup("c2", "b"))
    assert wakes == [1]
    assert box.take() == [Hangup("c1", "a"), Hangup("c2", "b")]
    box.put(CallEnded("c1", "a"))
    assert wakes == [1, 1]


def test_outbox_drops_the_oldest_audio_past_its_limit_and_never_a_control() -> None:
    box = input_outbox(limit=4)
    dropped: list[int] = []
    box.on_drop = dropped.append
    box.put(("c1", b"1"))
    box.put(("c1", CallerHungUp("x")))
    box.put(("c1", b"2"))
    box.put(("c2", Dtmf("5")))
    box.put(("c1", b"3"))  # fifth item: the oldest audio goes
    box.put(("c2", Dtmf("6")))  # sixth: the next oldest audio goes
    assert box.take() == [
        ("c1", CallerHungUp("x")),
        ("c2", Dtmf("5")),
        ("c1", b"3"),
        ("c2", Dtmf("6")),
    ]
    assert box.dropped == 2 and dropped == [1, 1]
    for n in range(6):  # controls alone may exceed the limit: none is dropped
        box.put(("c1", Dtmf(str(n))))
    assert len(box.take()) == 6 and box.dropped == 2


def test_put_front_keeps_order_ahead_of_newer_items() -> None:
    box = input_outbox()
    box.put(("c1", b"new"))
    box.put_front([("c1", Dtmf("1")), ("c1", Dtmf("2"))])
    assert box.take() == [("c1", Dtmf("1")), ("c1", Dtmf("2")), ("c1", b"new")]


def test_a_broken_batch_keeps_its_controls_in_order_and_drops_its_audio() -> None:
    policy = Redelivery()
    batch = [
        ("c1", b"\xff" * 160),
        ("c1", Played("item_1", 0, 20.0)),
        ("c1", Dtmf("5")),
        ("c2", CallerHungUp("stream_closed")),
        ("c1", b"\x00" * 160),
    ]
    assert policy.failed(batch) == [
        ("c1", Played("item_1", 0, 20.0)),
        ("c1", Dtmf("5")),
        ("c2", CallerHungUp("stream_closed")),
    ]


def test_retries_back_off_then_give_up_and_a_delivery_resets_them() -> None:
    policy = Redelivery(give_up_after=5, first_delay_s=0.05, max_delay_s=0.3)
    hang_up = [("c1", CallerHungUp("stream_closed"))]
    assert policy.delay() == 0.0
    delays = []
    for _ in range(4):
        assert policy.failed(hang_up) == hang_up
        delays.append(policy.delay())
    assert delays == [0.05, 0.1, 0.2, 0.3]  # doubling, capped: no spinning against a dead host
    assert policy.failed(hang_up) == []  # the fifth failure: the host is taken for gone
    policy.delivered()
    assert policy.delay() == 0.0 and policy.failed(hang_up) == hang_up


def test_a_key_with_non_ascii_characters_is_a_wrong_key_not_a_crash() -> None:
    # Found by tests/unit/test_fuzz_parsers.py: compare_digest raised TypeError on such a str.
    hello = msgpack.packb(["hello", channel.VERSION, "ingress-1", "clé"])
    with pytest.raises(ChannelError, match="wrong media channel key"):
        accept_hello(hello, "key")
