"""TwiML documents our voice webhook answers with: bridge the call to a media stream, or say busy.

Built with :mod:`xml.etree.ElementTree`, so every attribute and text is XML-escaped; nothing here
formats XML by hand. Rules from Twilio's TwiML ``<Stream>`` page as quoted in
reference/telephony.md §1.1.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

from services.errors import UserError

__all__ = ["busy_twiml", "connect_stream_twiml"]

_XML_DECLARATION: Final = '<?xml version="1.0" encoding="UTF-8"?>'
# Each <Parameter> name plus value must stay under 500 characters (TwiML <Stream>, reference §1.1).
_MAX_PARAMETER_CHARS: Final = 500


def connect_stream_twiml(stream_url: str, parameters: Mapping[str, str] | None = None) -> str:
    """``<Response><Connect><Stream url=…><Parameter …/>…</Stream></Connect></Response>``.

    ``<Connect>`` (not ``<Start>``) makes the stream bidirectional, so we can play audio back
    (reference §1.1). ``parameters`` come back in ``start.customParameters``; that is how the
    single-use stream token reaches the WebSocket, because Twilio drops any query string on
    ``url`` (error 31920).
    """
    _check_stream_url(stream_url)
    response = ET.Element("Response")
    stream = ET.SubElement(ET.SubElement(response, "Connect"), "Stream", url=stream_url)
    for name, value in (parameters or {}).items():
        if len(name) + len(value) >= _MAX_PARAMETER_CHARS:
            raise UserError(
                f"<Parameter> {name!r}: name and value together must be under "
                f"{_MAX_PARAMETER_CHARS} characters"
            )
        ET.SubElement(stream, "Parameter", name=name, value=value)
    return _document(response)


def busy_twiml(message: str) -> str:
    """``<Response><Say>message</Say><Hangup/></Response>``: turn a call away politely, e.g. when
    no session host has room for it."""
    response = ET.Element("Response")
    ET.SubElement(response, "Say").text = message
    ET.SubElement(response, "Hangup")
    return _document(response)


def dial_twiml(target: str) -> str:
    """TwiML that connects the caller to ``target``: a phone number, ``sip:`` URI, ``queue:``
    name or ``client:`` name (what a transfer tool asks for), e.g. ``<Dial>+15550100</Dial>``."""
    response = ET.Element("Response")
    dial = ET.SubElement(response, "Dial")
    if target.startswith("sip:"):
        ET.SubElement(dial, "Sip").text = target
    elif target.startswith("queue:"):
        ET.SubElement(dial, "Queue").text = target.removeprefix("queue:")
    elif target.startswith("client:"):
        ET.SubElement(dial, "Client").text = target.removeprefix("client:")
    else:
        dial.text = target
    return _document(response)


def _check_stream_url(url: str) -> None:
    parts = urlsplit(url)
    # Twilio itself only connects to wss://; ws:// serves local development and our simulated
    # callers (`callray loadtest`) when no public TLS URL is configured.
    if parts.scheme not in ("wss", "ws") or not parts.netloc:
        raise UserError(f"stream URL must be an absolute wss:// (or ws://) URL, got {url!r}")
    if parts.query or parts.fragment:
        # Twilio strips the query string and may fail the handshake (error 31920).
        raise UserError(f"stream URL must not have a query or fragment, got {url!r}")


def _document(root: ET.Element) -> str:
    return _XML_DECLARATION + ET.tostring(root, encoding="unicode")
