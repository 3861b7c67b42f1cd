"""The one exception tree of callray.

    CallrayError
    ├── ConfigError               a setting is missing or malformed
    ├── ProtocolError             input on a wire was wrong; the message says what and where
    │   ├── RealtimeProtocolError     a Realtime event (either direction)
    │   ├── AudioFormatError          audio bytes or an audio format description
    │   ├── MediaStreamProtocolError  a telephony media-stream message (Twilio, ...) or its token
    │   │   └── StreamTokenError          a stream token was refused (``reason``)
    │   ├── ChannelError              a media-channel message (services.media.channel)
    │   ├── SdpError                  an SDP offer we do not take (WebRTC, SIP); safe to show
    │   ├── SipError                  a SIP message we cannot take (``status``: the reply's code)
    │   └── RtpError                  an RTP packet dropped unparsed (``reason``: a metric label)
    ├── TransportError            a connection could not be used
    │   ├── TransportClosed           the peer or we closed it (code, reason)
    │   ├── NotConnected              an operation needs an open connection
    │   └── ActorGone                 a Ray actor is dead or did not answer in time
    ├── CallSetupError            a call could not be opened (``reason``: model_unreachable, ...)
    ├── ProviderError             the model provider answered with an error (``retryable``)
    ├── ServiceStartError         an embedded service (e.g. redis-server) did not come up
    ├── ToolError                 raised by a tool; its message is shown to the model
    └── UserError                 the library was used the wrong way (bad argument, wrong state)

Every exception pickles with its attributes, because exceptions cross actor boundaries.
"""

from __future__ import annotations

from typing import Any


class CallrayError(Exception):
    """Root of every exception callray raises on purpose."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions with keyword-only attributes do not pickle by default; rebuild from __dict__.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[CallrayError], args: tuple[Any, ...], state: dict[str, Any]) -> CallrayError:
    exc = cls.__new__(cls)
    Exception.__init__(exc, *args)
    exc.__dict__.update(state)
    return exc


class ConfigError(CallrayError):
    """A setting is missing or has a value we cannot use."""


class UserError(CallrayError):
    """The API was called with a wrong argument or in a wrong state."""


class ProtocolError(CallrayError):
    """Input received on a wire is malformed or out of order.

    ``field`` names the offending part (a JSON path such as ``session.audio.input.format``) when
    one is known, so that logs and error replies say exactly what was wrong.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class RealtimeProtocolError(ProtocolError):
    """A Realtime API event could not be parsed or is not valid for the current state."""


class AudioFormatError(ProtocolError):
    """Audio bytes or an audio format description cannot be used."""


class MediaStreamProtocolError(ProtocolError):
    """A telephony media-stream message (Twilio Media Streams and the like) is malformed, too
    large or out of order for the stream's state; ``field`` is its JSON path when one is known."""


class StreamTokenError(MediaStreamProtocolError):
    """A stream token was refused; ``reason`` says why (one of
    :data:`services.telephony.stream_tokens.StreamTokenRejection`)."""

    def __init__(self, message: str, *, reason: str, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.reason = reason


class ChannelError(ProtocolError):
    """A media-channel message that cannot be used (malformed, unknown kind, wrong version, bad
    key); the connection carrying it is closed with this text, or the message skipped."""


class SdpError(ProtocolError):
    """An SDP offer we do not take (malformed, no usable audio, insecure); the message names
    the reason and is safe to send back to the peer."""


class SipError(ProtocolError):
    """A SIP message we cannot take. ``status`` is the response it earns (400 malformed, 513
    too large, 501 unknown method, 420 unsupported extension, ...) or 0 when it is dropped
    without one (an unparseable datagram, a response to nothing); the message is safe to put
    in a ``Warning`` header or a log line and never holds the message's body."""

    def __init__(self, message: str, *, status: int = 400, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.status = status


class RtpError(ProtocolError):
    """An RTP packet dropped before use; ``reason`` is a low-cardinality label for the drop
    counter (``version``, ``short``, ``csrc``, ``extension``, ``padding``, ``oversize``, ...)."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class TransportError(CallrayError):
    """A connection could not be opened or used."""


class NotConnected(TransportError):
    """The operation needs an open connection and there is none."""


class TransportClosed(TransportError):
    """The connection was closed, by the peer or by us."""

    def __init__(self, message: str, *, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class ActorGone(TransportError):
    """A Ray actor is dead or did not answer in time."""


class CallSetupError(CallrayError):
    """A call could not be opened (model unreachable, unknown agent, duplicate id, host full)."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ProviderError(CallrayError):
    """The model provider reported an error.

    ``retryable`` says whether the same request may succeed later (rate limits, server errors,
    dropped connections) or never will (invalid request, authentication).
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        code: str | None = None,
        error_type: str | None = None,
        param: str | None = None,
        event_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.code = code
        self.error_type = error_type
        self.param = param
        self.event_id = event_id


class ServiceStartError(CallrayError):
    """A service we start ourselves (the embedded redis-server) exited or never answered.

    The message ends with the tail of the service's log, which usually says why.
    """


class ToolError(CallrayError):
    """Raised by a tool to tell the model what went wrong; the message is sent to the model.

    Any other exception from a tool is logged and reported to the model as a generic failure,
    so internal details never reach the caller.
    """
