"""Reading the cluster's call-event stream in tests."""

from __future__ import annotations

import redis

from services.toolbus.streams import CALL_EVENTS_STREAM


def events_of(r: redis.Redis, call_id: str) -> list[dict[str, str]]:
    """Every event of ``call_id`` on ``callray:call-events``, oldest first, decoded."""
    out = []
    for _id, fields in r.xrange(CALL_EVENTS_STREAM):
        decoded = {k.decode(): v.decode() for k, v in fields.items()}
        if decoded.get("call_id") == call_id:
            out.append(decoded)
    return out
