"""HostLink's feed loop when the session host does not take a batch: audio of that moment is
dropped, control inputs (marks heard, DTMF, hang-ups) go out first in the next batch, in order,
and a host that stays gone does not make the loop spin or hold them forever."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from services.errors import TransportError
from services.gateway.host_link import RETRY_LIMIT, HostLink
from services.runtime.commands import CallerHungUp, CallInput, Command, Dtmf, Played


class FlakyHost:
    """Refuses the first ``failures`` feeds, then records every batch it takes."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts = 0
        self.taken: list[list[tuple[str, bytes | CallInput]]] = []

    async def feed(self, batch: Sequence[tuple[str, bytes | CallInput]], sent_at: float) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise TransportError("media channel lost")
        self.taken.append(list(batch))

    async def pull_output(self, max_wait_s: float, ingress_id: str) -> list[Command]:
        await asyncio.sleep(max_wait_s)
        return []


async def until(predicate: Callable[[], object], seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_controls_survive_a_failed_feed_and_audio_of_that_moment_does_not() -> None:
    host = FlakyHost(failures=1)
    link = HostLink(host, ingress_id="i1", dispatch=lambda _c: None, retry_s=0.01)
    link.start()
    try:
        link.add_frame("c1", b"\xff" * 160)
        link.send("c1", Played("item_1", 0, 20.0))
        link.send("c1", Dtmf("5"))
        link.send("c2", CallerHungUp("stream_closed"))
        await until(lambda: host.attempts >= 1)
        link.add_frame("c1", b"\x00" * 160)  # newer audio, after the failure
        await until(lambda: host.taken)
        taken = [item for batch in host.taken for item in batch]
        assert taken == [
            ("c1", Played("item_1", 0, 20.0)),
            ("c1", Dtmf("5")),
            ("c2", CallerHungUp("stream_closed")),
            ("c1", b"\x00" * 160),
        ]
    finally:
        await link.close()


async def test_a_host_that_stays_gone_is_retried_at_a_bounded_rate_then_given_up() -> None:
    host = FlakyHost(failures=10_000)
    link = HostLink(host, ingress_id="i1", dispatch=lambda _c: None, retry_s=0.01)
    link.start()
    try:
        link.send("c1", CallerHungUp("stream_closed"))
        await asyncio.sleep(0.5)
        # At most one attempt per retry_s (not one per 2 ms tick), and the hang-up was given
        # up after RETRY_LIMIT attempts: nothing is left to send, so attempts stop.
        assert RETRY_LIMIT <= host.attempts <= 0.5 / 0.01 + 1
        settled = host.attempts
        await asyncio.sleep(0.1)
        assert host.attempts == settled == RETRY_LIMIT
    finally:
        await link.close()
