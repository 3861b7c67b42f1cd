"""``callray up``: the whole system on one machine, on embedded defaults.

Starts, in order: a metrics directory for this node, Redis (an embedded ``redis-server`` unless
``REDIS_URL`` is set), the model (our local server in a child process unless ``OPENAI_API_KEY`` or
``CALLRAY_MODEL_URL`` is set), Ray (local unless ``RAY_ADDRESS`` is set), the router, session hosts
and tool executors, and the node's metrics endpoint. Ctrl-C or SIGTERM drains first: no new
calls (the ingress's ``/readyz`` fails, Twilio's webhook answers busy), the calls in progress
have ``CALLRAY_DRAIN_TIMEOUT_S`` to finish, then each still up ends with a spoken goodbye (never
silence); then everything it started stops, in reverse order, leaving no process behind. A
second signal skips what is left of the drain.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from services.config import Settings
from services.errors import ConfigError
from services.redis_client import without_password

logger = logging.getLogger(__name__)


class _Signals:
    """SIGINT and SIGTERM, counted: the first drains, a second stops at once."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self._event = threading.Event()
        signal.signal(signal.SIGINT, self._handler)
        signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum: int, _frame: Any) -> None:
        self.received.append(signal.Signals(signum).name)
        self._event.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Until a signal not yet waited for arrives (True), or ``timeout`` (False)."""
        got = self._event.wait(timeout)
        self._event.clear()
        return got


class _Supervisor:
    """Replaces dead session hosts and tool executors (``Cluster.reconcile``) every few seconds,
    from a thread of the driver, until stopped."""

    def __init__(self, cluster: Any, interval_s: float = 2.0) -> None:
        self._cluster = cluster
        self._interval_s = interval_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="callray-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30.0)

    def _run(self) -> None:
        while not self._stopping.wait(self._interval_s):
            try:
                for name in self._cluster.reconcile():
                    print(f"callray: an actor died; started {name} in its place", flush=True)
            except Exception:
                logger.exception("supervision round failed; trying again")


def _second_signal(signals: _Signals, wait_s: float) -> bool:
    if signals.wait(wait_s):
        print("callray: second signal: stopping now", flush=True)
        return True
    return False


def _drain(cluster: Any, signals: _Signals, timeout_s: float) -> None:
    """Let the calls in progress finish for up to ``timeout_s``, then end each with a spoken
    goodbye; a second signal cuts either wait short."""
    # Imported here: prometheus_client must not load before run_up sets the metrics directory.
    from services.runtime.call_session import GOODBYE_GRACE_S

    calls = cluster.drain_ingresses()
    print(
        f"callray: draining: {calls} calls in progress, no new calls; up to {timeout_s:g} s "
        "(send the signal again to stop at once)",
        flush=True,
    )
    deadline = time.monotonic() + timeout_s
    while cluster.status()["calls"] > 0:
        left = deadline - time.monotonic()
        if left <= 0:
            told = cluster.say_goodbye_all("shutdown")
            print(f"callray: drain timeout: {told} calls end with a goodbye", flush=True)
            end = time.monotonic() + GOODBYE_GRACE_S + 2.0
            while cluster.status()["calls"] > 0 and time.monotonic() < end:
                if _second_signal(signals, 0.2):
                    return
            return
        if _second_signal(signals, min(0.2, left)):
            return


def _open_page(url: str) -> None:
    """The call page in the user's browser, when there is one (best effort: a server has none)."""
    import webbrowser

    try:
        if webbrowser.open(url):
            logger.info("opened the call page in a browser: %s", url)
    except Exception as exc:  # no display, no browser: the URL is printed above
        logger.info("could not open a browser (%s); the call page is at %s", exc, url)


def run_up(settings: Settings, *, open_browser: bool = False) -> int:
    rt = settings.runtime
    data_dir = Path(rt.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # Before prometheus_client is imported here or in any actor: multiprocess mode is chosen then.
    # It must exist and be empty (stale files of dead processes would be counted again).
    metrics_dir = data_dir / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    from actors import _ray
    from actors.cluster import start_cluster
    from services.embedded.model_process import ModelProcess
    from services.embedded.redis_server import EmbeddedRedis
    from services.observability import metrics

    lines: list[str] = []
    with ExitStack() as stack:
        if rt.redis_url:
            redis_url = rt.redis_url
            lines.append(f"redis     {without_password(redis_url)} (REDIS_URL)")
        else:
            redis = EmbeddedRedis(data_dir / "redis")
            redis_url = redis.start()
            stack.callback(redis.stop)
            lines.append(
                f"redis     {redis.safe_url} (embedded redis-server {redis.version}, "
                f"pid {redis.pid}, password in {data_dir / 'redis.url'})"
            )
        # For `callray events tail` and other local tools: the URL holds the password, so the
        # file is ours alone.
        url_file = data_dir / "redis.url"
        url_file.unlink(missing_ok=True)
        with os.fdopen(os.open(url_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(redis_url + "\n")

        model = settings.model
        if model.url is None:
            local = ModelProcess(
                mode=settings.local_model.mode,
                log=data_dir / "logs" / "model.log",
                drop_after_events=settings.local_model.drop_after_events,
            )
            model_url = local.start()
            stack.callback(local.stop)
            lines.append(
                f"model     {model_url} (local model server, no OPENAI_API_KEY; pid {local.pid})"
            )
        else:
            model_url = model.url
            lines.append(f"model     {model_url} ({model.model})")

        if rt.ray_address is None:
            # Local cluster on loopback only: Ray's token auth guards nothing here and writes a
            # token file outside the data directory (reference/feasibility.md §6).
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        _ray.init(
            address=rt.ray_address,
            env_vars={
                "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
                # Every actor logs in the driver's format (services/observability/logs.py).
                "CALLRAY_LOG_FORMAT": os.environ.get("CALLRAY_LOG_FORMAT", "text"),
                "CALLRAY_LOG_LEVEL": logging.getLevelName(logging.getLogger().level),
                "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", ""),
            },
        )
        stack.callback(_ray.shutdown)
        missing = _ray.missing_resources()
        if missing:  # a joined cluster: its actors would wait for a node that never comes
            raise ConfigError(
                f"the Ray cluster at {rt.ray_address} offers no {', '.join(missing)}: start its "
                "nodes with them (ray start --resources='{\"callray_router\": 1, ...}', or "
                "KubeRay rayStartParams.resources); see services/runtime/resources.py"
            )
        lines.append(f"ray       {rt.ray_address or 'local (ray.init)'}")

        cluster = start_cluster(rt, redis_url=redis_url, model=model, model_url=model_url)
        stack.callback(cluster.stop)
        lines.append(
            f"calls     router + {rt.hosts} session hosts x {rt.host_capacity} calls "
            f"(cluster cap {rt.cluster_capacity}), {rt.executors} tool executors, "
            f"agent {rt.agent or 'demo'}"
        )

        port = cluster.add_ingress("ingress-0", settings.gateway, rt.media)
        base = settings.gateway.public_url or f"http://{settings.gateway.host}:{port}"
        lines.append(f"call page {base}/   (talk to the agent from a browser)")
        lines.append(f"twilio    POST {base}/twilio/voice  (media: /twilio/media)")
        sip = settings.gateway.sip
        if sip.port is not None:
            lines.append(
                f"sip       udp {sip.host}:{sip.port}  (RTP {sip.rtp_ports[0]}-{sip.rtp_ports[1]};"
                " CALLRAY_SIP_PORT=off to disable)"
            )

        server = metrics.serve_metrics(rt.metrics_port)
        stack.callback(server.close)
        lines.append(f"metrics   http://127.0.0.1:{server.port}/metrics")
        lines.append("events    callray events tail   (stream callray:call-events)")

        supervisor = _Supervisor(cluster)
        stack.callback(supervisor.stop)  # before cluster.stop (registered earlier, runs later)
        supervisor.start()
        signals = _Signals()  # after ray.init, which installs handlers of its own
        print("callray is up\n  " + "\n  ".join(lines) + "\n  Ctrl-C stops everything.", flush=True)
        if open_browser:
            _open_page(f"{base}/")
        signals.wait()
        print(f"callray: {signals.received[0]} received, stopping", flush=True)
        supervisor.stop()  # a drain is not a death: replace nothing from here on
        _drain(cluster, signals, rt.drain_timeout_s)
    print("callray: stopped", flush=True)
    return 0
