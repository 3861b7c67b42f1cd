"""Which addresses our WebRTC peers gather, and which ones our answers advertise: the one place.

aiortc's defaults are wrong for a server (reference/webrtc-sip.md §2.2):

* with no ``iceServers`` it asks a public STUN server (``stun.l.google.com``), so every peer
  connection here gets an explicit :func:`rtc_configuration`, empty unless configured;
* aioice gathers host candidates on every interface address except 127.0.0.1 and has no API to
  choose them. :func:`install` replaces ``aioice.ice.get_host_addresses`` (the function its
  ``Connection.gather_candidates`` calls) when ``CALLRAY_WEBRTC_ICE_ADDRESSES`` names the
  addresses; tests on loopback name 127.0.0.1. ``tests/unit/test_webrtc_ice.py`` fails if
  aioice stops calling it by that name;
* behind a 1:1 NAT (a Kubernetes node's address, a cloud VM's public IP) peers must be told the
  outside address: :func:`advertise` rewrites the host candidates of an answer;
* aioice binds each host candidate's socket to port 0 (``Connection.get_component_candidates``:
  ``loop.create_datagram_endpoint(..., local_addr=(address, 0))``) and has no port setting, so
  a firewall or a Kubernetes ``hostPort`` list could not be written for it.
  :func:`install_port_range` (``CALLRAY_WEBRTC_PORT_RANGE``) gives aioice's module a view of
  asyncio whose running loop binds those sockets to a free port of the range instead; every
  other use of asyncio there passes straight through. ``tests/unit/test_webrtc_ice.py`` fails
  if aioice stops binding that way. A call that finds the range full gets no candidate, and the
  ingress refuses its offer with 503 rather than answer one that cannot connect.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable
from typing import Any

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer

from services.config import WebRTCSettings

logger = logging.getLogger(__name__)

_original: Callable[..., list[str]] = aioice.ice.get_host_addresses
_installed: tuple[str, ...] | None = None


def install(addresses: tuple[str, ...]) -> None:
    """Gather host candidates on ``addresses`` only. Process-wide, as aioice's choice is: the
    last non-empty call wins, and an empty one changes nothing (a component with no addresses
    configured must not undo another's choice in the same process)."""
    global _installed
    if not addresses or addresses == _installed:
        return
    _installed = addresses

    def chosen(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in addresses if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = chosen
    logger.info("WebRTC gathers ICE candidates on %s", ", ".join(addresses))


def reset() -> None:
    """aioice's own choice again (tests)."""
    global _installed
    _installed = None
    aioice.ice.get_host_addresses = _original


class PortRange:
    """Free UDP ports in ``first..last``, tried round-robin from after the last one bound, so a
    port just released (its call ended) is the last to be reused."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last
        self._next = first

    @property
    def bounds(self) -> tuple[int, int]:
        return self.first, self.last

    async def bind(
        self, loop: asyncio.AbstractEventLoop, factory: Callable[[], Any], address: str
    ) -> tuple[Any, Any]:
        size = self.last - self.first + 1
        for _ in range(size):
            port = self._next
            self._next = self.first + (port - self.first + 1) % size
            try:
                return await loop.create_datagram_endpoint(factory, local_addr=(address, port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
        raise OSError(errno.EADDRINUSE, f"no free UDP port in {self.first}-{self.last}")


class _RangedLoop:
    """The running loop as aioice's module sees it: host-candidate sockets bind in the range."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ports: PortRange) -> None:
        self._loop = loop
        self._ports = ports

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_datagram_endpoint(
        self, factory: Callable[[], Any], local_addr: Any = None, **kwargs: Any
    ) -> tuple[Any, Any]:
        if local_addr is not None and local_addr[1] == 0 and not kwargs:
            return await self._ports.bind(self._loop, factory, local_addr[0])
        return await self._loop.create_datagram_endpoint(factory, local_addr=local_addr, **kwargs)


class _AsyncioWithPortRange:
    """asyncio for aioice's module, but for :func:`get_running_loop`."""

    def __init__(self, ports: PortRange) -> None:
        self.ports = ports

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    def get_running_loop(self) -> _RangedLoop:
        return _RangedLoop(asyncio.get_running_loop(), self.ports)


def install_port_range(ports: tuple[int, int] | None) -> None:
    """Bind host candidates within ``ports`` (first, last), process-wide; None changes nothing."""
    if ports is None:
        return
    current = getattr(aioice.ice, "asyncio", None)
    if isinstance(current, _AsyncioWithPortRange) and current.ports.bounds == ports:
        return
    setattr(aioice.ice, "asyncio", _AsyncioWithPortRange(PortRange(*ports)))  # noqa: B010
    logger.info("WebRTC binds ICE host candidates on UDP ports %d-%d", *ports)


def reset_port_range() -> None:
    """aioice's own port choice again (tests)."""
    setattr(aioice.ice, "asyncio", asyncio)  # noqa: B010


def rtc_configuration(settings: WebRTCSettings) -> Any:
    """Always explicit: no ICE servers unless configured."""
    return RTCConfiguration(iceServers=[RTCIceServer(urls=url) for url in settings.ice_servers])


def advertise(answer: str, address: str | None) -> str:
    """``answer`` with the address of each host candidate (and ``c=`` line) replaced by
    ``address``; unchanged when there is none."""
    if not address:
        return answer
    out: list[str] = []
    for line in answer.split("\r\n"):
        if line.startswith("a=candidate:"):
            parts = line.split()
            if len(parts) >= 8 and parts[7] == "host":
                parts[4] = address
                line = " ".join(parts)
        elif line.startswith("c=IN IP"):
            line = f"c=IN {'IP6' if ':' in address else 'IP4'} {address}"
        out.append(line)
    return "\r\n".join(out)
