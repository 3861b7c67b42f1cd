"""Call control through Twilio's REST API (the ``twilio`` package, async): hang up, transfer.

``api_base_url`` replaces ``https://api.twilio.com`` so tests (and air-gapped staging) use a
local stand-in. Without credentials the gateway falls back to closing the media stream, which
with ``<Connect><Stream>`` ends the call but cannot transfer it.
"""

from __future__ import annotations

import logging
from typing import Any

from services.errors import ProviderError
from services.telephony.twiml import dial_twiml

logger = logging.getLogger(__name__)


class TwilioCallControl:
    def __init__(
        self, account_sid: str, auth_token: str, *, api_base_url: str | None = None
    ) -> None:
        self._account_sid = account_sid
        self._auth_token = auth_token
        self._base = api_base_url
        self._client: Any = None

    def _api(self) -> Any:
        if self._client is None:
            from twilio.http.async_http_client import (  # type: ignore[import-untyped]
                AsyncTwilioHttpClient,
            )
            from twilio.rest import Client  # type: ignore[import-untyped]

            self._client = Client(
                self._account_sid, self._auth_token, http_client=AsyncTwilioHttpClient()
            )
            if self._base:
                self._client.api.base_url = self._base.rstrip("/")
        return self._client

    async def hang_up(self, call_sid: str) -> None:
        await self._update(call_sid, status="completed")

    async def transfer(self, call_sid: str, target: str) -> None:
        await self._update(call_sid, twiml=dial_twiml(target))

    async def _update(self, call_sid: str, **fields: str) -> None:
        try:
            await self._api().calls(call_sid).update_async(**fields)
        except Exception as exc:
            status = getattr(exc, "status", None)
            retryable = status is None or int(status) >= 500 or int(status) == 429
            raise ProviderError(
                f"Twilio refused to update call: {type(exc).__name__} {status}",
                retryable=retryable,
            ) from exc

    async def close(self) -> None:
        if self._client is not None:
            session = getattr(self._client.http_client, "session", None)
            if session is not None:
                await session.close()
