"""A driver's own ingress: the media channel's ingress end for code that is not an actor.

Tests and benchmarks open calls through the router (``CallSpec(ingress_id=...)``) and then play
the ingress for them: send caller audio and control inputs, read the commands the host pushes.
The session host has no media methods of its own; this goes over the same channel an
:class:`~actors.ingress.IngressActor` uses. It runs the channel clients on an event loop in a
background thread, so synchronous drivers can use it.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from actors import _ray
from services.media.channel_client import MediaChannelClient
from services.media.vocabulary import CallInput, Command


class DriverIngress:
    def __init__(self, ingress_id: str = "") -> None:
        self.ingress_id = ingress_id
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._clients: dict[str, MediaChannelClient] = {}
        self._received: list[Command] = []
        self._lock = threading.Lock()

    def attach(self, host: Any, timeout: float = 30.0) -> None:
        """Connect to ``host``'s channel (if not yet) and wait until it is up."""
        future = asyncio.run_coroutine_threadsafe(self._attach(host), self._loop)
        future.result(timeout)

    def send(self, host: Any, call_id: str, item: bytes | CallInput) -> None:
        """Queue caller audio or a control input for a call on ``host``."""
        key = _ray.actor_key(host)
        if key not in self._clients:
            self.attach(host)  # once per host; later sends only queue
        client = self._clients[key]
        self._loop.call_soon_threadsafe(client.send, call_id, item)

    def commands(self, call_id: str | None = None) -> list[Command]:
        """Every command received so far (for ``call_id`` only, if given)."""
        with self._lock:
            return [c for c in self._received if call_id is None or c.call_id == call_id]

    def close(self) -> None:
        async def close_all() -> None:
            for client in self._clients.values():
                await client.close()

        asyncio.run_coroutine_threadsafe(close_all(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _attach(self, host: Any) -> None:
        key = _ray.actor_key(host)
        client = self._clients.get(key)
        if client is None:

            async def locate() -> tuple[str, str]:
                url, secret = await _ray.call(host, "channel")
                return str(url), str(secret)

            client = self._clients[key] = MediaChannelClient(
                locate, ingress_id=self.ingress_id, dispatch=self._received_one
            )
            client.start()
        await client.connected.wait()

    def _received_one(self, command: Command) -> None:
        with self._lock:
            self._received.append(command)
