"""What a tool may do to the call it runs in: hang up or transfer.

Tools that control the call run in the session's own process (``in_process=True``): they reach
the call through ``ToolContext.context``, which the session host sets to the call's
:class:`CallControl`. A tool running on a remote executor gets no control object.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class CallControl(Protocol):
    call_id: str

    def hang_up(self, reason: str = "agent_hangup") -> None: ...

    def transfer(self, target: str) -> None: ...
