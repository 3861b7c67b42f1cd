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
  outside address: :func:`advertise` rewrites the host candidates of an answer.

A port range is not offered: aioice binds port 0 with no hook; deployments that must open
ports in a firewall use TURN (``CALLRAY_WEBRTC_ICE_SERVERS``) or host networking.
"""

from __future__ import annotations

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
