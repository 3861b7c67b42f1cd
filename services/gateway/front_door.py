"""What the front door allows before a peer has proved anything, sans-I/O.

A media stream is unauthenticated until its ``start`` frame carries a valid single-use token:
until then anyone on the internet can hold a socket and a task of the ingress. So each such
stream has a deadline (``GatewaySettings.stream_start_s``, enforced by the adapter) and their
number is bounded in total and per source address (:class:`PendingStreams`); past a bound a new
stream is refused before the WebSocket upgrade (503), which costs the peer a round trip and us
nothing. Streams that opened a call no longer count: they are paid for by an admitted call.

Before that, an HTTP connection that has not sent one whole request (slowloris: headers a byte
at a time) is held by the HTTP server itself, which has no deadline for it.
:class:`SilentConnections` decides which such connections to close: each past
``GatewaySettings.request_timeout_s`` and, past the same bounds as streams, the newest ones.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

__all__ = ["PendingStreams", "SilentConnections", "SourceRate", "Ticket"]


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


class SilentConnections:
    """HTTP connections that have not yet sent a whole request, swept on a timer.

    :meth:`sweep` is given every open connection as ``(key, source, has_sent_a_request)`` and
    returns the keys to close with why: silent past ``deadline_s`` since first seen
    (``header_timeout``), or beyond ``total`` / ``per_source`` silent connections, the newest
    first (``connection_limit``). A connection that has sent a request is the request handler's
    business from then on.
    """

    def __init__(self, *, deadline_s: float, total: int, per_source: int) -> None:
        self.deadline_s = deadline_s
        self.total_limit = total
        self.per_source_limit = per_source
        self._first_seen: dict[Hashable, float] = {}

    def sweep(
        self, now: float, connections: Iterable[tuple[Hashable, str, bool]]
    ) -> list[tuple[Hashable, str]]:
        silent: list[tuple[float, Hashable, str]] = []
        seen: dict[Hashable, float] = {}
        for key, source, has_request in connections:
            if has_request:
                continue
            first = self._first_seen.get(key, now)
            seen[key] = first
            silent.append((first, key, source))
        self._first_seen = seen  # forgets connections that closed or sent a request
        close: list[tuple[Hashable, str]] = []
        kept: list[tuple[float, Hashable, str]] = []
        for first, key, source in sorted(silent, key=lambda s: s[0]):
            if now - first >= self.deadline_s:
                close.append((key, "header_timeout"))
            else:
                kept.append((first, key, source))
        by_source: dict[str, int] = {}
        staying = 0
        for _first, key, source in kept:  # oldest first: the newest go
            if staying >= self.total_limit or by_source.get(source, 0) >= self.per_source_limit:
                close.append((key, "connection_limit"))
                continue
            by_source[source] = by_source.get(source, 0) + 1
            staying += 1
        for key, _why in close:
            self._first_seen.pop(key, None)
        return close


class SourceRate:
    """A token bucket per source address: ``rate`` a second with bursts of ``burst``. Used for
    requests that cost real work before the peer proved anything (a WebRTC offer: ICE sockets,
    DTLS). Sources idle long enough to refill are forgotten, so the map stays small."""

    def __init__(self, *, rate: float, burst: float, max_sources: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self._max_sources = max_sources
        self._buckets: dict[str, tuple[float, float]] = {}  # source -> (tokens, at)

    def allow(self, source: str, now: float) -> bool:
        tokens, at = self._buckets.get(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[source] = (tokens, now)
            return False
        self._buckets[source] = (tokens - 1.0, now)
        if len(self._buckets) > self._max_sources:
            self._forget_full(now)
        return True

    def _forget_full(self, now: float) -> None:
        refill_s = self.burst / self.rate
        self._buckets = {s: b for s, b in self._buckets.items() if now - b[1] < refill_s}
