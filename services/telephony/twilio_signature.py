"""Checking ``X-Twilio-Signature`` on our webhooks and on the media-stream WebSocket upgrade.

Twilio signs ``base64(HMAC-SHA1(auth token, URL + sorted form params))`` over the URL *it*
requested (TW-SEC; reference §1.6). Behind a proxy or load balancer our server sees another
scheme, host or port, so the URL is rebuilt from the configured public base URL
(``CALLRAY_PUBLIC_URL``) with :func:`public_request_url`. The HMAC itself is left to the
``twilio`` package's ``RequestValidator``, which also tries the URL with and without an explicit
port because Twilio's own signing is inconsistent about it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]

from services.errors import ConfigError

__all__ = ["SIGNATURE_HEADER", "is_valid_twilio_signature", "public_request_url"]

#: On WebSocket upgrades the header arrives lower-cased (reference §1.6); look it up
#: case-insensitively.
SIGNATURE_HEADER: Final = "X-Twilio-Signature"

_WEBSOCKET_SCHEMES: Final = {"https": "wss", "http": "ws"}


def is_valid_twilio_signature(
    url: str, params: Mapping[str, str], signature: str | None, auth_token: str
) -> bool:
    """Whether ``signature`` is Twilio's signature of ``url`` and the form ``params``.

    ``url`` is the public URL with its query string, exactly as Twilio requested it; ``params``
    are the POST form fields (empty for GET requests and WebSocket upgrades). A missing header
    is simply invalid.
    """
    if not auth_token:
        # An empty key would make every signature computed with an empty key "valid".
        raise ConfigError("the Twilio auth token is not set; cannot check request signatures")
    if not signature:
        return False
    return bool(RequestValidator(auth_token).validate(url, dict(params), signature))


def public_request_url(
    public_base_url: str, path: str, query: str = "", *, websocket: bool = False
) -> str:
    """The URL Twilio used for a request our server saw at ``path`` with raw ``query``.

    ``public_base_url`` is ``scheme://host[:port][/prefix]``; a prefix is the path a reverse
    proxy strips before forwarding to us. ``websocket=True`` turns ``https``/``http`` into
    ``wss``/``ws``: Twilio signs the stream upgrade over the ``wss://`` URL as written in the
    TwiML, with no params (reference §1.6). ``query`` is kept byte for byte, as Twilio signs it.
    """
    base = urlsplit(public_base_url)
    if base.scheme not in _WEBSOCKET_SCHEMES or not base.netloc or base.query or base.fragment:
        raise ConfigError(
            "public URL must be an absolute http(s) URL without query or fragment, "
            f"got {public_base_url!r}"
        )
    scheme = _WEBSOCKET_SCHEMES[base.scheme] if websocket else base.scheme
    full_path = base.path.rstrip("/") + "/" + path.lstrip("/")
    return urlunsplit((scheme, base.netloc, full_path, query, ""))
