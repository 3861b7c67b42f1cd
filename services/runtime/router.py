"""The router's logic: host registry, placement with atomic admission, drain, dead hosts.

``actors/router.py`` runs it as the named, detached ``callray-router`` actor; here it talks to
hosts through :class:`HostLike`, so it is tested with fakes. ``open_call`` reserves a seat
synchronously (see :mod:`placement`) before its first ``await``, which is what makes admission
exact under bursts. Time passes only through the injected ``sleep`` (the health loop's interval,
a drain's polling), so tests run the health checks and drains in virtual time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from services.errors import CallrayError
from services.media.vocabulary import MOVED, CallSpec
from services.observability import metrics
from services.runtime.events import EventSink
from services.runtime.placement import REJECTION_REASONS, Placement, Rejected

logger = logging.getLogger(__name__)

HOST_LOST = "host_lost"


class HostLike(Protocol):
    async def open_call(self, spec: CallSpec) -> float: ...

    async def close_call(self, call_id: str, reason: str) -> None: ...

    async def ping(self, limit_s: float) -> Any: ...

    async def shutdown(self, limit_s: float) -> None: ...

    async def hand_off_all(self, reason: str) -> int: ...

    async def say_goodbye_all(self, reason: str) -> int: ...

    def kill(self) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Opened:
    call_id: str
    host_id: str
    host: Any  # the host's handle, for the ingress to stream media to
    setup_s: float


@dataclasses.dataclass(slots=True)
class _Host:
    client: HostLike
    handle: Any
    pid: int
    misses: int = 0
    releasing: bool = False


class RouterCore:
    def __init__(
        self,
        *,
        cluster_capacity: int,
        events: EventSink,
        health_interval_s: float = 1.0,
        ping_timeout_s: float = 2.0,
        misses_before_lost: int = 2,
        move_grace_s: float = 5.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.placement = Placement(cluster_capacity)
        self._hosts: dict[str, _Host] = {}
        self._transport_of: dict[str, str] = {}
        self._events = events
        self._interval = health_interval_s
        self._ping_timeout = ping_timeout_s
        self._misses = misses_before_lost
        self._move_grace_s = move_grace_s
        # Calls of a lost host that their ingress may still move: reported ended only if it
        # has not within move_grace_s (transport by call id).
        self._orphans: dict[str, str] = {}
        self._sleep = sleep
        self._tasks: set[asyncio.Task[None]] = set()
        self.released: list[str] = []
        self.lost: list[str] = []

    # ----- hosts ---------------------------------------------------------------------------------

    def register_host(
        self, host_id: str, client: HostLike, handle: Any, capacity: int, pid: int
    ) -> None:
        self._hosts[host_id] = _Host(client, handle, pid)
        self.placement.add_host(host_id, capacity)
        logger.info("session host %s registered (capacity %d)", host_id, capacity)

    def drain(self, host_id: str) -> bool:
        """No new calls on ``host_id``; once its calls have ended it is shut down and released."""
        if not self.placement.drain(host_id):
            return False
        self._spawn(self._release_when_drained(host_id))
        return True

    async def _release_when_drained(self, host_id: str) -> None:
        while not self.placement.drained(host_id):
            if host_id not in self._hosts:
                return  # lost while draining
            await self._sleep(0.05)
        host = self._hosts.pop(host_id, None)
        self.placement.remove_host(host_id)
        if host is None:
            return
        try:
            await host.client.shutdown(limit_s=10.0)
        except CallrayError:
            logger.warning("host %s did not shut down cleanly", host_id)
        host.client.kill()
        metrics.process_exited(host.pid)
        self.released.append(host_id)
        logger.info("session host %s drained and released", host_id)

    async def evacuate(self, host_id: str) -> str:
        """Empty a draining host now (its drain ran past the deadline): when another host has
        room its calls move there (the ingresses move them, as for a lost host: a gap, not a
        hang-up); when none has, each ends with the agent's spoken goodbye. Returns which."""
        host = self._hosts.get(host_id)
        if host is None or not self.placement.is_draining(host_id):
            raise CallrayError(f"session host {host_id} is not draining")
        if self.placement.free_seats(avoid=host_id) > 0:
            n = await host.client.hand_off_all("host_drained")
            logger.info("drain deadline: %d calls on %s move to other hosts", n, host_id)
            return "moved"
        n = await host.client.say_goodbye_all("host_drained")
        logger.info(
            "drain deadline: %d calls on %s end with a goodbye (no room elsewhere)", n, host_id
        )
        return "goodbye"

    # ----- calls ---------------------------------------------------------------------------------

    async def open_call(self, spec: CallSpec) -> Opened | Rejected:
        return await self._open(spec)

    async def _open(self, spec: CallSpec, avoid: str | None = None) -> Opened | Rejected:
        decision = self.placement.place(spec.call_id, avoid=avoid)  # synchronous: admission
        if isinstance(decision, Rejected):
            metrics.call_rejected(decision.reason)
            return decision
        host = self._hosts[decision.host_id]
        self._transport_of[spec.call_id] = spec.transport
        try:
            setup = await host.client.open_call(spec)
        except Exception as exc:
            self.placement.release(spec.call_id)
            self._transport_of.pop(spec.call_id, None)
            reason = getattr(exc, "reason", "setup_failed")
            logger.warning("call setup failed on %s: %s", decision.host_id, reason)
            return Rejected(str(reason))
        return Opened(spec.call_id, decision.host_id, host.handle, setup)

    async def move_call(self, spec: CallSpec, from_host: str) -> Opened | Rejected:
        """Open ``spec`` (a live call: its ingress lost the media channel to ``from_host``) on
        another host. The caller is still on the line, so this is a placement like a new call's
        except that it never lands on ``from_host``; the session there, if the host is only
        slow and not dead, is told to end (``moved``): the ingress already ignores it, and a
        call is never live on two hosts for longer than that message takes."""
        self.placement.release(spec.call_id)
        self._transport_of.pop(spec.call_id, None)
        self._orphans.pop(spec.call_id, None)
        old = self._hosts.get(from_host)
        if old is not None:
            self._spawn(self._close_moved(old, from_host, spec.call_id))
        result = await self._open(spec, avoid=from_host)
        metrics.call_moved("moved" if isinstance(result, Opened) else "no_capacity")
        if isinstance(result, Opened):
            logger.info("call moved from %s to %s", from_host, result.host_id)
        return result

    async def _close_moved(self, host: _Host, host_id: str, call_id: str) -> None:
        try:
            await host.client.close_call(call_id, MOVED)
        except CallrayError:
            pass  # gone, as the ingress thought: its health check will say so
        except Exception:
            logger.warning("could not tell %s that a call moved away", host_id, exc_info=True)

    def release(self, call_id: str, reason: str = "", host_id: str | None = None) -> None:
        """A call ended on ``host_id``. A session that ended because its call moved away must
        not free the seat the call now holds on its new host, so a release names its host."""
        if host_id is not None and self.placement.host_of(call_id) != host_id:
            return
        self.placement.release(call_id)
        self._transport_of.pop(call_id, None)

    def host_handles(self) -> dict[str, Any]:
        """Every registered host's handle, by host id."""
        return {host_id: host.handle for host_id, host in self._hosts.items()}

    def status(self) -> dict[str, Any]:
        return {
            "calls": self.placement.active_calls,
            "cluster_capacity": self.placement.cluster_capacity,
            "hosts": {
                s.host_id: {"calls": len(s.calls), "capacity": s.capacity, "draining": s.draining}
                for s in self.placement.hosts()
            },
            "released": list(self.released),
            "lost": list(self.lost),
        }

    # ----- health --------------------------------------------------------------------------------

    def start(self) -> None:
        metrics.declare_rejection_reasons(REJECTION_REASONS)
        self._spawn(self._health_loop())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _health_loop(self) -> None:
        while True:
            await self._sleep(self._interval)
            await self.check_hosts()

    async def check_hosts(self) -> None:
        """One round of health checks: every host is pinged; ``misses_before_lost`` rounds in a
        row without an answer make it lost."""
        await asyncio.gather(*(self._check(h) for h in list(self._hosts)))

    async def _check(self, host_id: str) -> None:
        host = self._hosts.get(host_id)
        if host is None:
            return
        try:
            await host.client.ping(limit_s=self._ping_timeout)
            host.misses = 0
        except CallrayError:
            host.misses += 1
            if host.misses >= self._misses and host_id in self._hosts:
                self.host_lost(host_id)

    def host_lost(self, host_id: str) -> list[str]:
        """Place no more calls on a dead host; report each of its calls ended unless its
        ingress moves it (``move_call``) within ``move_grace_s``."""
        host = self._hosts.pop(host_id, None)
        calls = self.placement.remove_host(host_id)
        self.lost.append(host_id)
        for call_id in calls:
            self._orphans[call_id] = self._transport_of.pop(call_id, "unknown")
        if calls:
            self._spawn(self._end_unmoved(calls))
        if host is not None:
            metrics.process_exited(host.pid)
        logger.error("session host %s lost with %d calls", host_id, len(calls))
        return calls

    async def _end_unmoved(self, calls: list[str]) -> None:
        await self._sleep(self._move_grace_s)
        for call_id in calls:
            transport = self._orphans.pop(call_id, None)
            if transport is None:
                continue  # moved
            metrics.call_outcome(transport, HOST_LOST)
            self._events.emit("call.ended", call_id, reason=HOST_LOST, duration_s=-1)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
