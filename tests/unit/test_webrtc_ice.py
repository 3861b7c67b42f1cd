"""The ICE hook: aioice still gathers through the function we replace, the configured addresses
are the ones gathered, our configuration never falls back to a public STUN server, and answers
advertise the outside address."""

from __future__ import annotations

import asyncio
import inspect

import aioice.ice

from services.config import WebRTCSettings
from services.webrtc import ice


def test_aioice_gathers_through_the_function_we_replace() -> None:
    # If aioice renames get_host_addresses or stops calling it from gather_candidates, the hook
    # would silently do nothing and loopback tests (and chosen addresses) would stop working.
    assert "get_host_addresses(" in inspect.getsource(aioice.ice.Connection.gather_candidates)
    assert callable(aioice.ice.get_host_addresses)


def test_install_chooses_the_addresses_and_empty_changes_nothing() -> None:
    try:
        ice.install(("127.0.0.1", "::1"))
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["127.0.0.1"]
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1", "::1"]
        ice.install(())  # another component with nothing configured, in the same process
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["127.0.0.1"]
    finally:
        ice.reset()
    assert aioice.ice.get_host_addresses is ice._original
    assert "127.0.0.1" not in aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)


def test_no_ice_servers_unless_configured() -> None:
    assert ice.rtc_configuration(WebRTCSettings()).iceServers == []
    configured = ice.rtc_configuration(WebRTCSettings(ice_servers=("stun:stun.example:3478",)))
    assert [s.urls for s in configured.iceServers] == ["stun:stun.example:3478"]


def test_answers_advertise_the_outside_address_for_host_candidates() -> None:
    answer = (
        "v=0\r\nc=IN IP4 10.1.2.3\r\n"
        "a=candidate:1 1 udp 2130706431 10.1.2.3 40000 typ host\r\n"
        "a=candidate:2 1 udp 1694498815 198.51.100.9 40000 typ srflx raddr 10.1.2.3 rport 40000\r\n"
    )
    out = ice.advertise(answer, "203.0.113.5")
    assert "c=IN IP4 203.0.113.5" in out
    assert "a=candidate:1 1 udp 2130706431 203.0.113.5 40000 typ host" in out
    assert "198.51.100.9 40000 typ srflx" in out  # a server-reflexive one is already outside
    assert ice.advertise(answer, None) == answer


def test_aioice_binds_host_candidates_through_the_loop_on_port_zero() -> None:
    # The port range hooks exactly this call; if aioice binds another way, the range would
    # silently stop applying.
    source = inspect.getsource(aioice.ice.Connection.get_component_candidates)
    assert "asyncio.get_running_loop()" in source
    assert "loop.create_datagram_endpoint(" in source and "local_addr=(address, 0)" in source


async def test_host_candidates_bind_within_the_port_range_round_robin() -> None:
    import socket

    ports = _free_run(3)
    ice.install(("127.0.0.1",))
    ice.install_port_range((ports[0], ports[-1]))
    try:
        bound = []
        for _ in range(4):
            connection = aioice.ice.Connection(ice_controlling=False)
            await connection.gather_candidates()
            bound += [c.port for c in connection.local_candidates]
            await connection.close()
        assert bound == [ports[0], ports[1], ports[2], ports[0]]
        # Taken by someone else: skipped; all taken: no candidate at all.
        blockers = []
        for port in ports[:2]:
            blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            blocker.bind(("127.0.0.1", port))
            blockers.append(blocker)
        connection = aioice.ice.Connection(ice_controlling=False)
        await connection.gather_candidates()
        assert [c.port for c in connection.local_candidates] == [ports[2]]
        full = aioice.ice.Connection(ice_controlling=False)
        await full.gather_candidates()
        assert full.local_candidates == []
        await connection.close()
        await full.close()
        for blocker in blockers:
            blocker.close()
    finally:
        ice.reset_port_range()
        ice.reset()
    assert aioice.ice.asyncio is asyncio


def _free_run(n: int) -> list[int]:
    """``n`` consecutive UDP ports free on 127.0.0.1 now."""
    import socket

    for first in range(41000, 60000, n):
        socks = []
        try:
            for port in range(first, first + n):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return list(range(first, first + n))
    raise RuntimeError("no free run of UDP ports")
