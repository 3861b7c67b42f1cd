"""Twilio Media Streams framing (bidirectional ``<Connect><Stream>``), sans-I/O.

Message shapes follow Twilio's "Media Streams - WebSocket Messages" page (TW-WS), as transcribed
in reference/telephony.md §1.2 (inbound) and §1.3 (outbound). Every frame is a JSON text message
with an ``event`` discriminator; numeric-looking fields (``sequenceNumber``, ``chunk``,
``timestamp``) arrive as strings; every message after ``connected`` carries ``streamSid``.

One :class:`TwilioSerializer` per WebSocket: it remembers the stream's ``streamSid`` from
``start`` so that a message before ``start``, after ``stop``, or for another stream is rejected
rather than bridged into the wrong call.
"""

from __future__ import annotations

import binascii
import enum
import json
import json.encoder
from collections.abc import Callable
from typing import Any, Final

import pybase64

from services.errors import MediaStreamProtocolError
from services.telephony.media_streams.base import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DtmfReceived,
    JsonFields,
    MarkReceived,
    MediaReceived,
    MediaStreamSerializer,
    StreamConnected,
    StreamEvent,
    StreamStarted,
    StreamStopped,
    UnknownStreamEvent,
    counter_value,
    load_json_object,
)

__all__ = ["TwilioSerializer"]

# A bidirectional stream receives only the inbound track (TW-MS), so that is what an absent
# ``start.tracks`` or ``media.track`` means.
_INBOUND_TRACK: Final = "inbound"


class _Phase(enum.Enum):
    AWAITING_START = "awaiting start"
    STREAMING = "streaming"
    STOPPED = "stopped"


def _dumps(message: dict[str, Any]) -> str:
    # Compact separators: outbound media is the bulk of the traffic, spaces are pure overhead.
    return json.dumps(message, separators=(",", ":"))


# json.dumps(str) with its default ensure_ascii=True is exactly this (the C implementation).
_quote: Final[Callable[[str], str]] = json.encoder.encode_basestring_ascii


def _fast_media(media: object) -> MediaReceived | None:
    """A well-formed ``media`` object as an event, or None to let the checked path decide."""
    if type(media) is not dict:
        return None
    payload = media.get("payload")
    track = media.get("track", _INBOUND_TRACK)
    if type(payload) is not str or type(track) is not str:
        return None
    timestamp = chunk = None
    if "timestamp" in media and (timestamp := counter_value(media["timestamp"])) is None:
        return None
    if "chunk" in media and (chunk := counter_value(media["chunk"])) is None:
        return None
    try:
        audio = pybase64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return None
    return MediaReceived(payload=audio, timestamp_ms=timestamp, chunk=chunk, track=track)


class TwilioSerializer(MediaStreamSerializer):
    """Parses Twilio's six inbound messages and encodes the three outbound ones."""

    provider = "twilio"

    def __init__(self, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        super().__init__(max_message_bytes=max_message_bytes)
        self._phase = _Phase.AWAITING_START
        self._stream_sid: str | None = None
        self._sid_key = ""
        self._sid_quoted = _quote("")

    @property
    def stream_id(self) -> str | None:
        return self._stream_sid

    # --- inbound ---------------------------------------------------------------------------

    def parse(self, message: str | bytes) -> StreamEvent:
        # Twilio sends text frames only; bytes are accepted as UTF-8 JSON because some WebSocket
        # adapters hand frames over undecoded.
        data = load_json_object(message, max_bytes=self.max_message_bytes, provider="twilio")
        # media and mark are 99% of the traffic (one of each per 20 ms per call): well-formed
        # ones take a short path; anything unusual falls through to the checked path below,
        # which also produces the errors.
        if self._phase is _Phase.STREAMING and data.get("streamSid") == self._stream_sid:
            event = data.get("event")
            if event == "media":
                fast = _fast_media(data.get("media"))
                if fast is not None:
                    return fast
            elif event == "mark":
                mark = data.get("mark")
                if type(mark) is dict and type(name := mark.get("name")) is str:
                    return MarkReceived(name=name)
        event = JsonFields(data, context="twilio message").text("event")
        handler = _HANDLERS.get(event)
        if handler is None:
            return UnknownStreamEvent(raw=data)
        return handler(self, JsonFields(data, context=f"twilio {event!r} message"))

    def _on_connected(self, fields: JsonFields) -> StreamEvent:
        if self._phase is not _Phase.AWAITING_START:
            raise MediaStreamProtocolError(f"twilio 'connected' message while {self._phase.value}")
        return StreamConnected(
            protocol=fields.optional_text("protocol", ""),
            version=fields.optional_text("version", ""),
        )

    def _on_start(self, fields: JsonFields) -> StreamEvent:
        if self._phase is not _Phase.AWAITING_START:
            raise MediaStreamProtocolError(f"twilio 'start' message while {self._phase.value}")
        start = fields.child("start")
        media_format = start.child("mediaFormat")
        started = StreamStarted(
            stream_id=start.text("streamSid"),
            call_id=start.text("callSid"),
            account_id=start.text("accountSid"),
            tracks=start.text_list("tracks") if start.has("tracks") else (_INBOUND_TRACK,),
            custom_parameters=(
                start.text_map("customParameters") if start.has("customParameters") else {}
            ),
            encoding=media_format.text("encoding"),
            sample_rate=media_format.integer("sampleRate"),
            channels=media_format.integer("channels"),
        )
        top_level_sid = fields.text("streamSid")
        if top_level_sid != started.stream_id:
            raise MediaStreamProtocolError(
                f"twilio 'start' message: streamSid {top_level_sid!r} differs from "
                f"start.streamSid {started.stream_id!r}",
                field="streamSid",
            )
        self._stream_sid = started.stream_id
        self._phase = _Phase.STREAMING
        return started

    def _on_media(self, fields: JsonFields) -> StreamEvent:
        self._check_streaming(fields, "media")
        media = fields.child("media")
        return MediaReceived(
            payload=media.base64_bytes("payload"),
            timestamp_ms=media.optional_counter("timestamp"),
            chunk=media.optional_counter("chunk"),
            track=media.optional_text("track", _INBOUND_TRACK),
        )

    def _on_mark(self, fields: JsonFields) -> StreamEvent:
        self._check_streaming(fields, "mark")
        return MarkReceived(name=fields.child("mark").text("name"))

    def _on_dtmf(self, fields: JsonFields) -> StreamEvent:
        self._check_streaming(fields, "dtmf")
        digit = fields.child("dtmf").text("digit")
        if not digit:
            raise MediaStreamProtocolError(
                "twilio 'dtmf' message: dtmf.digit is empty", field="dtmf.digit"
            )
        return DtmfReceived(digit=digit)

    def _on_stop(self, fields: JsonFields) -> StreamEvent:
        self._check_streaming(fields, "stop")
        self._phase = _Phase.STOPPED
        # Twilio's stop carries only accountSid/callSid, no reason (TW-WS "Stop message").
        return StreamStopped()

    def _check_streaming(self, fields: JsonFields, event: str) -> None:
        if self._phase is _Phase.AWAITING_START:
            raise MediaStreamProtocolError(f"twilio {event!r} message before 'start'")
        if self._phase is _Phase.STOPPED:
            raise MediaStreamProtocolError(f"twilio {event!r} message after 'stop'")
        stream_sid = fields.text("streamSid")
        if stream_sid != self._stream_sid:
            raise MediaStreamProtocolError(
                f"twilio {event!r} message for streamSid {stream_sid!r}, "
                f"but this stream is {self._stream_sid!r}",
                field="streamSid",
            )

    # --- outbound (TW-WS "Send messages to Twilio"; reference §1.3) --------------------------

    # media and mark go out once per 20 ms per call: built from templates, byte for byte what
    # _dumps would produce (strings quoted by json's own encoder, base64 needs no quoting).

    def encode_media(self, stream_id: str, audio: bytes) -> str:
        """Raw μ-law 8 kHz, no file header (a WAV header would play as noise); Twilio buffers
        media and plays it in order, so any size is fine."""
        payload = pybase64.b64encode(audio).decode("ascii")
        sid = self._quoted_sid(stream_id)
        return f'{{"event":"media","streamSid":{sid},"media":{{"payload":"{payload}"}}}}'

    def encode_mark(self, stream_id: str, name: str) -> str:
        """Twilio echoes the mark when the media sent before it finished playing, at once if
        nothing is buffered, and also when a clear discards it."""
        sid = self._quoted_sid(stream_id)
        return f'{{"event":"mark","streamSid":{sid},"mark":{{"name":{_quote(name)}}}}}'

    def _quoted_sid(self, stream_id: str) -> str:
        if stream_id != self._sid_key:
            self._sid_key, self._sid_quoted = stream_id, _quote(stream_id)
        return self._sid_quoted

    def encode_clear(self, stream_id: str) -> str:
        """Empties Twilio's whole playback buffer; every pending mark is echoed at once."""
        return _dumps({"event": "clear", "streamSid": stream_id})


_HANDLERS: Final[dict[str, Callable[[TwilioSerializer, JsonFields], StreamEvent]]] = {
    "connected": TwilioSerializer._on_connected,
    "start": TwilioSerializer._on_start,
    "media": TwilioSerializer._on_media,
    "mark": TwilioSerializer._on_mark,
    "dtmf": TwilioSerializer._on_dtmf,
    "stop": TwilioSerializer._on_stop,
}
