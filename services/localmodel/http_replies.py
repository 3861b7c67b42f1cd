"""The HTTP replies the local model's REST paths share: OpenAI's error body, and CORS.

A browser page on another origin POSTs its offer straight to the model, as to
``api.openai.com``: so every reply of those paths allows any origin and lets the page read
``Location`` (the ``call_id``), and their ``OPTIONS`` preflight is answered.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

__all__ = ["CORS", "error_reply", "preflight_reply"]

CORS: Final = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Location",
}
_DEFAULT_ALLOWED_HEADERS: Final = "Authorization, Content-Type, Accept"


def error_reply(
    status: int,
    message: str,
    code: str | None = None,
    *,
    param: str | None = None,
    error_type: str = "invalid_request_error",
) -> web.Response:
    """``{"error": {...}}`` as OpenAI's REST API answers a refused request."""
    body = {"error": {"message": message, "type": error_type, "code": code, "param": param}}
    return web.json_response(body, status=status, headers=CORS)


def preflight_reply(request: web.Request) -> web.Response:
    """The answer to a CORS preflight: any origin, POST, and the headers it asked for."""
    asked = request.headers.get("Access-Control-Request-Headers", _DEFAULT_ALLOWED_HEADERS)
    return web.Response(
        status=204,
        headers={
            **CORS,
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": asked,
            "Access-Control-Max-Age": "600",
        },
    )
