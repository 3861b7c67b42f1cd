"""The local model's signed webhooks, as OpenAI's SIP connector sends them.

A new SIP call is announced with ``realtime.call.incoming`` (reference/realtime-protocol.md
§6.2), signed with the Standard Webhooks scheme that ``openai``'s ``webhooks.unwrap`` checks
(§6.3, the package's ``lib/_webhooks.py``):

* headers ``webhook-id`` (one per event, the same on every retry), ``webhook-timestamp`` (unix
  seconds of the attempt) and ``webhook-signature: v1,<base64 HMAC-SHA256>`` of
  ``"{id}.{timestamp}.{body}"``, keyed with the base64-decoded secret after ``whsec_`` (any
  other secret is used as its UTF-8 bytes, as the package does);
* the body ``{"object": "event", "id": "evt_…", "type": "realtime.call.incoming",
  "created_at": …, "data": {"call_id": …, "sip_headers": [{"name", "value"}, …]}}``, where
  ``sip_headers`` are the INVITE's headers minus the authorization ones
  (:func:`without_authorization`), in their order, repeats kept;
* a delivery that is not answered 2xx (or not answered at all) is tried again after 1, 2 and
  4 s, re-signed with the attempt's timestamp; OpenAI's own policy is not published (§12), so
  this schedule is ours.

``duplicates`` sends each attempt that many times at once (a fault for tests: a receiver must
act on one). :func:`sign` and :func:`incoming_event` are pure; :class:`WebhookSender` does the
HTTP, with its waits on the injected ``timers``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Final

import aiohttp

from services.aio import Timers, sleep
from services.config import Secret
from services.errors import ConfigError

__all__ = [
    "INCOMING",
    "WebhookSender",
    "incoming_event",
    "sign",
    "signed_headers",
    "without_authorization",
]

log = logging.getLogger(__name__)

INCOMING: Final = "realtime.call.incoming"
RETRY_DELAYS_S: Final = (1.0, 2.0, 4.0)
ATTEMPT_TIMEOUT_S: Final = 5.0
USER_AGENT: Final = "OpenAI/1.0 (compatible; callray local model)"
# RFC 3261 §20.7, §20.28: the credentials a caller gave the trunk never leave it.
AUTHORIZATION_HEADERS: Final = frozenset({"authorization", "proxy-authorization"})


def _key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode()


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value (``v1,<base64>``) of ``body`` sent as ``webhook_id`` at
    ``timestamp``."""
    mac = hmac.new(_key(secret), f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def signed_headers(secret: str, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Every header of one delivery attempt."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, webhook_id, timestamp, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def without_authorization(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """``headers`` in order, minus Authorization and Proxy-Authorization (any case)."""
    return [(n, v) for n, v in headers if n.strip().lower() not in AUTHORIZATION_HEADERS]


def incoming_event(
    call_id: str, sip_headers: Sequence[tuple[str, str]], *, event_id: str, created_at: int
) -> bytes:
    """The body of a ``realtime.call.incoming`` webhook."""
    event = {
        "object": "event",
        "id": event_id,
        "type": INCOMING,
        "created_at": created_at,
        "data": {
            "call_id": call_id,
            "sip_headers": [{"name": n, "value": v} for n, v in sip_headers],
        },
    }
    return json.dumps(event, separators=(",", ":")).encode()


class WebhookSender:
    def __init__(
        self,
        url: str,
        secret: Secret,
        *,
        duplicates: int = 1,
        retry_delays_s: Sequence[float] = RETRY_DELAYS_S,
        timers: Timers | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` (unix seconds) stamps the events and the attempts; ``timers`` (the running
        loop when None) times the waits between attempts."""
        try:
            if not _key(secret.value):
                raise ValueError("empty")
        except ValueError as exc:  # binascii.Error is one: a malformed whsec_ fails here
            raise ConfigError("a webhook secret must be whsec_ and base64") from exc
        self.url = url
        self._secret = secret
        self.duplicates = max(1, duplicates)
        self._delays = tuple(retry_delays_s)
        self._timers = timers
        self._clock = clock
        self._http: aiohttp.ClientSession | None = None
        self.attempts = 0  # delivery attempts made (each of ``duplicates`` posts)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def send_incoming(self, call_id: str, sip_headers: Sequence[tuple[str, str]]) -> bool:
        """Announce a call; True once a delivery was answered 2xx, False when every attempt
        failed."""
        body = incoming_event(
            call_id,
            sip_headers,
            event_id="evt_" + secrets.token_hex(16),
            created_at=int(self._clock()),
        )
        return await self.deliver("wh_" + secrets.token_hex(16), body)

    async def deliver(self, webhook_id: str, body: bytes) -> bool:
        """POST ``body`` as ``webhook_id`` until a 2xx, with the retry schedule."""
        timers = self._timers or asyncio.get_running_loop()
        for delay in (0.0, *self._delays):
            if delay:
                await sleep(timers, delay)
            headers = signed_headers(self._secret.value, webhook_id, int(self._clock()), body)
            posts = [self._post(headers, body) for _ in range(self.duplicates)]
            if any(await asyncio.gather(*posts)):
                return True
        log.warning(
            "local model: webhook %s not delivered after %d attempts", webhook_id, self.attempts
        )
        return False

    async def _post(self, headers: dict[str, str], body: bytes) -> bool:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT_S)
            )
        self.attempts += 1
        try:
            async with self._http.post(self.url, data=body, headers=headers) as reply:
                await reply.read()
                if reply.status // 100 == 2:
                    return True
                log.info("local model: webhook answered %d", reply.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("local model: webhook not delivered: %s", type(exc).__name__)
        return False
