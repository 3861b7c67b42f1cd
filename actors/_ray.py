"""Every ``ray.*`` call of callray lives here (STYLE.md: Ray calls in one place).

The actor classes in this package are plain Python; this module turns them into Ray actors,
finds and kills them, and wraps their handles in small async clients (:class:`HostClient`,
:class:`RouterClient`) so the logic that uses them can be tested with fakes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from services.errors import ActorGone
from services.runtime import resources

NAMESPACE = "callray"
ROUTER_NAME = "callray-router"


def init(
    *,
    address: str | None,
    num_cpus: int | None = None,
    env_vars: Mapping[str, str] | None = None,
) -> None:
    """Start a local Ray (``address`` None) or join a cluster, in the ``callray`` namespace."""
    runtime_env: dict[str, Any] = {"env_vars": dict(env_vars or {})}
    if address:
        ray.init(address=address, namespace=NAMESPACE, runtime_env=runtime_env, log_to_driver=False)
        return
    ray.init(
        namespace=NAMESPACE,
        num_cpus=num_cpus,
        resources=dict(resources.LOCAL),  # every actor kind may run on this one node
        include_dashboard=False,
        runtime_env=runtime_env,
        log_to_driver=False,
    )


def resources_in_use() -> dict[str, float]:
    """How many units of each actor kind's resource are held now, cluster-wide (Ray updates
    this with its resource reports, so it may lag a moment behind the actors)."""
    total = ray.cluster_resources()  # type: ignore[no-untyped-call]
    free = ray.available_resources()  # type: ignore[no-untyped-call]
    kinds = set(resources.BY_ACTOR.values())
    return {k: float(total.get(k, 0.0)) - float(free.get(k, 0.0)) for k in sorted(kinds)}


def missing_resources() -> list[str]:
    """The actor kinds' resources no node of the joined cluster offers: their actors would
    wait forever (a worker group offers them in ``rayStartParams.resources``)."""
    offered = ray.cluster_resources()  # type: ignore[no-untyped-call]
    return [k for k in sorted(set(resources.BY_ACTOR.values())) if not offered.get(k)]


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()


def is_initialized() -> bool:
    return bool(ray.is_initialized())


def _remote(cls: type, **options: Any) -> Any:
    # Hosts are asyncio actors with their own concurrency limits: many concurrent methods,
    # no CPU reservation (feasibility §2: num_cpus=0 schedules freely); where they may run is
    # their kind's custom resource (services/runtime/resources.py).
    kind = resources.BY_ACTOR.get(cls.__name__)
    held = {kind: resources.UNIT} if kind is not None else {}
    return ray.remote(cls).options(num_cpus=0, max_concurrency=10_000, resources=held, **options)


def start_actor(
    cls: type,
    *args: Any,
    name: str | None = None,
    detached: bool = False,
    **kwargs: Any,
) -> Any:
    options: dict[str, Any] = {}
    if name is not None:
        options["name"] = name
        options["namespace"] = NAMESPACE
    if detached:
        options["lifetime"] = "detached"
    return _remote(cls, **options).remote(*args, **kwargs)


def get_router() -> Any:
    return ray.get_actor(ROUTER_NAME, namespace=NAMESPACE)


def kill(handle: Any) -> None:
    try:
        ray.kill(handle, no_restart=True)
    except (RayActorError, ValueError):
        pass


async def call(handle: Any, method: str, *args: Any, limit_s: float | None = None) -> Any:
    """Await ``handle.method(*args)``; a dead or unresponsive actor raises :class:`ActorGone`."""
    ref = getattr(handle, method).remote(*args)
    try:
        async with asyncio.timeout(limit_s):
            return await ref
    except (RayActorError, GetTimeoutError, TimeoutError) as exc:
        raise ActorGone(f"actor did not answer {method}: {type(exc).__name__}") from exc


def call_sync(handle: Any, method: str, *args: Any, timeout: float | None = 30.0) -> Any:
    """Blocking form of :func:`call`, for drivers and tests."""
    try:
        return ray.get(getattr(handle, method).remote(*args), timeout=timeout)
    except (RayActorError, GetTimeoutError) as exc:
        raise ActorGone(f"actor did not answer {method}: {type(exc).__name__}") from exc


def fire(handle: Any, method: str, *args: Any) -> None:
    """Call without waiting for the result (release notices and the like)."""
    getattr(handle, method).remote(*args)


def wait_all(refs: Sequence[Any], timeout: float | None = None) -> list[Any]:
    return list(ray.get(list(refs), timeout=timeout))


def submit(handle: Any, method: str, *args: Any) -> Any:
    """Start a call and return its reference (pair with :func:`wait_all`)."""
    return getattr(handle, method).remote(*args)


def actor_key(handle: Any) -> str:
    """A stable key for the actor behind ``handle`` (handles to one actor compare unequal)."""
    return str(handle._actor_id.hex())


def own_pid() -> int:
    return os.getpid()


class HostClient:
    """The router's view of one session host."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def open_call(self, spec: Any) -> float:
        return float(await call(self.handle, "open_call", spec))

    async def ping(self, limit_s: float) -> Any:
        return await call(self.handle, "ping", limit_s=limit_s)

    async def close_call(self, call_id: str, reason: str) -> None:
        await call(self.handle, "close_call", call_id, reason, limit_s=5.0)

    async def shutdown(self, limit_s: float) -> None:
        await call(self.handle, "shutdown", limit_s=limit_s)

    async def hand_off_all(self, reason: str) -> int:
        return int(await call(self.handle, "hand_off_all", reason, limit_s=5.0))

    async def say_goodbye_all(self, reason: str) -> int:
        return int(await call(self.handle, "say_goodbye_all", reason, limit_s=5.0))

    def kill(self) -> None:
        kill(self.handle)


class RouterClient:
    """The router as session hosts (release, register) and ingresses (open_call, move_call)
    use it."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def release(self, call_id: str, reason: str, host_id: str) -> None:
        fire(self.handle, "release", call_id, reason, host_id)

    async def register_host(self, host_id: str, host: Any, capacity: int, pid: int) -> None:
        await call(self.handle, "register_host", host_id, host, capacity, pid)

    async def open_call(self, spec: Any) -> Any:
        return await call(self.handle, "open_call", spec)

    async def move_call(self, spec: Any, from_host: str) -> Any:
        return await call(self.handle, "move_call", spec, from_host)


def current_actor() -> Any:
    """The handle of the actor this code runs in."""
    return ray.get_runtime_context().current_actor


def node_ip() -> str:
    """This node's address as Ray sees it (127.0.0.1 in a loopback-only namespace)."""
    return str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]
