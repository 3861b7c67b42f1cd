"""Property-based fuzzing of every parser that takes bytes from outside: whatever arrives, each
raises only its typed protocol error (or returns a typed event), never anything else.

Bounded (a few hundred examples each, no deadline) so it runs in CI on every commit. Inputs mix
random text and bytes with random JSON / msgpack structures shaped like the real messages, so
the fuzzer gets past the first ``json.loads`` into the field checks.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.errors import CallrayError, ChannelError, MediaStreamProtocolError
from services.gateway.twilio_bridge import TwilioBridge
from services.loadgen.wire import StreamIdentity, TwilioCallerCodec
from services.media import channel
from services.realtime.transports.openai_base import OpenAIRealtimeBase
from services.telephony.media_streams import TwilioSerializer
from services.telephony.stream_tokens import StreamTokens
from services.telephony.twilio_signature import is_valid_twilio_signature

FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

# Integers msgpack can carry (the channel's encoding), which JSON carries too.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=25,
)


def _twilio_like() -> st.SearchStrategy[dict[str, Any]]:
    event = st.sampled_from(["connected", "start", "media", "mark", "dtmf", "stop", "other"])
    body = st.dictionaries(
        st.sampled_from(
            [
                "streamSid",
                "callSid",
                "payload",
                "track",
                "chunk",
                "timestamp",
                "name",
                "digit",
                "customParameters",
                "tracks",
                "mediaFormat",
                "accountSid",
                "sequenceNumber",
            ]
        ),
        json_values,
        max_size=8,
    )
    return st.fixed_dictionaries(
        {"event": event},
        optional={
            "streamSid": st.text(max_size=40),
            "sequenceNumber": json_values,
            "start": body,
            "media": body,
            "mark": body,
            "dtmf": body,
            "stop": body,
        },
    )


# Deep nesting under the size cap: what once raised RecursionError out of a parser.
deep = st.integers(1, 60_000).map(lambda n: "[" * n + "]" * (n % 2) * n)

frames = (
    deep
    | st.text(max_size=300)
    | st.binary(max_size=300)
    | _twilio_like().map(json.dumps)
    | json_values.map(json.dumps)
)


SECRET = b"k" * 32
VALID_TOKEN = StreamTokens(SECRET, 3600.0).issue("CA1")


@st.composite
def tokens(draw: st.DrawFn) -> str:
    """Random text, or our token with random characters replaced (to reach the HMAC check)."""
    if draw(st.booleans()):
        return draw(st.text(max_size=120))
    chars = list(VALID_TOKEN)
    for _ in range(draw(st.integers(1, 4))):
        chars[draw(st.integers(0, len(chars) - 1))] = draw(st.characters())
    return "".join(chars)


def _start(token: str) -> str:
    # Written by the load generator's codec: the one caller-side Twilio encoder.
    identity = StreamIdentity("AC" + "0" * 32, "CA1", "MZ" + "0" * 32)
    return TwilioCallerCodec(identity).start({"token": token})


@FUZZ
@given(tokens())
def test_start_frames_with_any_token_raise_only_protocol_errors(token: str) -> None:
    bridge = TwilioBridge(StreamTokens(SECRET, 3600.0), serializer=TwilioSerializer())
    try:
        bridge.receive(_start(token))
    except MediaStreamProtocolError:
        pass


@FUZZ
@given(st.lists(frames, min_size=1, max_size=6))
def test_twilio_frames_raise_only_protocol_errors(messages: list[str | bytes]) -> None:
    serializer = TwilioSerializer()
    bridge = TwilioBridge(StreamTokens(b"k" * 32, 30.0), serializer=TwilioSerializer())
    for message in messages:
        try:
            serializer.parse(message)
        except MediaStreamProtocolError:
            pass
        try:
            bridge.receive(message)
        except MediaStreamProtocolError:
            pass


channel_items = st.lists(
    st.one_of(
        json_values,
        st.tuples(st.sampled_from(list("mptdhaecHTE")), st.text(max_size=8), json_values).map(list),
        st.tuples(st.sampled_from(list("mp")), st.text(max_size=8), st.binary(max_size=40)).map(
            list
        ),
    ),
    max_size=6,
)
channel_messages = (
    st.binary(max_size=200)
    | st.text(max_size=100)
    | st.tuples(
        st.sampled_from(["in", "out", "hello", "welcome", "x"]), json_values, channel_items
    ).map(lambda t: msgpack.packb(list(t)))
    | st.tuples(
        st.just("hello"), st.integers(-2, 3), st.text(max_size=10), st.text(max_size=40)
    ).map(lambda t: msgpack.packb(list(t)))
)


@FUZZ
@given(channel_messages)
def test_media_channel_messages_raise_only_channel_errors(message: bytes | str) -> None:
    # An authenticated but buggy ingress or host must not crash the other end.
    for decode in (channel.decode_inputs, channel.decode_commands, channel.check_welcome):
        try:
            decode(message)
        except ChannelError:
            pass
    try:
        channel.accept_hello(message, "key")
    except ChannelError:
        pass


class _Sink(OpenAIRealtimeBase):
    def _send_text(self, text: str) -> None:
        pass


realtime_events = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            [
                "session.created",
                "session.updated",
                "response.created",
                "response.done",
                "response.output_audio.delta",
                "response.output_audio.done",
                "response.output_audio_transcript.delta",
                "response.function_call_arguments.done",
                "conversation.item.added",
                "conversation.item.done",
                "conversation.item.deleted",
                "input_audio_buffer.speech_started",
                "error",
                "rate_limits.updated",
                "made.up",
            ]
        )
    },
    optional={
        "event_id": st.text(max_size=10),
        "response_id": json_values,
        "item_id": json_values,
        "delta": json_values,
        "response": json_values,
        "item": json_values,
        "session": json_values,
        "error": json_values,
        "content_index": json_values,
        "output_index": json_values,
        "call_id": json_values,
        "name": json_values,
        "arguments": json_values,
    },
)


@FUZZ
@given(
    st.lists(realtime_events.map(json.dumps) | st.text(max_size=200) | deep, min_size=1, max_size=8)
)
def test_realtime_server_events_never_raise(texts: list[str]) -> None:
    # Bad frames from the model become `error` events; they never raise into the session.
    transport = _Sink()
    for text in texts:
        transport.receive_text(text)


@FUZZ
@given(
    st.text(max_size=80),
    st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=6),
    st.none() | st.text(max_size=60),
)
def test_webhook_signatures_are_true_or_false(
    url: str, form: dict[str, str], signature: str | None
) -> None:
    try:
        valid = is_valid_twilio_signature(url, form, signature, "token")
    except CallrayError:
        return
    assert valid is False  # no random input carries a valid signature
