"""The ingress's end of a host's media channel (:mod:`services.runtime.media_channel`), as the
:class:`~services.gateway.host_link.HostPort` that :class:`HostLink` drives."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgpack  # type: ignore[import-untyped]

from services.errors import TransportError
from services.observability import metrics
from services.runtime.commands import CallInput, Command
from services.runtime.media_channel import decode_commands, encode_inputs


class ChannelHostPort:
    def __init__(
        self, channel: Callable[[], Awaitable[tuple[str, str]]], *, ingress_id: str
    ) -> None:
        self._channel = channel  # returns (url, key) of the host's media channel
        self._ingress_id = ingress_id
        self._ws: Any = None
        self._lock = asyncio.Lock()

    async def _socket(self) -> Any:
        async with self._lock:
            if self._ws is None:
                from websockets.asyncio.client import connect

                try:
                    url, key = await self._channel()
                    ws = await connect(url, max_size=16 * 2**20, compression=None)
                    hello = ["hello", self._ingress_id, key]
                    await ws.send(msgpack.packb(hello, use_bin_type=True))
                except Exception as exc:
                    raise TransportError(f"media channel unavailable: {exc}") from exc
                self._ws = ws
            return self._ws

    async def feed(self, batch: Sequence[tuple[str, bytes | CallInput]], sent_at: float) -> None:
        ws = await self._socket()
        try:
            await ws.send(encode_inputs(sent_at, batch))
        except Exception as exc:
            self._ws = None
            raise TransportError(f"media channel lost: {exc}") from exc

    async def pull_output(self, max_wait_s: float, ingress_id: str) -> list[Command]:
        ws = await self._socket()
        try:
            async with asyncio.timeout(max_wait_s):
                message = await ws.recv()
        except TimeoutError:
            return []
        except Exception as exc:
            self._ws = None
            raise TransportError(f"media channel lost: {exc}") from exc
        sent_at, commands = decode_commands(message)
        # Same machine: wall clocks agree; across machines this includes their skew.
        metrics.media_hop("out", max(0.0, time.time() - sent_at))
        return commands

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
