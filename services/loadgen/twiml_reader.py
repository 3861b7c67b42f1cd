"""Reading the voice webhook's TwiML answer the way Twilio acts on it, for simulated callers.

The counterpart of :mod:`services.telephony.twiml`: ``<Response><Connect><Stream url>`` with
``<Parameter name value/>`` children opens a bidirectional media stream whose ``start`` message
carries the parameters back (reference/telephony.md §1.1); any other answer (e.g. the busy
``<Say>…</Say><Hangup/>``) means the call never reaches a stream, which a load test counts as
rejected.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from services.errors import ProtocolError, UserError

__all__ = ["Rejected", "StreamAnswer", "VoiceAnswer", "parse_voice_answer", "rebase_stream_url"]

#: A TwiML document is small; anything bigger is a bug on the other side (and XML parsing cost).
MAX_TWIML_BYTES: Final = 64 * 1024
_WEBSOCKET_SCHEMES: Final = {"http": "ws", "https": "wss"}


@dataclasses.dataclass(frozen=True, slots=True)
class StreamAnswer:
    """``<Connect><Stream>``: connect the media WebSocket to ``url`` with ``parameters``."""

    url: str
    parameters: dict[str, str]


@dataclasses.dataclass(frozen=True, slots=True)
class Rejected:
    """Any other TwiML: the verbs it used (e.g. ``("Say", "Hangup")``) and what it said."""

    verbs: tuple[str, ...]
    say: str = ""


VoiceAnswer = StreamAnswer | Rejected


def parse_voice_answer(twiml: str | bytes) -> VoiceAnswer:
    """Parse a voice webhook's TwiML; raise :class:`ProtocolError` if it is not TwiML at all."""
    if len(twiml) > MAX_TWIML_BYTES:
        raise ProtocolError(f"TwiML answer of {len(twiml)} bytes exceeds {MAX_TWIML_BYTES}")
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError as exc:
        raise ProtocolError(f"TwiML answer is not well-formed XML: {exc}") from exc
    if root.tag != "Response":
        raise ProtocolError(f"TwiML root element must be <Response>, got <{root.tag}>")
    stream = root.find("Connect/Stream")
    if stream is None:
        say = " ".join((el.text or "").strip() for el in root.iter("Say")).strip()
        return Rejected(verbs=tuple(child.tag for child in root), say=say)
    url = stream.get("url")
    if not url:
        raise ProtocolError("TwiML <Stream> has no url attribute", field="Connect/Stream@url")
    parameters: dict[str, str] = {}
    for parameter in stream.iter("Parameter"):
        name = parameter.get("name")
        if name is None:
            raise ProtocolError("TwiML <Parameter> has no name", field="Stream/Parameter@name")
        parameters[name] = parameter.get("value", "")
    return StreamAnswer(url=url, parameters=parameters)


def rebase_stream_url(stream_url: str, base_url: str) -> str:
    """``stream_url``'s path on ``base_url``'s host, with ``http(s)`` turned into ``ws(s)``.

    The ingress writes its *public* ``wss://`` URL into the TwiML (what Twilio would reach,
    through a TLS-terminating proxy), while the load generator talks to the ingress directly at
    ``base_url``. Connecting where the webhook was reached keeps the media leg on that path.
    """
    base = urlsplit(base_url)
    if base.scheme not in _WEBSOCKET_SCHEMES or not base.netloc:
        raise UserError(f"base URL must be an absolute http(s) URL, got {base_url!r}")
    stream = urlsplit(stream_url)
    path = stream.path or "/"
    return urlunsplit((_WEBSOCKET_SCHEMES[base.scheme], base.netloc, path, stream.query, ""))
