"""Where each kind of actor may run: one Ray custom resource per kind, defined here only.

On KubeRay every actor asked for nothing (``num_cpus=0``), so actors landed on any pod, the
head included (ray#41824), and a pod whose actors hold no resources counts as idle, so the
autoscaler could remove it mid-call (ray#37733, #46172). Each actor now holds one unit of its
kind's resource: a worker group offers that resource (``rayStartParams.resources``) and only
that kind lands there, and a pod with a call's session host is never idle. ``callray up``
gives its local Ray every resource (:data:`LOCAL`), so one machine runs the same code.
"""

from __future__ import annotations

from typing import Final

ROUTER: Final = "callray_router"  # the head
INGRESS: Final = "callray_ingress"
SESSION_HOST: Final = "callray_session_host"
TOOL_EXECUTOR: Final = "callray_tool_executor"

# The actor classes (by name: this module imports no actor) and the resource each holds.
BY_ACTOR: Final[dict[str, str]] = {
    "RouterActor": ROUTER,
    "IngressActor": INGRESS,
    "SessionHostActor": SESSION_HOST,
    "ToolExecutorActor": TOOL_EXECUTOR,
}
UNIT: Final = 1.0  # each actor holds one of its kind's units
# A local Ray (callray up, tests): room for any number of each kind on the one node.
LOCAL: Final[dict[str, float]] = {name: 10_000.0 for name in sorted(set(BY_ACTOR.values()))}
