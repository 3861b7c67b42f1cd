"""Each live call's conversation as data outside its host, so another host can resume the call.

A session saves its call's record — the items a new model connection needs
(:func:`services.realtime.history.replay_items`, as wire JSON) — at each completed turn; when its
host is lost and the ingress moves the call, the new session loads the record and replays it.

**Fencing.** Every open of a call claims the next *epoch* of that call; a save carries its
session's epoch and is refused once a later epoch has been claimed. So a host that was only
slow, not dead, cannot overwrite the record of the session that replaced it, and learns from the
refusal that its call moved (its copy of the call then ends, reason ``moved``).

The cluster's store is :class:`services.toolbus.conversations.RedisConversations`;
:class:`MemoryConversations` keeps the same rules in one process (tests, hosts without Redis).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["ConversationStore", "ConversationWriter", "Items", "MemoryConversations"]

logger = logging.getLogger(__name__)

Items = list[dict[str, Any]]


class ConversationStore(Protocol):
    async def claim(self, call_id: str) -> int:
        """A new epoch for ``call_id`` (1 for its first open); later saves of older epochs are
        refused from now on."""
        ...

    async def load(self, call_id: str) -> Items:
        """The call's saved items, oldest first ([] when it has none)."""
        ...

    async def save(self, call_id: str, epoch: int, items: Items) -> bool:
        """Save ``items`` as the call's record; False if a later epoch owns the call."""
        ...


class MemoryConversations:
    def __init__(self) -> None:
        self._epochs: dict[str, int] = {}
        self._records: dict[str, Items] = {}

    async def claim(self, call_id: str) -> int:
        self._epochs[call_id] = self._epochs.get(call_id, 0) + 1
        return self._epochs[call_id]

    async def load(self, call_id: str) -> Items:
        return list(self._records.get(call_id, []))

    async def save(self, call_id: str, epoch: int, items: Items) -> bool:
        if self._epochs.get(call_id, 0) > epoch:
            return False
        self._records[call_id] = list(items)
        return True


class ConversationWriter:
    """Saves records from one task per host, latest record per call only: a session never waits
    on Redis, and a burst of turns costs one write per call. ``on_superseded(call_id)`` is called
    when a save is refused because the call moved to another host."""

    def __init__(
        self,
        store: ConversationStore,
        *,
        on_superseded: Callable[[str], None],
        retry_s: float = 0.5,
    ) -> None:
        self._store = store
        self._on_superseded = on_superseded
        self._retry_s = retry_s
        self._pending: dict[str, tuple[int, Items]] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="conversation-writer")

    def save(self, call_id: str, epoch: int, items: Items) -> None:
        self._pending[call_id] = (epoch, items)  # a newer record replaces one not yet written
        if self._task is None:
            self.start()  # on the first save: the host is built before its loop runs
        self._wakeup.set()

    async def _run(self) -> None:
        failing = False
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                call_id = next(iter(self._pending))
                epoch, items = self._pending.pop(call_id)
                try:
                    saved = await self._store.save(call_id, epoch, items)
                except Exception as exc:
                    if not failing:
                        logger.warning("conversation records cannot be saved (%s)", exc)
                        failing = True
                    self._pending.setdefault(call_id, (epoch, items))
                    await asyncio.sleep(self._retry_s)
                    continue
                failing = False
                if not saved:
                    self._on_superseded(call_id)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
