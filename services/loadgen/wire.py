"""Twilio's side of a Media Streams WebSocket, sans-I/O: what a simulated caller sends and reads.

This is the mirror image of :class:`~services.telephony.media_streams.TwilioSerializer`, which is
the ingress side: here ``connected``, ``start``, ``media``, ``mark`` and ``stop`` are *encoded*
with exactly the shapes of reference/telephony.md §1.2 (numeric-looking fields as strings,
``sequenceNumber`` counting every message after ``connected``), and the three messages an app may
send (§1.3: ``media``, ``mark``, ``clear``) are *parsed*, with the shared JSON field readers so
every error names the JSON path. The unit tests round-trip both directions through
``TwilioSerializer``.

``media`` and ``mark``, which a call sends and receives 50 times a second, skip the general JSON
code on the hot path: they are written from templates and, in the shape callray writes them,
read by string slicing, with the same bytes and values as the general code (the unit tests
compare the two on random and malformed input).
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from binascii import b2a_base64
from collections.abc import Mapping
from json.encoder import encode_basestring_ascii
from typing import Any, Final, TypeAlias

import pybase64

from services.errors import MediaStreamProtocolError
from services.telephony.media_streams.base import (
    DEFAULT_MAX_MESSAGE_BYTES,
    JsonFields,
    UnknownStreamEvent,
    load_json_object,
)

__all__ = [
    "AppMessage",
    "PlayClear",
    "PlayMark",
    "PlayMedia",
    "StreamIdentity",
    "TwilioCallerCodec",
    "new_sid",
]

# Twilio's media format is fixed (TW-WS "Start message"; reference §1.2).
_MEDIA_FORMAT: Final = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
_TRACK: Final = "inbound"


def new_sid(prefix: str) -> str:
    """A Twilio-shaped SID: two letters (``CA`` call, ``AC`` account, ``MZ`` stream) + 32 hex."""
    return prefix + secrets.token_hex(16)


@dataclasses.dataclass(frozen=True, slots=True)
class StreamIdentity:
    """The SIDs of one simulated call and its media stream."""

    account_sid: str
    call_sid: str
    stream_sid: str

    @classmethod
    def generate(cls, account_sid: str) -> StreamIdentity:
        return cls(account_sid=account_sid, call_sid=new_sid("CA"), stream_sid=new_sid("MZ"))


@dataclasses.dataclass(frozen=True, slots=True)
class PlayMedia:
    """The app sent audio to play (raw μ-law, base64-decoded)."""

    payload: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class PlayMark:
    """The app asks for ``name`` back once the audio sent before it has played."""

    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class PlayClear:
    """The app asks to drop all buffered audio (and get every pending mark back at once)."""


AppMessage: TypeAlias = PlayMedia | PlayMark | PlayClear | UnknownStreamEvent


def _dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


# ``media`` and ``mark`` go out 50 times a second per call, so they are written from templates
# of what ``_dumps`` makes of them: same keys, same order, same separators, byte for byte (the
# unit tests compare). The only free text, the stream SID and a mark's name, goes through the
# string encoder ``json.dumps`` itself uses; the rest is decimal digits and base64, which JSON
# never escapes.
_MEDIA_HEAD: Final = '{"event":"media","sequenceNumber":"'
_MEDIA_TRACK: Final = '","media":{"track":"' + _TRACK + '","chunk":"'
_MARK_HEAD: Final = '{"event":"mark","sequenceNumber":"'


def _between(message: str, frame: tuple[str, str]) -> str | None:
    """What ``message`` holds between ``frame``'s head and tail, if it has both (apart)."""
    head, tail = frame
    if (
        len(message) >= len(head) + len(tail)
        and message.startswith(head)
        and message.endswith(tail)
    ):
        return message[len(head) : len(message) - len(tail)]
    return None


class TwilioCallerCodec:
    """Encodes what Twilio sends on one stream and parses what the app sends back."""

    def __init__(
        self, identity: StreamIdentity, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> None:
        self.identity = identity
        self.max_message_bytes = max_message_bytes
        self._sequence = 0
        sid = encode_basestring_ascii(identity.stream_sid)  # with its quotes
        self._media_tail = '"},"streamSid":' + sid + "}"
        self._mark_middle = '","streamSid":' + sid + ',"mark":{"name":'
        # The app's media and mark in the compact shape json.dumps gives callray's own
        # serializer, on this stream: (head, tail) around the payload or the name.
        self._app_media = ('{"event":"media","streamSid":' + sid + ',"media":{"payload":"', '"}}')
        self._app_mark = ('{"event":"mark","streamSid":' + sid + ',"mark":{"name":"', '"}}')

    def _next_sequence(self) -> str:
        self._sequence += 1
        return str(self._sequence)

    # --- what Twilio sends (reference §1.2) ----------------------------------------------------

    def connected(self) -> str:
        # The first message; it has neither sequenceNumber nor streamSid (TW-WS).
        return _dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    def start(self, custom_parameters: Mapping[str, str]) -> str:
        ids = self.identity
        return _dumps(
            {
                "event": "start",
                "sequenceNumber": self._next_sequence(),
                "start": {
                    "accountSid": ids.account_sid,
                    "streamSid": ids.stream_sid,
                    "callSid": ids.call_sid,
                    "tracks": [_TRACK],
                    "customParameters": dict(custom_parameters),
                    "mediaFormat": dict(_MEDIA_FORMAT),
                },
                "streamSid": ids.stream_sid,
            }
        )

    def media(self, chunk: int, timestamp_ms: int, payload: bytes) -> str:
        """``chunk`` counts media messages from 1; ``timestamp_ms`` is ms since stream start."""
        encoded = b2a_base64(payload, newline=False).decode("ascii")
        return (
            f"{_MEDIA_HEAD}{self._next_sequence()}{_MEDIA_TRACK}{chunk}"
            f'","timestamp":"{timestamp_ms}","payload":"{encoded}{self._media_tail}'
        )

    def mark(self, name: str) -> str:
        """The echo of an app's mark: its audio has played, or a clear discarded it."""
        return (
            f"{_MARK_HEAD}{self._next_sequence()}{self._mark_middle}"
            f"{encode_basestring_ascii(name)}}}}}"
        )

    def dtmf(self, digit: str) -> str:
        """The caller pressed a key (``tests/fixtures/twilio/dtmf.json``)."""
        return _dumps(
            {
                "event": "dtmf",
                "streamSid": self.identity.stream_sid,
                "sequenceNumber": self._next_sequence(),
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
        )

    def stop(self) -> str:
        ids = self.identity
        return _dumps(
            {
                "event": "stop",
                "sequenceNumber": self._next_sequence(),
                "stop": {"accountSid": ids.account_sid, "callSid": ids.call_sid},
                "streamSid": ids.stream_sid,
            }
        )

    # --- what the app sends (reference §1.3) ---------------------------------------------------

    def parse(self, message: str | bytes) -> AppMessage:
        """One app message as a typed value; a well-formed unknown event is
        :class:`UnknownStreamEvent`, anything malformed raises
        :class:`~services.errors.MediaStreamProtocolError`."""
        # isascii() is O(1) on str, and makes len() the size in bytes.
        if type(message) is str and message.isascii() and len(message) <= self.max_message_bytes:
            common = self._parse_common(message)
            if common is not None:
                return common
        return self._parse_any(message)

    def _parse_common(self, message: str) -> PlayMedia | PlayMark | None:
        """The app's media or mark in the shape callray sends them, without a JSON parser;
        ``None`` for anything else, including the same message spelt another way.

        With the head and tail in place, a middle holding no quote, backslash or control
        character makes the message exactly that JSON object, with the middle as the string's
        value: the result is what :meth:`_parse_any` returns (the unit tests compare).
        """
        payload = _between(message, self._app_media)
        if payload is not None:
            try:
                # The decoder the strict path uses (JsonFields.base64_bytes), so the two agree on
                # every payload, padding errors included.
                return PlayMedia(pybase64.b64decode(payload, validate=True))
            except ValueError:  # binascii.Error
                return None
        name = _between(message, self._app_mark)
        # The message is ASCII, so isprintable() means no control characters.
        if name is not None and name.isprintable() and '"' not in name and "\\" not in name:
            return PlayMark(name)
        return None

    def _parse_any(self, message: str | bytes) -> AppMessage:
        data = load_json_object(message, max_bytes=self.max_message_bytes, provider="twilio")
        event = JsonFields(data, context="app message").text("event")
        if event not in ("media", "mark", "clear"):
            return UnknownStreamEvent(raw=data)
        fields = JsonFields(data, context=f"app {event!r} message")
        stream_sid = fields.text("streamSid")
        if stream_sid != self.identity.stream_sid:
            raise MediaStreamProtocolError(
                f"app {event!r} message for streamSid {stream_sid!r}, "
                f"but this stream is {self.identity.stream_sid!r}",
                field="streamSid",
            )
        if event == "media":
            return PlayMedia(payload=fields.child("media").base64_bytes("payload"))
        if event == "mark":
            return PlayMark(name=fields.child("mark").text("name"))
        return PlayClear()
