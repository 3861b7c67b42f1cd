"""Twilio's side of a Media Streams WebSocket, sans-I/O: what a simulated caller sends and reads.

This is the mirror image of :class:`~services.telephony.media_streams.TwilioSerializer`, which is
the ingress side: here ``connected``, ``start``, ``media``, ``mark`` and ``stop`` are *encoded*
with exactly the shapes of reference/telephony.md §1.2 (numeric-looking fields as strings,
``sequenceNumber`` counting every message after ``connected``), and the three messages an app may
send (§1.3: ``media``, ``mark``, ``clear``) are *parsed*, with the shared JSON field readers so
every error names the JSON path. The unit tests round-trip both directions through
``TwilioSerializer``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import secrets
from collections.abc import Mapping
from typing import Any, Final, TypeAlias

from services.errors import MediaStreamProtocolError
from services.telephony.media_streams.base import (
    DEFAULT_MAX_MESSAGE_BYTES,
    JsonFields,
    UnknownStreamEvent,
    load_json_object,
)

__all__ = [
    "AppMessage",
    "ClearPlayback",
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
class ClearPlayback:
    """The app asks to drop all buffered audio (and get every pending mark back at once)."""


AppMessage: TypeAlias = PlayMedia | PlayMark | ClearPlayback | UnknownStreamEvent


def _dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


class TwilioCallerCodec:
    """Encodes what Twilio sends on one stream and parses what the app sends back."""

    def __init__(
        self, identity: StreamIdentity, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> None:
        self.identity = identity
        self.max_message_bytes = max_message_bytes
        self._sequence = 0

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
        return _dumps(
            {
                "event": "media",
                "sequenceNumber": self._next_sequence(),
                "media": {
                    "track": _TRACK,
                    "chunk": str(chunk),
                    "timestamp": str(timestamp_ms),
                    "payload": base64.b64encode(payload).decode("ascii"),
                },
                "streamSid": self.identity.stream_sid,
            }
        )

    def mark(self, name: str) -> str:
        """The echo of an app's mark: its audio has played, or a clear discarded it."""
        return _dumps(
            {
                "event": "mark",
                "sequenceNumber": self._next_sequence(),
                "streamSid": self.identity.stream_sid,
                "mark": {"name": name},
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
        return ClearPlayback()
