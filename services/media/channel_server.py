"""The session host's end of the media channel (:mod:`.channel`): a WebSocket server that each
ingress attaches to once.

Inputs are handed to the host as each message arrives (:meth:`ChannelHost.feed`); commands are
pushed: the host puts them in the ingress's :class:`~.channel.Outbox`, whose ``on_ready`` wakes
this connection's sender, which sends everything waiting in one message, at most every
``interval_s`` (the one coalescing point host → ingress).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Sequence
from typing import Protocol

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from services.media import channel
from services.media.vocabulary import Command, is_audio

logger = logging.getLogger(__name__)


class ChannelHost(Protocol):
    """What the server needs of a host (:class:`services.runtime.host.CallHost`)."""

    def feed(self, batch: Sequence[channel.Input], sent_at: float | None = None) -> int: ...

    def outbox(self, ingress_id: str) -> channel.Outbox[Command]: ...


class MediaChannelServer:
    def __init__(
        self, host: ChannelHost, *, bind: str = "127.0.0.1", interval_s: float = 0.002
    ) -> None:
        self._host = host
        self._bind = bind
        self._interval_s = interval_s
        self.key = secrets.token_hex(16)
        self._server: Server | None = None
        self.url = ""

    async def start(self) -> str:
        self._server = await serve(
            self._handle, self._bind, 0, max_size=channel.MAX_MESSAGE_BYTES, compression=None
        )
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.url = f"ws://{self._bind}:{port}/media"
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, ws: ServerConnection) -> None:
        try:
            ingress_id, welcome = channel.accept_hello(await ws.recv(), self.key)
            await ws.send(welcome)
        except channel.ChannelError as exc:
            logger.warning("refused a media channel: %s", exc)
            await ws.close(1008, str(exc)[:120])
            return
        except ConnectionClosed:
            return
        outbox = self._host.outbox(ingress_id)
        ready = asyncio.Event()
        outbox.on_ready = ready.set  # a newer connection of the same ingress takes this over
        if len(outbox):
            ready.set()  # commands produced while no channel was attached
        sender = asyncio.create_task(self._send(ws, outbox, ready), name="channel-send")
        try:
            async for message in ws:
                try:
                    sent_at, batch = channel.decode_inputs(message)
                except channel.ChannelError as exc:
                    logger.warning("bad media channel message from %s: %s", ingress_id, exc)
                    continue
                self._host.feed(batch, sent_at)
        except ConnectionClosed:
            pass
        finally:
            sender.cancel()
            if outbox.on_ready == ready.set:
                outbox.on_ready = None

    async def _send(
        self, ws: ServerConnection, outbox: channel.Outbox[Command], ready: asyncio.Event
    ) -> None:
        loop = asyncio.get_running_loop()
        last = -1e9
        while True:
            await ready.wait()
            ready.clear()
            wait = last + self._interval_s - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)  # what arrives meanwhile joins this message
            commands = outbox.take()
            if not commands:
                continue
            last = loop.time()
            try:
                await ws.send(channel.encode_commands(time.time(), commands))
            except ConnectionClosed:
                # The ingress reconnects; it must still get what changes its calls' state.
                outbox.put_front([c for c in commands if not is_audio(c)])
                return
