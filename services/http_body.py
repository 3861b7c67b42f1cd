"""Reading a request body whole, but no more than a bound.

``StreamReader.read(n)`` returns as soon as any bytes are there, so a body that arrives in
several TCP segments (a large SDP offer) would be cut at the first; ``request.read()`` would take
up to the app's whole ``client_max_size``. This reads to the end, refusing past ``limit``.
"""

from __future__ import annotations

from aiohttp import web


class BodyTooLarge(Exception):
    """The body is over the limit (413)."""


async def read_bounded(request: web.Request, limit: int) -> bytes:
    """The whole body; :class:`BodyTooLarge` when its declared length or its bytes pass
    ``limit``. Time-bound it with the caller's request deadline."""
    if (request.content_length or 0) > limit:
        raise BodyTooLarge
    body = bytearray()
    while True:
        chunk = await request.content.read(limit + 1 - len(body))
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
