"""Every Prometheus object of callray, and the verbs call sites use to update them.

Labels are low-cardinality only: transport, outcome, tool name, event kind, direction, host id
(hosts are few). Never a call id or a phone number.

**One scrape endpoint per node, across processes.** Ray actors are separate processes, so each
would otherwise keep its own registry. We use prometheus-client's *multiprocess mode*: every
process on a node writes its samples to memory-mapped files in one directory
(``PROMETHEUS_MULTIPROC_DIR``, set by ``callray up`` for the driver and, through the runtime
environment, for every actor), and the node's one endpoint (:func:`serve_metrics`) aggregates the
directory on each scrape. Chosen over a node-exporter actor (an extra hop and a custom protocol
for every sample) and over Ray's metrics export (samples appear ~10 s late, under a ``ray_``
prefix, among ~900 Ray series; reference/feasibility.md §6). Gauges declare how processes
combine (``livesum``: only live processes count, so a dead host's calls vanish from
``calls_active``).

Without ``PROMETHEUS_MULTIPROC_DIR`` (tests, a single process) the default registry is used.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterable, Iterator
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.metrics_core import Metric

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

# Buckets in seconds: media hops and tool round trips are milliseconds; setup is tens of ms.
_FAST = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
_SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

CALLS_ACTIVE = Gauge(
    "callray_calls_active", "Calls in progress", ["transport"], multiprocess_mode="livesum"
)
CALLS_TOTAL = Counter(
    "callray_calls_total", "Calls ended, by transport and outcome", ["transport", "outcome"]
)
CALL_SETUP_SECONDS = Histogram(
    "callray_call_setup_seconds",
    "From open request to a connected model session",
    ["transport"],
    buckets=_SLOW,
)
ADMISSION_REJECTIONS = Counter(
    "callray_admission_rejections_total", "Calls refused at admission", ["reason"]
)
HOST_CALLS = Gauge(
    "callray_host_calls", "Calls placed on each session host", ["host"], multiprocess_mode="livesum"
)
MODEL_CONNECT_SECONDS = Histogram(
    "callray_model_connect_seconds", "Opening the model WebSocket", buckets=_SLOW
)
MODEL_DISCONNECTS = Counter(
    "callray_model_disconnects_total", "Model connections that ended, by reason", ["reason"]
)
MODEL_RECONNECTS = Counter(
    "callray_model_reconnects_total",
    "Calls whose model connection dropped, by how it ended: reconnected (the conversation"
    " replayed) or gave_up (the call ended model_unavailable)",
    ["outcome"],
)
MODEL_GAP_SECONDS = Histogram(
    "callray_model_gap_seconds",
    "From a call's model connection dropping to its new connection carrying the conversation",
    buckets=_SLOW,
)
MODEL_EVENTS = Counter(
    "callray_model_events_total", "Events received from the model, by type", ["kind"]
)
TOOL_CALLS = Counter(
    "callray_tool_calls_total", "Tool calls finished, by tool and outcome", ["tool", "outcome"]
)
TOOL_CALL_SECONDS = Histogram(
    "callray_tool_call_seconds",
    "Tool call round trip as the session sees it",
    ["tool"],
    buckets=(*_FAST, 2.5, 5.0, 10.0, 30.0),
)
TOOL_STREAM_LAG = Gauge(
    "callray_tool_stream_lag",
    "Tool calls waiting: pending (delivered, not acknowledged) plus not yet delivered",
    multiprocess_mode="max",
)
TOOL_EXECUTIONS = Counter(
    "callray_tool_executions_total",
    "Tool call entries an executor finished with, by tool and outcome (reruns after a reclaim,"
    " duplicates, expired and malformed entries included)",
    ["tool", "outcome"],
)
TOOL_RECLAIMS = Counter(
    "callray_tool_reclaims_total", "Tool calls reclaimed from a dead or stuck executor"
)
MEDIA_FRAMES = Counter(
    "callray_media_frames_total",
    "Media frames, by direction (in: caller, out: model)",
    ["direction"],
)
MEDIA_DROPPED = Counter(
    "callray_media_dropped_total",
    "Audio items dropped by media-channel backpressure (oldest first; never control), by"
    " direction (in: caller audio at the ingress, out: model audio at the host)",
    ["direction"],
)
MEDIA_HOP_SECONDS = Histogram(
    "callray_media_hop_seconds",
    "Delay of a media batch between ingress and session host",
    ["direction"],
    buckets=_FAST,
)
SIP_MESSAGES = Counter(
    "callray_sip_messages_total",
    "SIP messages by direction (in, out), method (of the request, or the one a response"
    " answers) and status code (0 for requests)",
    ["direction", "method", "code"],
)
SIP_INVITE_SECONDS = Histogram(
    "callray_sip_invite_seconds",
    "From an INVITE's arrival to our final response to it (200 OK: the model session is up)",
    ["code"],
    buckets=_SLOW,
)
SIP_REGISTERED = Gauge(
    "callray_sip_registered",
    "1 while this ingress is registered with its PBX (CALLRAY_SIP_REGISTRAR), else 0",
    multiprocess_mode="max",
)
RTP_DROPPED = Counter(
    "callray_rtp_dropped_total",
    "RTP packets dropped by the SIP ingress, by reason (source, payload_type, short, version,"
    " csrc, extension, padding, oversize, duplicate, late, dtmf_flood, ...)",
    ["reason"],
)
JITTER_DEPTH = Histogram(
    "callray_sip_jitter_depth_packets",
    "Packets each SIP call's jitter buffer holds, sampled once a second per call",
    buckets=(0, 1, 2, 3, 4, 8),
)
OPENAI_SIP_WEBHOOKS = Counter(
    "callray_openai_sip_webhooks_total",
    "Signed webhooks of OpenAI's SIP connector, by outcome (taken, duplicate, ignored: another"
    " event type, unavailable: the dedup ledger did not answer); refused ones are in"
    " callray_front_door_refused_total with reasons openai_sip_*",
    ["outcome"],
)
OPENAI_SIP_CONTROL = Counter(
    "callray_openai_sip_control_total",
    "REST call control of SIP calls the model holds, by action (accept, reject, refer, hangup)"
    " and outcome (ok, gone: the caller had hung up, failed)",
    ["action", "outcome"],
)
WEBRTC_OFFER_SECONDS = Histogram(
    "callray_webrtc_offer_seconds",
    "A browser's offer at the ingress, by phase: admit (token, router, the host's model"
    " session), negotiate (aiortc's answer) and total (request read to answer sent)",
    ["phase"],
    buckets=_SLOW,
)
INGRESS_ADDED_SECONDS = Histogram(
    "callray_ingress_added_seconds",
    "The ingress's own work on a media frame, by transport and direction (in: decoded frame to"
    " the host link; out: model audio received to queued for the caller's next tick)",
    ["transport", "direction"],
    buckets=_FAST,
)


FRONT_DOOR_REFUSED = Counter(
    "callray_front_door_refused_total",
    "Unauthenticated streams and requests refused or closed before they proved anything, by"
    " reason (pending_limit, start_timeout, request_timeout)",
    ["reason"],
)
ACTOR_RESTARTS = Counter(
    "callray_actor_restarts_total",
    "Actors found dead and replaced by the supervisor, by kind (session_host, tool_executor)",
    ["kind"],
)
CALLS_MOVED = Counter(
    "callray_calls_moved_total",
    "Live calls an ingress moved off a session host it lost, by outcome (moved, no_capacity)",
    ["outcome"],
)
CALLS_ANNOUNCED = Counter(
    "callray_calls_announced_total",
    "Calls ended by their ingress with the unavailable announcement because no session could "
    "take them (no_capacity, no_session)",
    ["transport", "reason"],
)
CALL_EVENTS_DROPPED = Counter(
    "callray_call_events_dropped_total",
    "Call events dropped because the event log (Redis) was away longer than the queue holds",
)
LOG_SUPPRESSED = Counter(
    "callray_log_suppressed_total",
    "Warnings about outside input not logged because the same peer and reason logged lately",
    ["reason"],
)


BARGE_IN_CLEAR_SECONDS = Histogram(
    "callray_barge_in_clear_seconds",
    "From the session reacting to the caller's speech to the ingress sending clear",
    ["transport"],
    buckets=_FAST,
)


# --- verbs ---------------------------------------------------------------------------------


def call_started(transport: str, host: str, setup_seconds: float) -> None:
    CALLS_ACTIVE.labels(transport).inc()
    HOST_CALLS.labels(host).inc()
    CALL_SETUP_SECONDS.labels(transport).observe(setup_seconds)


def call_ended(transport: str, host: str, outcome: str) -> None:
    flush()  # the call's last per-event counts land with its end
    CALLS_ACTIVE.labels(transport).dec()
    HOST_CALLS.labels(host).dec()
    CALLS_TOTAL.labels(transport, outcome).inc()


def call_outcome(transport: str, outcome: str) -> None:
    """A call that never started, or ended where its host could not count it (host lost)."""
    CALLS_TOTAL.labels(transport, outcome).inc()


def declare_rejection_reasons(reasons: Iterable[str]) -> None:
    """Create each reason's counter at 0 now. A counter born at its first rejection has no
    earlier sample, so ``increase()`` over it reads 0 and a rejection alert never fires (seen
    in a live scrape: two real rejections, increase 0)."""
    for reason in reasons:
        ADMISSION_REJECTIONS.labels(reason)


def call_rejected(reason: str) -> None:
    ADMISSION_REJECTIONS.labels(reason).inc()


def model_connected(seconds: float) -> None:
    MODEL_CONNECT_SECONDS.observe(seconds)


def model_disconnected(reason: str) -> None:
    MODEL_DISCONNECTS.labels(reason).inc()


def model_reconnected(gap_seconds: float) -> None:
    MODEL_RECONNECTS.labels("reconnected").inc()
    MODEL_GAP_SECONDS.observe(gap_seconds)


def model_reconnect_gave_up() -> None:
    MODEL_RECONNECTS.labels("gave_up").inc()


# ----- the per-event paths ------------------------------------------------------------------
# In multiprocess mode every inc() or observe() takes a lock, checks the pid (a system call) and
# writes a memory-mapped file: done once per model event and per media batch it was 7% of a
# session host's busy CPU (py-spy, bench/README.md). So per-event counts are kept in memory and
# added at most every FLUSH_S, and the media hop is observed at most every HOP_SAMPLE_S per
# direction (still a hundred samples a second for its histogram). The first count or sample
# goes out at once, so every series exists as soon as it has a value.
FLUSH_S: Final = 1.0
HOP_SAMPLE_S: Final = 0.01
_clock = time.monotonic  # replaced by a virtual clock in tests


class _Tally:
    __slots__ = ("_child", "_due", "_pending")

    def __init__(self, child: Counter) -> None:
        self._child = child
        self._pending = 0
        self._due = 0.0

    def add(self, count: int) -> None:
        self._pending += count
        now = _clock()
        if now >= self._due:
            self.flush()
            self._due = now + FLUSH_S

    def flush(self) -> None:
        if self._pending:
            self._child.inc(self._pending)
            self._pending = 0


_TALLIES: list[_Tally] = []


def _tally(child: Counter) -> _Tally:
    tally = _Tally(child)
    _TALLIES.append(tally)
    return tally


# The labelled children are looked up once per label value (the label sets are small and fixed).
@functools.cache
def _model_events(kind: str) -> _Tally:
    return _tally(MODEL_EVENTS.labels(kind))


@functools.cache
def _media_frames(direction: str) -> _Tally:
    return _tally(MEDIA_FRAMES.labels(direction))


@functools.cache
def _media_hop(direction: str) -> _HopSampler:
    return _HopSampler(MEDIA_HOP_SECONDS.labels(direction))


@functools.cache
def _ingress_added(transport: str, direction: str) -> _HopSampler:
    return _HopSampler(INGRESS_ADDED_SECONDS.labels(transport, direction))


class _HopSampler:
    __slots__ = ("_child", "_due")

    def __init__(self, child: Histogram) -> None:
        self._child = child
        self._due = 0.0

    def observe(self, seconds: float) -> None:
        now = _clock()
        if now >= self._due:
            self._child.observe(seconds)
            self._due = now + HOP_SAMPLE_S


@functools.cache
def _log_suppressed(reason: str) -> _Tally:
    return _tally(LOG_SUPPRESSED.labels(reason))


def flush() -> None:
    """Add every count still held in memory (a call ended, a process stops)."""
    for tally in _TALLIES:
        tally.flush()


def model_event(kind: str) -> None:
    _model_events(kind).add(1)


def tool_finished(tool: str, outcome: str, seconds: float) -> None:
    TOOL_CALLS.labels(tool, outcome).inc()
    TOOL_CALL_SECONDS.labels(tool).observe(seconds)


def tool_executed(tool: str, outcome: str) -> None:
    """An executor is done with one entry; ``tool`` must be a configured tool name or "-"."""
    TOOL_EXECUTIONS.labels(tool, outcome).inc()


def tool_stream_lag(waiting: int) -> None:
    TOOL_STREAM_LAG.set(waiting)


def tool_reclaimed(count: int = 1) -> None:
    TOOL_RECLAIMS.inc(count)


def media_frames(direction: str, count: int) -> None:
    _media_frames(direction).add(count)


def actor_restarted(kind: str) -> None:
    ACTOR_RESTARTS.labels(kind).inc()


def call_moved(outcome: str) -> None:
    CALLS_MOVED.labels(outcome).inc()


def call_announced(transport: str, reason: str) -> None:
    CALLS_ANNOUNCED.labels(transport, reason).inc()


def call_events_dropped() -> None:
    CALL_EVENTS_DROPPED.inc()


def front_door_refused(reason: str) -> None:
    FRONT_DOOR_REFUSED.labels(reason).inc()


def log_suppressed(reason: str) -> None:
    """A flood path: counted in memory like the per-event counters."""
    _log_suppressed(reason).add(1)


def media_dropped(direction: str, count: int) -> None:
    MEDIA_DROPPED.labels(direction).inc(count)


def barge_in_clear(transport: str, seconds: float) -> None:
    BARGE_IN_CLEAR_SECONDS.labels(transport).observe(seconds)


def ingress_added(transport: str, direction: str, seconds: float) -> None:
    """Sampled like the media hop: at most one observation per ``HOP_SAMPLE_S`` per pair."""
    _ingress_added(transport, direction).observe(seconds)


def sip_message(direction: str, method: str, code: int = 0) -> None:
    SIP_MESSAGES.labels(direction, method, str(code)).inc()


def sip_invite(code: int, seconds: float) -> None:
    SIP_INVITE_SECONDS.labels(str(code)).observe(seconds)


def sip_registered(registered: bool) -> None:
    SIP_REGISTERED.set(1 if registered else 0)


def rtp_dropped(reason: str, n: int = 1) -> None:
    RTP_DROPPED.labels(reason).inc(n)


def jitter_depth(packets: int) -> None:
    JITTER_DEPTH.observe(packets)


def openai_sip_webhook(outcome: str) -> None:
    OPENAI_SIP_WEBHOOKS.labels(outcome).inc()


def openai_sip_control(action: str, outcome: str) -> None:
    OPENAI_SIP_CONTROL.labels(action, outcome).inc()


def webrtc_offer(phase: str, seconds: float) -> None:
    WEBRTC_OFFER_SECONDS.labels(phase).observe(seconds)


def media_hop(direction: str, seconds: float) -> None:
    """Sampled: at most one observation per ``HOP_SAMPLE_S`` per direction."""
    _media_hop(direction).observe(seconds)


# --- exposition ----------------------------------------------------------------------------


def render() -> tuple[bytes, str]:
    """The exposition text of this node: every process's samples when in multiprocess mode."""
    return generate_latest(_registry()), CONTENT_TYPE_LATEST


def process_exited(pid: int) -> None:
    """Drop a dead process's live gauges (called by whoever supervises it)."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


class _OwnMetrics:
    """Only ``callray_`` families from the multiprocess directory: Ray's own processes use
    prometheus-client too and would otherwise add their series to our endpoint."""

    def __init__(self, directory: str) -> None:
        self._inner = multiprocess.MultiProcessCollector(None, path=directory)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Metric]:
        for family in self._inner.collect():  # type: ignore[no-untyped-call]
            if family.name.startswith("callray_"):
                yield family


def _registry() -> CollectorRegistry:
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return REGISTRY
    registry = CollectorRegistry()
    registry.register(_OwnMetrics(directory))
    return registry


class MetricsServer:
    """This node's ``/metrics`` endpoint, served from a background thread."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        registry = _registry()
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port: int = self._server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(port: int, host: str = "127.0.0.1") -> MetricsServer:
    return MetricsServer(port, host)
