"""The provider-neutral media-stream interface: typed inbound events and the serializer contract.

Twilio, Telnyx, Plivo, Exotel and Vonage all carry a call's audio over one WebSocket with the same
handful of messages (reference/telephony.md §3): connected, start, media, playback ack ("mark"),
DTMF, stop inbound; media, mark and clear outbound. A provider is one :class:`MediaStreamSerializer`
subclass in one file: it turns each received frame into one :data:`StreamEvent` and each command
into one frame to send. It is sans-I/O: no sockets, no clock, no REST calls (hang-up by REST
belongs to the adapter that owns the HTTP client).

Interruption (barge-in) semantics, the same for every provider:

* ``clear`` flushes every ``media`` and ``mark`` sent before it: the provider drops the audio it
  has buffered and echoes every pending mark at once (Twilio: reference §1.3, TW-WS "clear"), so a
  mark echo means "played **or** discarded"; the session tells them apart by its own state
  (a playback generation, reference §2.2).
* An adapter that queues frames before sending must drop its own queued ``media`` and ``mark``
  frames too, then send ``clear`` ahead of anything queued later
  (:attr:`OutboundKind.flushed_by_clear`).
* Nothing queued *after* a clear is affected: new media and marks play normally.

The field readers at the end (:class:`JsonFields`, :func:`load_json_object`) are shared by the
JSON-based providers so that every error names the JSON path of the problem.
"""

from __future__ import annotations

import abc
import binascii
import dataclasses
import enum
from collections.abc import Mapping
from typing import Any, Final, NoReturn, TypeAlias

import orjson
import pybase64

from services.errors import MediaStreamProtocolError, UserError
from services.json_kinds import json_kind

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DtmfReceived",
    "JsonFields",
    "MarkReceived",
    "MediaReceived",
    "MediaStreamSerializer",
    "OutboundKind",
    "StreamConnected",
    "StreamEvent",
    "StreamStarted",
    "StreamStopped",
    "UnknownStreamEvent",
    "counter_value",
    "load_json_object",
]

#: Largest inbound frame accepted. Twilio documents no limit (reference §1.5); 64 KiB is the cap
#: openai-agents-python chose (PR #5110) and holds ~6 s of base64 μ-law, 300 times a 20 ms frame.
DEFAULT_MAX_MESSAGE_BYTES: Final = 64 * 1024


# --- inbound events -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class StreamConnected:
    """The socket is up; no call details yet (Twilio ``connected``)."""

    protocol: str = ""
    version: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class StreamStarted:
    """The stream began: who is calling and in which audio format (Twilio ``start``).

    ``custom_parameters`` are the ``<Parameter>`` pairs of the TwiML (or the provider's
    equivalent), where the single-use stream token arrives (reference §1.6).
    """

    stream_id: str
    call_id: str
    account_id: str
    tracks: tuple[str, ...]
    custom_parameters: dict[str, str]
    encoding: str
    sample_rate: int
    channels: int


@dataclasses.dataclass(frozen=True, slots=True)
class MediaReceived:
    """Caller audio: ``payload`` is the raw audio, base64-decoded, in the ``encoding`` announced by
    :class:`StreamStarted` (μ-law 8 kHz mono for Twilio). ``timestamp_ms`` is the presentation time
    since stream start and ``chunk`` the provider's 1-based counter, when the provider sends them;
    gaps in either mean lost or withheld audio (reference §1.4)."""

    payload: bytes
    timestamp_ms: int | None
    chunk: int | None
    track: str


@dataclasses.dataclass(frozen=True, slots=True)
class MarkReceived:
    """The echo of a mark we sent: the audio before it was played, or flushed by a clear."""

    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class DtmfReceived:
    """The caller pressed a key (``0``-``9``, ``*``, ``#``, ``A``-``D``)."""

    digit: str


@dataclasses.dataclass(frozen=True, slots=True)
class StreamStopped:
    """The stream ended (call hung up or stream stopped). ``reason`` only if the provider says."""

    reason: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class UnknownStreamEvent:
    """A well-formed message of a type this serializer does not know; log it, never crash."""

    raw: dict[str, Any]


StreamEvent: TypeAlias = (
    StreamConnected
    | StreamStarted
    | MediaReceived
    | MarkReceived
    | DtmfReceived
    | StreamStopped
    | UnknownStreamEvent
)


# --- outbound commands ----------------------------------------------------------------------


class OutboundKind(enum.Enum):
    """The outbound message types, with what an interruption does to each."""

    MEDIA = "media"
    MARK = "mark"
    CLEAR = "clear"

    @property
    def flushed_by_clear(self) -> bool:
        """Whether a clear discards this message when it was sent (or queued) before the clear.

        Media and marks are flushed: the provider drops buffered audio and echoes pending marks
        at once. The clear itself is what survives; anything queued after it is untouched.
        """
        return self is not OutboundKind.CLEAR


class MediaStreamSerializer(abc.ABC):
    """One provider's media-stream framing for one connection (instances hold per-stream state).

    :meth:`parse` raises :class:`~services.errors.MediaStreamProtocolError` naming what was wrong
    (not JSON, not an object, a missing or mistyped field with its JSON path, bad base64, a
    message out of order, a frame over ``max_message_bytes``). Well-formed messages of unknown
    type become :class:`UnknownStreamEvent`.

    The ``encode_*`` methods return a text frame (``str``) or, for binary-audio providers such
    as Vonage, a binary frame (``bytes``); the adapter sends whichever it gets as it is.
    """

    provider: str = ""

    def __init__(self, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        if max_message_bytes <= 0:
            raise UserError(f"max_message_bytes must be positive, got {max_message_bytes}")
        self.max_message_bytes = max_message_bytes

    @property
    @abc.abstractmethod
    def stream_id(self) -> str | None:
        """The stream id from the start message, or ``None`` before it."""

    @abc.abstractmethod
    def parse(self, message: str | bytes) -> StreamEvent:
        """Parse one received WebSocket frame into one typed event."""

    @abc.abstractmethod
    def encode_media(self, stream_id: str, audio: bytes) -> str | bytes:
        """A frame that plays ``audio`` (raw, in the stream's encoding, no file header)."""

    @abc.abstractmethod
    def encode_mark(self, stream_id: str, name: str) -> str | bytes:
        """A frame asking the provider to echo ``name`` once the audio sent before it is played."""

    @abc.abstractmethod
    def encode_clear(self, stream_id: str) -> str | bytes:
        """A frame that flushes all buffered audio and pending marks (barge-in)."""


# --- helpers for JSON-based providers -------------------------------------------------------


def load_json_object(message: str | bytes, *, max_bytes: int, provider: str) -> dict[str, Any]:
    """Decode one frame as a JSON object, after checking its size (before parsing, so an oversize
    frame costs no JSON work)."""
    # Characters are bytes for ASCII text (all of Twilio's JSON but custom parameters).
    if isinstance(message, bytes) or message.isascii():
        size = len(message)
    else:
        size = len(message.encode())
    if size > max_bytes:
        raise MediaStreamProtocolError(
            f"{provider} message of {size} bytes exceeds the {max_bytes}-byte limit"
        )
    try:
        # orjson: a third of json.loads's time on a media frame (bench/codecs.py), and nesting
        # past 1,024 levels is a decode error, not a RecursionError.
        data = orjson.loads(message)
    except (ValueError, UnicodeDecodeError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise MediaStreamProtocolError(f"{provider} message is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise MediaStreamProtocolError(
            f"{provider} message must be a JSON object, got {json_kind(data)}"
        )
    return data


def counter_value(value: object) -> int | None:
    """``value`` as a counter (a decimal string or a non-negative integer), else None."""
    if isinstance(value, str) and value.isascii() and value.isdecimal():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


class JsonFields:
    """Typed reads from one JSON object; every problem is raised with the field's JSON path."""

    __slots__ = ("_context", "_obj", "_path")

    def __init__(self, obj: Mapping[str, Any], *, context: str, path: str = "") -> None:
        self._obj = obj
        self._context = context  # e.g. "twilio 'start' message", the start of every error
        self._path = path

    def has(self, key: str) -> bool:
        return key in self._obj

    def child(self, key: str) -> JsonFields:
        """The nested object under ``key`` (required)."""
        value = self._require(key)
        if not isinstance(value, dict):
            self._wrong_type(key, "an object", value)
        return JsonFields(value, context=self._context, path=self.path_of(key))

    def text(self, key: str) -> str:
        value = self._require(key)
        if not isinstance(value, str):
            self._wrong_type(key, "a string", value)
        return value

    def optional_text(self, key: str, default: str) -> str:
        return self.text(key) if key in self._obj else default

    def integer(self, key: str) -> int:
        value = self._require(key)
        if not isinstance(value, int) or isinstance(value, bool):
            self._wrong_type(key, "an integer", value)
        return value

    def optional_counter(self, key: str) -> int | None:
        """A non-negative integer that providers send as a decimal string ("5") or a number."""
        if key not in self._obj:
            return None
        value = counter_value(self._obj[key])
        if value is None:
            self._wrong_type(key, "a non-negative integer or decimal string", self._obj[key])
        return value

    def text_list(self, key: str) -> tuple[str, ...]:
        value = self._require(key)
        if not isinstance(value, list):
            self._wrong_type(key, "an array of strings", value)
        for index, item in enumerate(value):
            if not isinstance(item, str):
                self._wrong_type(f"{key}[{index}]", "a string", item)
        return tuple(value)

    def text_map(self, key: str) -> dict[str, str]:
        members = self.child(key)
        for name, value in members._obj.items():
            if not isinstance(value, str):
                members._wrong_type(name, "a string", value)
        return dict(members._obj)

    def base64_bytes(self, key: str) -> bytes:
        encoded = self.text(key)
        try:
            # validate=True: reject non-alphabet characters instead of silently skipping them.
            return pybase64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MediaStreamProtocolError(
                f"{self._context}: {self.path_of(key)} is not valid base64 ({exc})",
                field=self.path_of(key),
            ) from exc

    def path_of(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def _require(self, key: str) -> Any:
        try:
            return self._obj[key]
        except KeyError:
            raise MediaStreamProtocolError(
                f"{self._context} is missing {self.path_of(key)}", field=self.path_of(key)
            ) from None

    def _wrong_type(self, key: str, expected: str, value: object) -> NoReturn:
        path = self.path_of(key)
        raise MediaStreamProtocolError(
            f"{self._context}: {path} must be {expected}, got {json_kind(value)}", field=path
        )
