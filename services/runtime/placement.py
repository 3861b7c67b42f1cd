"""Placement and admission of calls on session hosts: the router's state, without Ray.

Admission is atomic because :meth:`Placement.place` never awaits: in the router actor it runs to
completion before any other request is looked at, so a burst of simultaneous opens can never push
a host or the cluster past its cap (the over-admission LiveKit shows under bursts). A call holds
its seat from placement until :meth:`release`, including while its host is still setting it up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

BUSY_CLUSTER = "cluster_at_capacity"
BUSY_HOSTS = "no_host_with_capacity"
NO_HOSTS = "no_session_hosts"
# Every reason admission refuses a call for: their counters exist from the start at 0.
REJECTION_REASONS = (BUSY_CLUSTER, BUSY_HOSTS, NO_HOSTS)


@dataclasses.dataclass(frozen=True, slots=True)
class Placed:
    host_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class Rejected:
    """The call cannot be taken now; ``reason`` lets the ingress play a busy signal."""

    reason: str


@dataclasses.dataclass(slots=True)
class HostSeat:
    host_id: str
    capacity: int
    calls: set[str] = dataclasses.field(default_factory=set)
    draining: bool = False

    @property
    def free(self) -> int:
        return self.capacity - len(self.calls)


class Placement:
    def __init__(self, cluster_capacity: int) -> None:
        self.cluster_capacity = cluster_capacity
        self._hosts: dict[str, HostSeat] = {}
        self._call_host: dict[str, str] = {}

    # ----- hosts ---------------------------------------------------------------------------------

    def add_host(self, host_id: str, capacity: int) -> None:
        seat = self._hosts.get(host_id)
        if seat is None:
            self._hosts[host_id] = HostSeat(host_id, capacity)
        else:
            seat.capacity = capacity
            seat.draining = False

    def drain(self, host_id: str) -> bool:
        """Stop placing calls on ``host_id``; its calls go on. False if the host is unknown."""
        seat = self._hosts.get(host_id)
        if seat is None:
            return False
        seat.draining = True
        return True

    def is_draining(self, host_id: str) -> bool:
        seat = self._hosts.get(host_id)
        return seat is not None and seat.draining

    def free_seats(self, *, avoid: str | None = None) -> int:
        """Seats open to new calls on hosts that take them (not ``avoid``)."""
        hosts = sum(s.free for s in self._hosts.values() if not s.draining and s.host_id != avoid)
        return max(0, min(hosts, self.cluster_capacity - len(self._call_host)))

    def drained(self, host_id: str) -> bool:
        seat = self._hosts.get(host_id)
        return seat is not None and seat.draining and not seat.calls

    def remove_host(self, host_id: str) -> list[str]:
        """Forget a host (released after draining, or lost); returns the calls it still had."""
        seat = self._hosts.pop(host_id, None)
        if seat is None:
            return []
        for call_id in seat.calls:
            self._call_host.pop(call_id, None)
        return sorted(seat.calls)

    def hosts(self) -> list[HostSeat]:
        return list(self._hosts.values())

    # ----- calls ---------------------------------------------------------------------------------

    @property
    def active_calls(self) -> int:
        return len(self._call_host)

    def place(self, call_id: str, *, avoid: str | None = None) -> Placed | Rejected:
        """Reserve a seat for ``call_id`` on the least-loaded host that takes calls (not on
        ``avoid``: the host a moving call comes from)."""
        existing = self._call_host.get(call_id)
        if existing is not None:
            return Placed(existing)  # a retried open lands where the first one did
        if not self._hosts:
            return Rejected(NO_HOSTS)
        if len(self._call_host) >= self.cluster_capacity:
            return Rejected(BUSY_CLUSTER)
        best = _least_loaded(
            s for s in self._hosts.values() if not s.draining and s.free > 0 and s.host_id != avoid
        )
        if best is None:
            return Rejected(BUSY_HOSTS)
        best.calls.add(call_id)
        self._call_host[call_id] = best.host_id
        return Placed(best.host_id)

    def release(self, call_id: str) -> str | None:
        """Free the seat of ``call_id``; returns its host, or None if it held none."""
        host_id = self._call_host.pop(call_id, None)
        if host_id is not None:
            seat = self._hosts.get(host_id)
            if seat is not None:
                seat.calls.discard(call_id)
        return host_id

    def host_of(self, call_id: str) -> str | None:
        return self._call_host.get(call_id)


def _least_loaded(seats: Iterable[HostSeat]) -> HostSeat | None:
    # Lowest fill ratio first, then most free seats, then id: deterministic for tests and logs.
    return min(
        seats,
        key=lambda s: (len(s.calls) / s.capacity, -s.free, s.host_id),
        default=None,
    )
