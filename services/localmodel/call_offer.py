"""What ``POST /v1/realtime/calls`` carries, read and checked (reference/realtime-protocol.md,
section 7.2).

Two shapes, as OpenAI takes them:

* ``Content-Type: application/sdp``: the body is the SDP offer (a browser with an ephemeral
  key, AJS's ``OpenAIRealtimeWebRTC``);
* ``multipart/form-data`` with a part ``sdp`` (the offer) and optionally a part ``session``
  (JSON: the session config, applied before ``session.created``), as the ``openai`` package's
  ``client.realtime.calls.create(sdp=..., session=...)`` sends it (without ``session`` that
  method sends the raw shape).

A refusal is a :class:`OfferRefused` with the HTTP status and a message safe to send back in
OpenAI's error body. The SDP itself is checked by :func:`services.webrtc.offer.check_offer`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import BodyPartReader, web

from services.errors import SdpError
from services.http_body import BodyTooLarge, read_bounded
from services.webrtc.offer import MAX_OFFER_BYTES, CandidatePolicy, check_offer

__all__ = ["CallOffer", "OfferRefused", "read_offer"]

MAX_SESSION_BYTES: Final = 128 * 1024


@dataclass(frozen=True, slots=True)
class CallOffer:
    sdp: str  # checked; candidates we will not try removed
    session: dict[str, Any] | None
    model: str | None  # ?model= (older clients send it; a session config's model wins)


class OfferRefused(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


async def read_offer(request: web.Request, policy: CandidatePolicy) -> CallOffer:
    content_type = request.content_type
    session: dict[str, Any] | None = None
    if content_type == "application/sdp":
        sdp = await _read_limited(request, MAX_OFFER_BYTES)
    elif content_type == "multipart/form-data":
        sdp, session = await _read_form(request)
    else:
        raise OfferRefused(
            415,
            f"Unsupported content type {content_type!r}: send application/sdp, or "
            "multipart/form-data with the parts sdp and session.",
            "unsupported_content_type",
        )
    try:
        checked = check_offer(sdp, policy)
    except SdpError as exc:
        raise OfferRefused(400, f"Invalid SDP offer: {exc}", "invalid_offer") from exc
    return CallOffer(checked.sdp, session, request.query.get("model") or None)


async def _read_limited(request: web.Request, limit: int) -> str:
    try:
        body = await read_bounded(request, limit)
    except BodyTooLarge:
        raise OfferRefused(
            413, f"The offer is larger than {limit} bytes.", "offer_too_large"
        ) from None
    return body.decode("utf-8", "replace")


async def _read_form(request: web.Request) -> tuple[str, dict[str, Any] | None]:
    parts: dict[str, bytes] = {}
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name not in ("sdp", "session"):
                continue  # nested multiparts and unknown fields are ignored, as form fields are
            limit = MAX_OFFER_BYTES if part.name == "sdp" else MAX_SESSION_BYTES
            parts[part.name] = await _read_part(part, limit)
    except (ValueError, AssertionError) as exc:  # aiohttp's words for a malformed body
        raise OfferRefused(400, f"Malformed multipart body: {exc}", "invalid_body") from exc
    if "sdp" not in parts:
        raise OfferRefused(400, "Missing required parameter: 'sdp'.", "missing_required_parameter")
    session: dict[str, Any] | None = None
    if "session" in parts:
        try:
            value = json.loads(parts["session"])
        except ValueError as exc:
            raise OfferRefused(400, "The session part is not JSON.", "invalid_json") from exc
        if value is not None and not isinstance(value, dict):
            raise OfferRefused(400, "The session part must be a JSON object.", "invalid_type")
        session = value
    return parts["sdp"].decode("utf-8", "replace"), session


async def _read_part(part: BodyPartReader, limit: int) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk():
        data += chunk
        if len(data) > limit:
            raise OfferRefused(413, f"The {part.name} part is larger than {limit} bytes.")
    return bytes(data)
