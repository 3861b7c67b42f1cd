"""TwilioSerializer against golden captures of every Twilio Media Streams message.

The captures in tests/fixtures/twilio/ have exactly the shapes of Twilio's "Media Streams -
WebSocket Messages" page (reference/telephony.md §1.2 inbound, §1.3 outbound); the SIDs and the
token are synthetic, the media payload is 20 ms of a 440 Hz tone in μ-law (160 bytes).
"""

from __future__ import annotations

import base64
import copy
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.errors import MediaStreamProtocolError, ProtocolError, UserError
from services.telephony.media_streams import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DtmfReceived,
    MarkReceived,
    MediaReceived,
    MediaStreamSerializer,
    OutboundKind,
    StreamConnected,
    StreamStarted,
    StreamStopped,
    TwilioSerializer,
    UnknownStreamEvent,
)
from services.telephony.media_streams.base import JsonFields

FIXTURES = Path(__file__).parent.parent / "fixtures" / "twilio"
ACCOUNT_SID = "ACc40bbbe5755558e367f6827a91c689ac"
STREAM_SID = "MZ9073a0d707f1305fec1c3c07da702b81"
CALL_SID = "CAe3f3ca4bf8f4fd33fe008db432345ef2"
DELETE = object()


def golden_text(name: str) -> str:
    return (FIXTURES / f"{name}.json").read_text()


def golden(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(golden_text(name))
    return data


def mutated(name: str, path: str, value: object) -> str:
    """Golden message ``name`` with the field at dotted ``path`` set to ``value`` (or deleted)."""
    data = copy.deepcopy(golden(name))
    *parents, leaf = path.split(".")
    target = data
    for key in parents:
        target = target[key]
    if value is DELETE:
        del target[leaf]
    else:
        target[leaf] = value
    return json.dumps(data)


@pytest.fixture
def serializer() -> TwilioSerializer:
    return TwilioSerializer()


@pytest.fixture
def started(serializer: TwilioSerializer) -> TwilioSerializer:
    serializer.parse(golden_text("connected"))
    serializer.parse(golden_text("start"))
    return serializer


# --- golden captures, inbound --------------------------------------------------------------


def test_connected(serializer: TwilioSerializer) -> None:
    assert serializer.parse(golden_text("connected")) == StreamConnected("Call", "1.0.0")
    assert serializer.stream_id is None


def test_start(serializer: TwilioSerializer) -> None:
    serializer.parse(golden_text("connected"))
    event = serializer.parse(golden_text("start"))
    assert event == StreamStarted(
        stream_id=STREAM_SID,
        call_id=CALL_SID,
        account_id=ACCOUNT_SID,
        tracks=("inbound",),
        custom_parameters=golden("start")["start"]["customParameters"],
        encoding="audio/x-mulaw",
        sample_rate=8000,
        channels=1,
    )
    assert serializer.stream_id == STREAM_SID


def test_media(started: TwilioSerializer) -> None:
    event = started.parse(golden_text("media"))
    assert isinstance(event, MediaReceived)
    assert event.payload == base64.b64decode(golden("media")["media"]["payload"])
    assert len(event.payload) == 160  # 20 ms of 8 kHz μ-law
    assert (event.timestamp_ms, event.chunk, event.track) == (5, 2, "inbound")


def test_dtmf(started: TwilioSerializer) -> None:
    assert started.parse(golden_text("dtmf")) == DtmfReceived("1")


def test_mark(started: TwilioSerializer) -> None:
    assert started.parse(golden_text("mark")) == MarkReceived("item_abc:1240:g3:m17")


def test_stop(started: TwilioSerializer) -> None:
    assert started.parse(golden_text("stop")) == StreamStopped(reason=None)


def test_whole_stream_in_order(serializer: TwilioSerializer) -> None:
    names = ["connected", "start", "media", "dtmf", "mark", "stop"]
    kinds = [type(serializer.parse(golden_text(name))) for name in names]
    assert kinds == [
        StreamConnected,
        StreamStarted,
        MediaReceived,
        DtmfReceived,
        MarkReceived,
        StreamStopped,
    ]


def test_bytes_frames_are_parsed_as_utf8_json(started: TwilioSerializer) -> None:
    assert started.parse(golden_text("mark").encode()) == MarkReceived("item_abc:1240:g3:m17")


def test_optional_fields_take_documented_defaults(serializer: TwilioSerializer) -> None:
    start = json.loads(mutated("start", "start.tracks", DELETE))
    del start["start"]["customParameters"]
    event = serializer.parse(json.dumps(start))
    assert isinstance(event, StreamStarted)
    assert (event.tracks, event.custom_parameters) == (("inbound",), {})
    media = json.loads(mutated("media", "media.timestamp", DELETE))
    del media["media"]["chunk"], media["media"]["track"]
    assert serializer.parse(json.dumps(media)) == MediaReceived(
        payload=base64.b64decode(media["media"]["payload"]),
        timestamp_ms=None,
        chunk=None,
        track="inbound",
    )


def test_unknown_event_is_typed_not_an_error(started: TwilioSerializer) -> None:
    raw = {"event": "heartbeat", "streamSid": STREAM_SID, "sequenceNumber": "9"}
    assert started.parse(json.dumps(raw)) == UnknownStreamEvent(raw=raw)


# --- round trip: inbound event -> outbound command -> golden -------------------------------


def test_media_round_trip(started: TwilioSerializer) -> None:
    event = started.parse(golden_text("media"))
    assert isinstance(event, MediaReceived)
    encoded = started.encode_media(STREAM_SID, event.payload)
    assert json.loads(encoded) == golden("outbound_media")


def test_mark_round_trip(started: TwilioSerializer) -> None:
    event = started.parse(golden_text("mark"))
    assert isinstance(event, MarkReceived)
    assert json.loads(started.encode_mark(STREAM_SID, event.name)) == golden("outbound_mark")


def test_clear(started: TwilioSerializer) -> None:
    assert json.loads(started.encode_clear(STREAM_SID)) == golden("outbound_clear")


def test_outbound_frames_are_compact_text(serializer: TwilioSerializer) -> None:
    # Encoding needs no state: the adapter may send before or without parsing anything.
    frame = serializer.encode_clear(STREAM_SID)
    assert isinstance(frame, str)
    assert " " not in frame


def test_interruption_flushes_media_and_marks_only() -> None:
    assert OutboundKind.MEDIA.flushed_by_clear
    assert OutboundKind.MARK.flushed_by_clear
    assert not OutboundKind.CLEAR.flushed_by_clear


def test_implements_the_provider_neutral_interface(serializer: TwilioSerializer) -> None:
    assert isinstance(serializer, MediaStreamSerializer)
    assert serializer.provider == "twilio"
    assert serializer.max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES == 64 * 1024


# --- bad input: the typed error names the problem -------------------------------------------

BAD_BEFORE_START: list[tuple[str, str, str | None, str]] = [
    ("{not json", "not valid JSON", None, "not-json"),
    ("[1, 2]", "must be a JSON object, got an array", None, "array"),
    ('"media"', "must be a JSON object, got a string", None, "string"),
    ('{"streamSid": "MZ1"}', "missing event", "event", "no-event"),
    ('{"event": 5}', "event must be a string, got an integer", "event", "event-not-string"),
    (
        mutated("start", "start.callSid", DELETE),
        "missing start.callSid",
        "start.callSid",
        "no-call",
    ),
    (mutated("start", "start", [1]), "start must be an object", "start", "start-not-object"),
    (
        mutated("start", "start.mediaFormat.sampleRate", "8000"),
        "start.mediaFormat.sampleRate must be an integer, got a string",
        "start.mediaFormat.sampleRate",
        "rate-as-string",
    ),
    (
        mutated("start", "start.mediaFormat", DELETE),
        "missing start.mediaFormat",
        "start.mediaFormat",
        "no-media-format",
    ),
    (
        mutated("start", "start.customParameters.token", 42),
        "start.customParameters.token must be a string",
        "start.customParameters.token",
        "parameter-not-string",
    ),
    (
        mutated("start", "start.tracks", ["inbound", None]),
        "start.tracks[1] must be a string, got null",
        "start.tracks[1]",
        "track-not-string",
    ),
    (
        mutated("start", "streamSid", "MZother"),
        "differs from start.streamSid",
        "streamSid",
        "start-sid-mismatch",
    ),
    (golden_text("media"), "'media' message before 'start'", None, "media-before-start"),
    (golden_text("mark"), "'mark' message before 'start'", None, "mark-before-start"),
    (golden_text("stop"), "'stop' message before 'start'", None, "stop-before-start"),
]


@pytest.mark.parametrize(
    ("message", "problem", "field"),
    [pytest.param(*case[:3], id=case[3]) for case in BAD_BEFORE_START],
)
def test_bad_input_before_start(
    serializer: TwilioSerializer, message: str, problem: str, field: str | None
) -> None:
    with pytest.raises(MediaStreamProtocolError, match="twilio") as caught:
        serializer.parse(message)
    assert problem in str(caught.value)
    assert caught.value.field == field


BAD_WHILE_STREAMING: list[tuple[str, str, str | None, str]] = [
    (
        mutated("media", "media.payload", "not base64!"),
        "media.payload is not valid base64",
        "media.payload",
        "bad-base64",
    ),
    (mutated("media", "media.payload", DELETE), "missing media.payload", "media.payload", "no-pl"),
    (
        mutated("media", "media.chunk", "two"),
        "media.chunk must be a non-negative integer or decimal string, got a string",
        "media.chunk",
        "chunk-not-number",
    ),
    (
        mutated("media", "media.timestamp", -5),
        "media.timestamp must be a non-negative integer",
        "media.timestamp",
        "negative-timestamp",
    ),
    (mutated("media", "streamSid", DELETE), "missing streamSid", "streamSid", "media-no-sid"),
    (
        mutated("media", "streamSid", "MZ00000000000000000000000000000000"),
        "but this stream is",
        "streamSid",
        "other-stream",
    ),
    (mutated("mark", "mark.name", DELETE), "missing mark.name", "mark.name", "mark-no-name"),
    (mutated("dtmf", "dtmf.digit", DELETE), "missing dtmf.digit", "dtmf.digit", "dtmf-no-digit"),
    (mutated("dtmf", "dtmf.digit", ""), "dtmf.digit is empty", "dtmf.digit", "dtmf-empty"),
    (golden_text("start"), "'start' message while streaming", None, "second-start"),
    (golden_text("connected"), "'connected' message while streaming", None, "late-connected"),
]


@pytest.mark.parametrize(
    ("message", "problem", "field"),
    [pytest.param(*case[:3], id=case[3]) for case in BAD_WHILE_STREAMING],
)
def test_bad_input_while_streaming(
    started: TwilioSerializer, message: str, problem: str, field: str | None
) -> None:
    with pytest.raises(MediaStreamProtocolError) as caught:
        started.parse(message)
    assert problem in str(caught.value)
    assert caught.value.field == field


@pytest.mark.parametrize("name", ["media", "mark", "dtmf", "stop"])
def test_nothing_is_accepted_after_stop(started: TwilioSerializer, name: str) -> None:
    started.parse(golden_text("stop"))
    with pytest.raises(MediaStreamProtocolError, match=f"'{name}' message after 'stop'"):
        started.parse(golden_text(name))


def test_invalid_utf8_bytes(serializer: TwilioSerializer) -> None:
    with pytest.raises(MediaStreamProtocolError, match="not valid JSON"):
        serializer.parse(b'{"event": "\xff"}')


def test_oversize_message_is_refused_before_parsing() -> None:
    serializer = TwilioSerializer(max_message_bytes=100)
    at_limit = json.dumps({"event": "x", "pad": "a" * 75})
    assert len(at_limit) == 100
    assert isinstance(serializer.parse(at_limit), UnknownStreamEvent)
    with pytest.raises(MediaStreamProtocolError, match="101 bytes exceeds the 100-byte limit"):
        serializer.parse(at_limit[:-2] + 'a"}')
    with pytest.raises(MediaStreamProtocolError, match="exceeds"):
        serializer.parse(b"{" * 101)  # not even JSON: size is checked first


def test_oversize_counts_utf8_bytes_not_characters() -> None:
    serializer = TwilioSerializer(max_message_bytes=100)
    text = json.dumps({"event": "x", "pad": "é" * 40}, ensure_ascii=False)
    assert len(text) < 100 < len(text.encode())
    with pytest.raises(MediaStreamProtocolError, match="exceeds"):
        serializer.parse(text)


def test_max_message_bytes_must_be_positive() -> None:
    with pytest.raises(UserError, match="positive"):
        TwilioSerializer(max_message_bytes=0)


def test_errors_are_protocol_errors_that_pickle(started: TwilioSerializer) -> None:
    with pytest.raises(ProtocolError) as caught:
        started.parse(mutated("media", "media.payload", "@@@"))
    clone = pickle.loads(pickle.dumps(caught.value))
    assert isinstance(clone, MediaStreamProtocolError)
    assert (str(clone), clone.field) == (str(caught.value), "media.payload")


def test_a_failed_message_leaves_the_state_unchanged(serializer: TwilioSerializer) -> None:
    with pytest.raises(MediaStreamProtocolError):
        serializer.parse(mutated("start", "start.callSid", DELETE))
    assert serializer.stream_id is None
    assert isinstance(serializer.parse(golden_text("start")), StreamStarted)


ENCODERS: list[Callable[[TwilioSerializer], str]] = [
    lambda s: s.encode_media(STREAM_SID, b"\xff" * 160),
    lambda s: s.encode_mark(STREAM_SID, 'quote " and \\ backslash'),
    lambda s: s.encode_clear(STREAM_SID),
]


@pytest.mark.parametrize("encode", ENCODERS, ids=["media", "mark", "clear"])
def test_encoded_frames_are_valid_json_with_stream_sid(
    serializer: TwilioSerializer, encode: Callable[[TwilioSerializer], str]
) -> None:
    assert json.loads(encode(serializer))["streamSid"] == STREAM_SID


# --- the short paths for media and mark agree with the checked path ----------------------------

MEDIA_VARIANTS: list[Any] = [
    {"track": "inbound", "chunk": "7", "timestamp": "140", "payload": "//8="},
    {"payload": "//8="},
    {"payload": "//8=", "chunk": 3, "timestamp": 60},
    {"payload": "//8=", "chunk": -1},
    {"payload": "//8=", "chunk": True},
    {"payload": "//8=", "timestamp": "1.5"},
    {"payload": "not base64!"},
    {"payload": 5},
    {"payload": "//8=", "track": 1},
    {"chunk": "1"},
    "not an object",
    None,
]


def outcome(serializer: TwilioSerializer, frame: str) -> object:
    try:
        return serializer.parse(frame)
    except MediaStreamProtocolError as exc:
        return ("error", str(exc), exc.field)


@pytest.mark.parametrize("media", MEDIA_VARIANTS)
@pytest.mark.parametrize("sid", [None, "other"])
def test_media_short_path_matches_the_checked_path(
    started: TwilioSerializer, media: Any, sid: str | None
) -> None:
    stream = started.stream_id if sid is None else sid
    frame = json.dumps({"event": "media", "streamSid": stream, "media": media})
    checked = copy.deepcopy(started)
    # The checked path alone: what the serializer did before the short path existed.
    checked_result: object
    try:
        checked_result = checked._on_media(
            JsonFields(json.loads(frame), context="twilio 'media' message")
        )
    except MediaStreamProtocolError as exc:
        checked_result = ("error", str(exc), exc.field)
    assert outcome(started, frame) == checked_result


@pytest.mark.parametrize("mark", [{"name": "a:20:g1:m1"}, {"name": 3}, {}, "x", {"name": 'é"\\'}])
def test_mark_short_path_matches_the_checked_path(started: TwilioSerializer, mark: Any) -> None:
    frame = json.dumps({"event": "mark", "streamSid": started.stream_id, "mark": mark})
    checked: object
    try:
        checked = copy.deepcopy(started)._on_mark(
            JsonFields(json.loads(frame), context="twilio 'mark' message")
        )
    except MediaStreamProtocolError as exc:
        checked = ("error", str(exc), exc.field)
    assert outcome(started, frame) == checked


@pytest.mark.parametrize(
    "sid, name",
    [("MZ" + "a" * 32, "item_1:20:g1:m1"), ('MZ"quote', 'naïve \\ "name"\n'), ("", "")],
)
def test_templated_frames_are_byte_identical_to_json_dumps(sid: str, name: str) -> None:
    serializer = TwilioSerializer()
    audio = bytes(range(256))
    compact = (",", ":")
    media = {
        "event": "media",
        "streamSid": sid,
        "media": {"payload": base64.b64encode(audio).decode()},
    }
    assert serializer.encode_media(sid, audio) == json.dumps(media, separators=compact)
    mark = {"event": "mark", "streamSid": sid, "mark": {"name": name}}
    assert serializer.encode_mark(sid, name) == json.dumps(mark, separators=compact)


@pytest.mark.parametrize("frame", ["[" * 60_000, '{"a":' * 9_000 + "1" + "}" * 9_000])
def test_deep_nesting_under_the_size_cap_is_a_protocol_error(
    started: TwilioSerializer, frame: str
) -> None:
    # 60,000 brackets fit in the 64 KiB cap; the standard library's parser raised RecursionError
    # on them, which nothing caught: the stream's reader died without a log line.
    with pytest.raises(MediaStreamProtocolError, match="not valid JSON"):
        started.parse(frame)


def test_excess_base64_padding_is_refused_on_every_path(started: TwilioSerializer) -> None:
    payload = base64.b64encode(b"\xff" * 159).decode() + "="  # one '=' too many
    frame = json.dumps({"event": "media", "streamSid": STREAM_SID, "media": {"payload": payload}})
    with pytest.raises(MediaStreamProtocolError, match="not valid base64"):
        started.parse(frame)
