"""The load generator's per-frame fast paths give exactly what the general code gives.

Outgoing ``media`` and ``mark`` are written from string templates and must be byte for byte what
``json.dumps`` wrote; incoming ``media`` and ``mark`` in callray's compact shape skip the JSON
parser and must parse to what the strict parser returns (or fail the same way); frame tags are
encoded and read with ``bytes.translate`` and must keep the documented layout.
"""

from __future__ import annotations

import base64
import json
import random
import zlib

import pytest

from services.errors import MediaStreamProtocolError
from services.loadgen.frame_tags import MAX_SEQUENCE, TAG_BYTES, TagScanner, tag_bytes, tag_frame
from services.loadgen.wire import AppMessage, PlayMark, PlayMedia, StreamIdentity, TwilioCallerCodec
from services.telephony.media_streams import TwilioSerializer

SID = "MZ" + "2" * 32
APP = TwilioSerializer()  # only its encoders, which are stateless
# Text that JSON escapes, or that a naive template would break on.
AWKWARD = ['"', "\\", "\t", "\n", "\x00", "\x1f", "\x7f", "ü", "€", "😀", "\u2028", "/", "'", " "]


def awkward_text(rng: random.Random) -> str:
    alphabet = [*AWKWARD, *"abcXYZ019:_-"]
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))


def dumps(message: object) -> str:
    return json.dumps(message, separators=(",", ":"))


def codec_for(stream_sid: str) -> TwilioCallerCodec:
    return TwilioCallerCodec(StreamIdentity("AC" + "0" * 32, "CA" + "1" * 32, stream_sid))


# --- outgoing templates ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(10))
def test_media_and_mark_are_byte_for_byte_what_json_dumps_writes(seed: int) -> None:
    rng = random.Random(seed)
    sid = SID if seed % 2 else awkward_text(rng)
    codec = codec_for(sid)
    for n in range(1, 101):
        chunk, timestamp = rng.randrange(10**9), rng.randrange(10**12)
        payload = rng.randbytes(rng.randrange(0, 330))
        assert codec.media(chunk, timestamp, payload) == dumps(
            {
                "event": "media",
                "sequenceNumber": str(2 * n - 1),
                "media": {
                    "track": "inbound",
                    "chunk": str(chunk),
                    "timestamp": str(timestamp),
                    "payload": base64.b64encode(payload).decode(),
                },
                "streamSid": sid,
            }
        )
        name = awkward_text(rng)
        assert codec.mark(name) == dumps(
            {
                "event": "mark",
                "sequenceNumber": str(2 * n),
                "streamSid": sid,
                "mark": {"name": name},
            }
        )


# --- incoming fast path ---------------------------------------------------------------------


def parsed(codec: TwilioCallerCodec, message: str | bytes) -> AppMessage | str:
    try:
        return codec.parse(message)
    except MediaStreamProtocolError as exc:
        return f"error: {exc} ({exc.field})"


def strictly_parsed(codec: TwilioCallerCodec, message: str | bytes) -> AppMessage | str:
    try:
        return codec._parse_any(message)
    except MediaStreamProtocolError as exc:
        return f"error: {exc} ({exc.field})"


def app_messages(rng: random.Random, sid: str) -> list[str | bytes]:
    """Media and marks as callray sends them, and near misses of every kind."""
    audio = rng.randbytes(rng.randrange(0, 200))
    payload = base64.b64encode(audio).decode()
    name = awkward_text(rng)
    media = APP.encode_media(sid, audio)
    mark = APP.encode_mark(sid, name)
    head = '{"event":"media","streamSid":' + json.dumps(sid) + ',"media":{"payload":"'
    mark_head = '{"event":"mark","streamSid":' + json.dumps(sid) + ',"mark":{"name":"'
    return [
        media,
        mark,
        media.encode(),
        json.dumps(json.loads(media)),  # with spaces
        json.dumps({"streamSid": sid, "event": "media", "media": {"payload": payload}}),
        APP.encode_media(sid + "x", audio),
        APP.encode_mark("MZ" + "9" * 32, name),
        head + payload[:-1] + '"}}',  # truncated base64
        head + payload + '="}}',
        head + "=" + payload + '"}}',
        head + payload.replace("A", "-") + '"}}',
        head + '"}}' if rng.random() < 0.5 else head + "}}",  # the tail overlapping the head
        head + payload + '","x":"y"}}',  # more keys in the object
        head + payload + '"}} ',
        head.replace("payload", "pay\\u006coad") + payload + '"}}',
        mark_head + '"}}',
        mark_head + "a\\u0041" + '"}}',  # an escape: the strict parser decodes it
        mark_head + "a\\/b" + '"}}',
        mark_head + "a\tb" + '"}}',  # a raw control character: not JSON
        mark_head + 'a","b":"c' + '"}}',
        mark_head + name + '"}',
        APP.encode_clear(sid),
        '{"event":"dtmf","streamSid":' + json.dumps(sid) + "}",
        "[]",
        "",
    ]


@pytest.mark.parametrize("seed", range(20))
def test_the_fast_path_parses_exactly_like_the_strict_parser(seed: int) -> None:
    rng = random.Random(seed)
    sid = SID if seed % 2 else awkward_text(rng)
    codec = codec_for(sid)
    for _ in range(20):
        for message in app_messages(rng, sid):
            assert parsed(codec, message) == strictly_parsed(codec, message), message


def test_what_callray_sends_takes_the_fast_path() -> None:
    # If the gateway's serializer changes its spelling, this fails rather than the load
    # generator silently slowing down.
    codec = codec_for(SID)
    audio = bytes(range(160))
    assert codec._parse_common(APP.encode_media(SID, audio)) == PlayMedia(audio)
    name = "item_C0ffee5eed:1240:g3:m17"
    assert codec._parse_common(APP.encode_mark(SID, name)) == PlayMark(name)
    assert codec._parse_common(APP.encode_mark(SID, 'say "hi"')) is None  # escaped: strict


def test_the_size_limit_applies_before_the_fast_path() -> None:
    codec = TwilioCallerCodec(StreamIdentity("AC1", "CA1", SID), max_message_bytes=100)
    with pytest.raises(MediaStreamProtocolError, match="exceeds the 100-byte limit"):
        codec.parse(APP.encode_media(SID, bytes(160)))


# --- frame tags -----------------------------------------------------------------------------


def reference_tag(sequence: int) -> bytes:
    """The layout in frame_tags' docstring, written out plainly."""
    check = zlib.crc32(sequence.to_bytes(3, "big")) & 0xFF
    nibbles = [(sequence >> shift) & 0xF for shift in (20, 16, 12, 8, 4, 0)]
    nibbles += [check >> 4, check & 0xF]
    return b"\xf5\x7a\xf5\x7a" + bytes(0xF0 | n for n in nibbles)


@pytest.mark.parametrize("sequence", [0, 1, 15, 16, 255, 0x123456, 4095, MAX_SEQUENCE])
def test_tags_have_the_documented_layout_and_read_back(sequence: int) -> None:
    assert tag_bytes(sequence) == reference_tag(sequence)
    frame = tag_frame(b"\xff" * 160, sequence)
    assert frame[:TAG_BYTES] == reference_tag(sequence) and frame[TAG_BYTES:] == b"\xff" * 148
    assert TagScanner().feed(frame) == [(TAG_BYTES, sequence)]


def test_random_tags_round_trip_split_anywhere() -> None:
    rng = random.Random(7)
    sequences = [rng.randrange(MAX_SEQUENCE + 1) for _ in range(300)]
    stream = b"".join(tag_frame(rng.randbytes(160), s) for s in sequences)
    scanner, seen, offset = TagScanner(), [], 0
    while offset < len(stream):
        size = rng.randrange(1, 40)
        seen += [s for _, s in scanner.feed(stream[offset : offset + size])]
        offset += size
    assert seen == sequences


def test_tags_out_of_range_or_damaged_are_rejected() -> None:
    for sequence in (-1, MAX_SEQUENCE + 1):
        with pytest.raises(ValueError, match="outside"):
            tag_bytes(sequence)
    tag = tag_bytes(0x0A0B0C)
    for index in range(4, TAG_BYTES):
        not_a_digit = tag[:index] + b"\x7f" + tag[index + 1 :]
        assert TagScanner().feed(not_a_digit + b"\xff" * 20) == []
    wrong_check = tag[:-1] + bytes([tag[-1] ^ 0x01])
    assert TagScanner().feed(wrong_check + b"\xff" * 20) == []
