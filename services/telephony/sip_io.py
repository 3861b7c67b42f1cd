"""The I/O half of a SIP UAS: one UDP socket and one timer task around a
:class:`~services.telephony.sip.uas.UserAgentServer`. Shared by our SIP ingress
(``services/gateway/sip_ingress.py``) and the local model's SIP front
(``services/localmodel/sip_front.py``), which only say what the UAS's outputs mean to them.

A datagram goes to the UAS with the clock's ``now``; the timer task sleeps until the UAS's next
deadline (retransmissions, session timers, a registration's refresh) or the next datagram,
whichever is first, then ticks it. Every output goes to :meth:`UasEndpoint.apply`: a subclass
sends the :class:`~.sip.transaction.Send` ones with :meth:`UasEndpoint.send` and acts on the
events. A bug on one message is logged and the socket goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from services.errors import ServiceStartError
from services.telephony.sip.transaction import Send
from services.telephony.sip.uas import UserAgentServer
from services.telephony.sip.uas_events import Output

logger = logging.getLogger(__name__)


class UasEndpoint(asyncio.DatagramProtocol):
    """Subclasses build ``self.uas`` in their start (:meth:`bind` first, for the port) and
    implement :meth:`apply`; :meth:`after_tick` runs after each timer pass."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, name: str = "SIP") -> None:
        self.uas: UserAgentServer | None = None
        self.port = 0
        self._clock = clock
        self._name = name
        self._transport: asyncio.DatagramTransport | None = None
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def bind(self, host: str, port: int, hint: str) -> int:
        """Listen on ``host:port`` (0: a free one); a port in use fails the start, naming
        ``hint`` (the setting to change)."""
        try:
            await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: self, local_addr=(host, port)
            )
        except OSError as exc:
            raise ServiceStartError(
                f"{self._name} cannot listen on udp {host}:{port} ({exc.strerror}); {hint}"
            ) from None
        assert self._transport is not None
        self.port = int(self._transport.get_extra_info("sockname")[1])
        return self.port

    def start_timers(self) -> None:
        self.spawn(self._timers())

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._transport is not None:
            self._transport.close()

    def apply(self, outputs: list[Output]) -> None:
        raise NotImplementedError

    def after_tick(self) -> None:
        """Each timer pass, after the UAS's tick (metrics, registration state)."""

    def send(self, item: Send) -> None:
        if self._transport is not None:
            self._transport.sendto(item.data, item.destination)

    # ----- asyncio.DatagramProtocol --------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self._transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self.uas is None:
            return
        try:
            self.apply(self.uas.receive(data, (addr[0], addr[1]), self._clock()))
        except Exception:  # a bug on one message must not stop the socket
            logger.exception("%s: a message from %s could not be handled", self._name, addr[0])
        self._wake.set()

    def error_received(self, exc: Exception) -> None:
        logger.debug("%s socket error: %s", self._name, exc)

    async def _timers(self) -> None:
        assert self.uas is not None
        while True:
            deadline = self.uas.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self._clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            try:
                self.apply(self.uas.tick(self._clock()))
                self.after_tick()
            except Exception:
                logger.exception("%s: a timer pass failed", self._name)
