"""What the front door allows before a peer has proved anything, sans-I/O.

A media stream is unauthenticated until its ``start`` frame carries a valid single-use token:
until then anyone on the internet can hold a socket and a task of the ingress. So each such
stream has a deadline (``GatewaySettings.stream_start_s``, enforced by the adapter) and their
number is bounded in total and per source address (:class:`PendingStreams`); past a bound a new
stream is refused before the WebSocket upgrade (503), which costs the peer a round trip and us
nothing. Streams that opened a call no longer count: they are paid for by an admitted call.
"""

from __future__ import annotations

__all__ = ["PendingStreams", "Ticket"]


class Ticket:
    """One admitted unauthenticated stream; :meth:`release` (idempotent) when its call opens
    or it ends, whichever comes first."""

    __slots__ = ("_owner", "_source")

    def __init__(self, owner: PendingStreams, source: str) -> None:
        self._owner: PendingStreams | None = owner
        self._source = source

    def release(self) -> None:
        if self._owner is not None:
            self._owner._release(self._source)
            self._owner = None


class PendingStreams:
    """Counts unauthenticated streams by source; :meth:`admit` refuses past either bound."""

    def __init__(self, *, total: int, per_source: int) -> None:
        self.total_limit = total
        self.per_source_limit = per_source
        self._by_source: dict[str, int] = {}
        self.total = 0

    def admit(self, source: str) -> Ticket | str:
        """A ticket for a new stream from ``source``, or the reason it is refused."""
        if self.total >= self.total_limit:
            return "too many unauthenticated streams"
        if self._by_source.get(source, 0) >= self.per_source_limit:
            return "too many unauthenticated streams from this address"
        self._by_source[source] = self._by_source.get(source, 0) + 1
        self.total += 1
        return Ticket(self, source)

    def pending(self, source: str) -> int:
        return self._by_source.get(source, 0)

    def _release(self, source: str) -> None:
        left = self._by_source[source] - 1
        if left:
            self._by_source[source] = left
        else:
            del self._by_source[source]  # the map holds only sources with streams pending
        self.total -= 1
