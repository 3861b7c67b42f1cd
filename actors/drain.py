"""``callray drain``: take session hosts out of service without dropping a call.

Joins the running cluster, asks the router to drain each host (no new calls are placed there;
once its calls have ended the router shuts it down and releases it) and reports the calls left
until every host named is released. When ``timeout_s`` passes first, the calls still up are
moved off (``RouterCore.evacuate``): to other hosts when they have room, the caller hearing a
gap and the agent picking up where it was; with no room anywhere (``--all``), each ends with
the agent's spoken goodbye. Exit status: 0 once every host is released, 1 when calls are still
up ``EVACUATE_S`` after that (they are listed), 2 for a host the router does not know.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from actors import _ray

# After the deadline: a move takes about a second, a goodbye up to CallSession.GOODBYE_GRACE_S.
EVACUATE_S = 15.0


def run_drain(
    hosts: Sequence[str],
    *,
    all_hosts: bool,
    timeout_s: float,
    say: Callable[[str], None] = print,
    poll_s: float = 0.5,
) -> int:
    router = _ray.get_router()
    status = _ray.call_sync(router, "status")
    targets = sorted(status["hosts"]) if all_hosts else list(hosts)
    unknown = [h for h in targets if h not in status["hosts"]]
    if unknown or not targets:
        say(f"callray drain: no such session host: {', '.join(unknown) or '(none given)'}")
        return 2
    for host_id in targets:
        _ray.call_sync(router, "drain", host_id)
    say(f"callray drain: draining {', '.join(targets)}; no new calls go there")
    deadline = time.monotonic() + timeout_s
    reported: dict[str, int] = {}
    evacuated = False
    while True:
        status = _ray.call_sync(router, "status")
        left = {h: status["hosts"][h]["calls"] for h in targets if h in status["hosts"]}
        for host_id, calls in left.items():
            if reported.get(host_id) != calls:
                say(f"  {host_id}: {calls} calls left")
                reported[host_id] = calls
        if not left:
            say("callray drain: drained and released: " + ", ".join(targets))
            return 0
        if time.monotonic() >= deadline:
            still = ", ".join(f"{h} ({n} calls)" for h, n in left.items())
            if evacuated:
                say(f"callray drain: calls still up after moving them off: {still}")
                return 1
            evacuated = True
            deadline = time.monotonic() + EVACUATE_S
            for host_id in left:
                how = _ray.call_sync(router, "evacuate", host_id)
                verb = (
                    "moving them to other hosts" if how == "moved" else "ending them with a goodbye"
                )
                say(f"callray drain: {timeout_s:g} s passed; {host_id}: {verb}")
        time.sleep(poll_s)
