"""The ingress's end of the media channel (:mod:`.channel`) to one session host.

:meth:`MediaChannelClient.send` queues an input for a call in the client's
:class:`~.channel.Outbox`; the sender sends everything waiting in one message, at most every
``interval_s`` (the one coalescing point ingress → host). Commands are pushed by the host and
handed to ``dispatch`` as each message arrives. The client connects when started and again
whenever the channel breaks (``locate`` is asked for the host's URL and key each time, since a
restarted host has new ones); what a broken batch held is redelivered by the
:class:`~.channel.Redelivery` policy. When no connection can be made for ``lost_after_s``, the
host is taken for lost: ``on_lost`` is called once and the client stops (its calls move).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from services.errors import CallrayError
from services.media import channel
from services.media.vocabulary import CallInput, Command
from services.observability import metrics

logger = logging.getLogger(__name__)

Locate = Callable[[], Awaitable[tuple[str, str]]]


class MediaChannelClient:
    def __init__(
        self,
        locate: Locate,
        *,
        ingress_id: str,
        dispatch: Callable[[Command], None],
        interval_s: float = 0.002,
        redelivery: channel.Redelivery | None = None,
        outbox_limit: int = channel.DEFAULT_OUTBOX_LIMIT,
        connect_timeout_s: float = 10.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        on_lost: Callable[[], None] | None = None,
        lost_after_s: float = 1.0,
    ) -> None:
        self._locate = locate
        self._ingress_id = ingress_id
        self._dispatch = dispatch
        self._interval_s = interval_s
        self._redelivery = redelivery or channel.Redelivery()
        self._connect_timeout_s = connect_timeout_s
        self._sleep = sleep  # the back-off's clock (virtual in tests)
        self._clock = clock
        self._on_lost = on_lost
        self._lost_after_s = lost_after_s
        self._outbox = channel.input_outbox(outbox_limit)
        self._ready = asyncio.Event()
        self._outbox.on_ready = self._ready.set
        self._outbox.on_drop = lambda n: metrics.media_dropped("in", n)
        self._task: asyncio.Task[None] | None = None
        self._lost = False  # set by the receiver when the host closes the channel
        self.connected = asyncio.Event()
        self.calls: set[str] = set()
        self.batches = 0

    @property
    def dropped(self) -> int:
        """Caller audio dropped by backpressure (the host did not keep up, or was away)."""
        return self._outbox.dropped

    @property
    def pending(self) -> int:
        """Inputs waiting for the next batch."""
        return len(self._outbox)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"channel-{self._ingress_id}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def send(self, call_id: str, item: bytes | CallInput) -> None:
        """Queue caller audio or a control input for ``call_id``; it leaves with the next batch."""
        self._outbox.put((call_id, item))

    # ----- the connection ------------------------------------------------------------------------

    async def _run(self) -> None:
        down_since = self._clock()  # not connected yet
        while True:
            delay = self._redelivery.delay()
            if delay:
                await self._sleep(delay)
            try:
                ws = await self._connect()
            except (OSError, TimeoutError, WebSocketException, CallrayError) as exc:
                self._failed(self._outbox.take(), f"media channel unavailable: {exc}")
                if self._on_lost is not None and self._clock() - down_since >= self._lost_after_s:
                    # The host is gone (or unreachable for as long as a caller tolerates
                    # silence): its calls must move; this link is done.
                    logger.warning("media channel lost for %.1f s: host lost", self._lost_after_s)
                    self._on_lost()
                    return
                continue
            self.connected.set()
            self._lost = False
            receiver = asyncio.create_task(self._receive(ws), name="channel-receive")
            try:
                await self._send(ws)
            finally:
                down_since = self._clock()
                self.connected.clear()
                receiver.cancel()
                await asyncio.gather(receiver, return_exceptions=True)
                await ws.close()

    async def _connect(self) -> ClientConnection:
        async with asyncio.timeout(self._connect_timeout_s):
            url, key = await self._locate()
            ws = await connect(
                url, max_size=channel.MAX_MESSAGE_BYTES, compression=None, proxy=None
            )
            try:
                await ws.send(channel.encode_hello(self._ingress_id, key))
                channel.check_welcome(await ws.recv())
            except BaseException:
                await ws.close()
                raise
            return ws

    async def _send(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        last = -1e9
        if len(self._outbox):
            self._ready.set()
        while True:
            await self._ready.wait()
            self._ready.clear()
            if self._lost:
                return  # the host closed the channel
            wait = last + self._interval_s - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)  # what arrives meanwhile joins this message
            batch = self._outbox.take()
            if not batch:
                continue
            last = loop.time()
            try:
                await ws.send(channel.encode_inputs(time.time(), batch))
            except ConnectionClosed as exc:
                self._failed(batch, f"media channel lost: {exc}")
                return
            self.batches += 1
            self._redelivery.delivered()

    def _failed(self, batch: list[channel.Input], why: str) -> None:
        again = self._redelivery.failed(batch)
        self._outbox.put_front(again)
        failures = self._redelivery.failures
        if failures == 1 or failures == self._redelivery.give_up_after:
            # When the channel breaks and when its control inputs are given up; not on every
            # retry of a host that is away.
            held = f"{len(again)} control inputs kept" if again else "control inputs given up"
            logger.warning(
                "%s (%d inputs dropped, %s; retrying)", why, len(batch) - len(again), held
            )

    async def _receive(self, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                try:
                    sent_at, commands = channel.decode_commands(message)
                except channel.ChannelError as exc:
                    logger.warning("bad media channel message from a host: %s", exc)
                    continue
                metrics.media_hop("out", max(0.0, time.time() - sent_at))
                for command in commands:
                    try:
                        self._dispatch(command)
                    except Exception:
                        logger.exception("dispatching a command failed")
        except ConnectionClosed:
            pass
        finally:
            self._lost = True
            self._ready.set()  # wakes the sender, which then reconnects
