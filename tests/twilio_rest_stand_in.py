"""Twilio's REST API, stood in on loopback: call updates (hang-ups, transfers) are recorded."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestServer


class TwilioRestStandIn:
    """``POST /2010-04-01/Accounts/{account}/Calls/{sid}.json`` answers as Twilio does and
    records ``(path, form)``; point ``TWILIO_API_BASE_URL`` at :attr:`base_url`."""

    def __init__(self) -> None:
        self.updates: list[tuple[str, dict[str, str]]] = []
        self.delay_s = 0.0  # how long Twilio takes to apply an update (a slow API)
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{account}/Calls/{sid}.json", self._update)
        self._server = TestServer(app, host="127.0.0.1")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}"

    async def start(self) -> None:
        await self._server.start_server()

    async def close(self) -> None:
        await self._server.close()

    async def _update(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        await asyncio.sleep(self.delay_s)
        self.updates.append((request.path, form))
        return web.json_response({"sid": request.match_info["sid"], "status": "in-progress"})
