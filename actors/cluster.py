"""Starts and stops callray's actors on a Ray cluster: router, session hosts, tool executors.

Used by ``callray up`` and by the tests; the driver talks to calls through :class:`Cluster`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from actors import _ray
from actors.ingress import IngressActor
from actors.router import RouterActor
from actors.session_host import SessionHostActor
from actors.tool_executor import ToolExecutorActor
from services.config import GatewaySettings, MediaSettings, ModelSettings, RuntimeSettings
from services.errors import ActorGone
from services.media.vocabulary import CallSpec
from services.observability import metrics
from services.runtime.placement import Rejected
from services.runtime.router import Opened

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Cluster:
    router: Any
    hosts: dict[str, Any]
    host_pids: dict[str, int]
    executors: list[Any]
    executor_pids: list[int]
    ingresses: list[Any] = dataclasses.field(default_factory=list)
    ingress_ports: list[int] = dataclasses.field(default_factory=list)
    # Ingresses claim stream tokens here, so a token is single-use across all of them.
    redis_url: str | None = None
    # What start_cluster was given, so reconcile() can start replacements alike.
    spawn: dict[str, Any] = dataclasses.field(default_factory=dict)
    restarts: int = 0
    # Rounds in a row an actor did not answer (by actor key): two make it dead, so one slow
    # answer from a busy host does not get it replaced.
    misses: dict[str, int] = dataclasses.field(default_factory=dict)

    def add_ingress(
        self, ingress_id: str, settings: GatewaySettings, media: MediaSettings | None = None
    ) -> int:
        host = self.spawn.get("host", {})
        handle = _ray.start_actor(
            IngressActor,
            ingress_id,
            settings,
            redis_url=self.redis_url,
            media=media,
            # Browsers may call the model directly with keys this ingress mints for the agent.
            model=host.get("model"),
            model_url=host.get("model_url"),
            agent_spec=getattr(host.get("settings"), "agent", None),
        )
        port = int(_ray.call_sync(handle, "start", timeout=60.0))
        self.ingresses.append(handle)
        self.ingress_ports.append(port)
        return port

    def open_call(self, spec: CallSpec, *, limit_s: float = 30.0) -> Opened | Rejected:
        result: Opened | Rejected = _ray.call_sync(self.router, "open_call", spec, timeout=limit_s)
        return result

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = _ray.call_sync(self.router, "status")
        return status

    def add_host(
        self,
        host_id: str,
        settings: RuntimeSettings,
        *,
        redis_url: str,
        model: ModelSettings,
        model_url: str,
    ) -> Any:
        handle = _ray.start_actor(
            SessionHostActor,
            host_id,
            redis_url=redis_url,
            model=model,
            model_url=model_url,
            agent_spec=settings.agent,
            capacity=settings.host_capacity,
            tool_timeout_s=settings.tool_timeout_s,
            events_maxlen=settings.events_maxlen,
            media=settings.media,
            max_call_s=settings.max_call_s,
        )
        self.host_pids[host_id] = _ray.call_sync(handle, "start", timeout=60.0)
        self.hosts[host_id] = handle
        return handle

    def reconcile(self, limit_s: float = 2.0) -> list[str]:
        """One round of supervision: every session host and tool executor is pinged, and each
        that is dead (its process killed, its node gone) is replaced by a new one, so a pool does
        not stay short. A lost host's calls are moved by their ingresses, not here; a dead
        executor's entries are reclaimed by the others. Returns what was started."""
        started: list[str] = []
        released = set(self.status()["released"])
        for host_id, handle in list(self.hosts.items()):
            if host_id in released:
                # Drained on purpose (`callray drain`): gone for good, not to be replaced.
                del self.hosts[host_id]
                self.host_pids.pop(host_id, None)
                continue
            if self._alive(handle, limit_s):
                continue
            _ray.kill(handle)  # if it was only stuck, it must not serve on beside its successor
            del self.hosts[host_id]
            self.host_pids.pop(host_id, None)
            new_id = f"{host_id.rsplit('-r', 1)[0]}-r{self._next_restart()}"
            self.add_host(new_id, **self.spawn["host"])
            logger.error("session host %s died; started %s in its place", host_id, new_id)
            metrics.actor_restarted("session_host")
            started.append(new_id)
        for n, handle in enumerate(list(self.executors)):
            if self._alive(handle, limit_s):
                continue
            name = f"executor-r{self._next_restart()}"
            replacement = _ray.start_actor(ToolExecutorActor, name, **self.spawn["executor"])
            self.executor_pids[n] = _ray.call_sync(replacement, "start", timeout=60.0)
            self.executors[n] = replacement
            _ray.kill(handle)
            logger.error("tool executor %d died; started %s in its place", n, name)
            metrics.actor_restarted("tool_executor")
            started.append(name)
        return started

    def _next_restart(self) -> int:
        self.restarts += 1
        return self.restarts

    def _alive(self, handle: Any, limit_s: float) -> bool:
        key = _ray.actor_key(handle)
        try:
            _ray.call_sync(handle, "ping", timeout=limit_s)
        except ActorGone:
            self.misses[key] = self.misses.get(key, 0) + 1
            if self.misses[key] < 2:
                return True  # once is not yet dead
            del self.misses[key]
            return False
        self.misses.pop(key, None)
        return True

    def drain_ingresses(self) -> int:
        """No new calls anywhere (readiness fails, webhooks answer busy); returns how many
        calls are still in progress on the ingresses."""
        refs = [_ray.submit(i, "drain") for i in self.ingresses]
        return sum(_ray.wait_all(refs, timeout=10.0))

    def say_goodbye_all(self, reason: str) -> int:
        """Every call on every host ends with a spoken goodbye; returns how many were told."""
        refs = [_ray.submit(h, "say_goodbye_all", reason) for h in self.hosts.values()]
        told = 0
        for ref in refs:
            try:
                told += int(_ray.wait_all([ref], timeout=10.0)[0])
            except Exception:
                logger.warning("a session host did not take the goodbye", exc_info=True)
        return told

    def stop(self) -> None:
        """Stop executors and hosts (ending their calls), then the router; kill what remains."""
        refs = [_ray.submit(i, "stop") for i in self.ingresses]
        try:
            _ray.wait_all(refs, timeout=10.0)
        except Exception:
            logger.warning("an ingress did not stop cleanly", exc_info=True)
        refs = [_ray.submit(e, "stop") for e in self.executors]
        refs += [_ray.submit(h, "shutdown") for h in self.hosts.values()]
        try:
            _ray.wait_all(refs, timeout=15.0)
        except Exception:
            logger.warning("some actors did not stop cleanly", exc_info=True)
        try:
            _ray.call_sync(self.router, "stop", timeout=5.0)
        except Exception:
            logger.warning("router did not stop cleanly", exc_info=True)
        for handle in [*self.ingresses, *self.executors, *self.hosts.values(), self.router]:
            _ray.kill(handle)  # the router is detached: it would outlive the driver otherwise


def start_cluster(
    settings: RuntimeSettings,
    *,
    redis_url: str,
    model: ModelSettings,
    model_url: str,
    host_prefix: str = "host",
) -> Cluster:
    router = _ray.start_actor(
        RouterActor,
        redis_url,
        cluster_capacity=settings.cluster_capacity,
        health_interval_s=settings.health_interval_s,
        events_maxlen=settings.events_maxlen,
        name=_ray.ROUTER_NAME,
        detached=True,
    )
    _ray.call_sync(router, "start", timeout=60.0)
    executor_options: dict[str, Any] = {
        "redis_url": redis_url,
        "agent_spec": settings.agent,
        "concurrency": settings.executor_concurrency,
    }
    host_options: dict[str, Any] = {
        "settings": settings,
        "redis_url": redis_url,
        "model": model,
        "model_url": model_url,
    }
    cluster = Cluster(
        router,
        {},
        {},
        [],
        [],
        redis_url=redis_url,
        spawn={"host": host_options, "executor": executor_options},
    )
    for n in range(settings.hosts):
        cluster.add_host(f"{host_prefix}-{n}", **host_options)
    for n in range(settings.executors):
        executor = _ray.start_actor(ToolExecutorActor, f"executor-{n}", **executor_options)
        cluster.executors.append(executor)
    cluster.executor_pids = _ray.wait_all(
        [_ray.submit(e, "start") for e in cluster.executors], 60.0
    )
    return cluster
