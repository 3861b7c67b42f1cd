"""Results of a load test: one :class:`CallResult` per call, aggregated in a :class:`LoadReport`.

Definitions of the measured quantities are in :mod:`services.loadgen.measurements`. Percentiles
are numpy's default (linear interpolation between closest ranks). All times are milliseconds.
"""

from __future__ import annotations

import dataclasses
import json
import math
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal

import numpy as np
from numpy.typing import NDArray

from services.loadgen.playback import BYTES_PER_MS
from services.loadgen.twilio_caller import TwilioCaller

__all__ = ["CallOutcome", "CallResult", "Histogram", "LoadReport", "summarize"]

CallOutcome = Literal["completed", "rejected", "failed"]

#: callray's gateway refuses a call over capacity on the media stream itself: it plays a busy
#: tone, then closes the WebSocket with this reason (services/gateway/app.py, ``_busy``). Twilio
#: would hang up; for a load test that call was rejected, like a busy TwiML answer.
BUSY_CLOSE_REASON: Final = "busy"


@dataclasses.dataclass(frozen=True)
class CallResult:
    """One call: how it ended, its setup times, and its media-leg numbers."""

    index: int
    outcome: CallOutcome
    error: str | None = None
    ended_by: str | None = None  # "caller" (our stop) or "ingress" (it closed the socket)
    close_reason: str | None = None  # the ingress's WebSocket close reason, if it closed
    twiml_ms: float | None = None  # POST sent → TwiML received
    ws_open_ms: float | None = None  # POST sent → WebSocket open
    first_audio_ms: float | None = None  # POST sent → first model audio received
    frames_sent: int = 0
    speech_frames_sent: int = 0
    media_received: int = 0
    audio_ms_received: float = 0.0
    marks_received: int = 0
    marks_echoed: int = 0
    clears_received: int = 0
    echoed: int = 0
    lost: int = 0
    longest_gap_ms: float = 0.0  # the longest silence a loss caused (EchoLedger.longest_gap_ms)
    flushed: int = 0
    reordered: int = 0
    duplicates: int = 0
    unknown_tags: int = 0
    played_ms: float = 0.0
    cleared_ms: float = 0.0
    max_buffered_ms: float = 0.0
    barge_in_planned: bool = False
    barge_in_started: bool = False
    clear_latency_ms: float | None = None
    stale_ms: float = 0.0
    max_tick_lag_ms: float = 0.0
    # Kept as a compact array: a long run holds millions of them.
    echo_latencies_ms: array[float] = dataclasses.field(
        default_factory=lambda: array("d"), repr=False, compare=False
    )

    @classmethod
    def from_caller(
        cls,
        index: int,
        caller: TwilioCaller,
        *,
        post_sent_at: float,
        answered_at: float,
        ws_open_at: float,
        error: str | None = None,
        close_reason: str | None = None,
    ) -> CallResult:
        """``close_reason`` is the ingress's WebSocket close reason if it closed the stream."""
        stats, playback = caller.stats, caller.playback
        echo, barge = stats.echo, stats.barge_in
        first_audio = stats.first_audio_at
        return cls(
            index=index,
            outcome=_outcome(caller, error, close_reason),
            error=error,
            ended_by=caller.ended_by,
            close_reason=close_reason,
            twiml_ms=(answered_at - post_sent_at) * 1000,
            ws_open_ms=(ws_open_at - post_sent_at) * 1000,
            first_audio_ms=None if first_audio is None else (first_audio - post_sent_at) * 1000,
            frames_sent=stats.frames_sent,
            speech_frames_sent=stats.speech_frames_sent,
            media_received=stats.media_received,
            audio_ms_received=stats.audio_bytes_received / BYTES_PER_MS,
            marks_received=stats.marks_received,
            marks_echoed=stats.marks_echoed,
            clears_received=stats.clears_received,
            echoed=0 if echo is None else echo.echoed,
            lost=0 if echo is None else echo.lost(),
            longest_gap_ms=0.0 if echo is None else echo.longest_gap_ms(),
            flushed=0 if echo is None else echo.flushed(),
            reordered=0 if echo is None else echo.reordered,
            duplicates=0 if echo is None else echo.duplicates,
            unknown_tags=0 if echo is None else echo.unknown,
            played_ms=playback.played_bytes / BYTES_PER_MS,
            cleared_ms=playback.cleared_bytes / BYTES_PER_MS,
            max_buffered_ms=playback.max_buffered_bytes / BYTES_PER_MS,
            barge_in_planned=barge is not None,
            barge_in_started=barge is not None and barge.started_at is not None,
            clear_latency_ms=None if barge is None else barge.clear_latency_ms,
            stale_ms=0.0 if barge is None else barge.stale_bytes / BYTES_PER_MS,
            max_tick_lag_ms=stats.max_tick_lag_ms,
            echo_latencies_ms=array("d") if echo is None else echo.latencies_ms,
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        del data["echo_latencies_ms"]  # in the aggregate and the histogram instead
        return {key: _rounded(value) for key, value in data.items()}


@dataclasses.dataclass(frozen=True)
class Histogram:
    """Equal-width bins from 0; values above the last edge are counted in the last bin."""

    edges_ms: tuple[float, ...]
    counts: tuple[int, ...]
    overflow: int  # how many of the last bin's values lie beyond it

    @classmethod
    def of(cls, values: Sequence[float] | NDArray[np.float64], bins: int = 40) -> Histogram:
        data = np.asarray(values, dtype=np.float64)
        top = _nice_ceiling(float(np.percentile(data, 99.9)) if data.size else 1.0)
        edges = np.linspace(0.0, top, bins + 1)
        counts, _ = np.histogram(np.clip(data, 0.0, top), bins=edges)
        return cls(
            edges_ms=tuple(float(e) for e in edges),
            counts=tuple(int(c) for c in counts),
            overflow=int(np.count_nonzero(data > top)),
        )


@dataclasses.dataclass(frozen=True)
class LoadReport:
    options: Mapping[str, Any]
    elapsed_s: float
    calls: tuple[CallResult, ...]

    def count(self, outcome: CallOutcome) -> int:
        return sum(1 for call in self.calls if call.outcome == outcome)

    def echo_latencies_ms(self) -> NDArray[np.float64]:
        parts = [np.frombuffer(c.echo_latencies_ms, dtype=np.float64) for c in self.calls]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)

    def histogram(self, bins: int = 40) -> Histogram:
        return Histogram.of(self.echo_latencies_ms(), bins)

    def to_dict(self) -> dict[str, Any]:
        calls = self.calls
        media = [c for c in calls if c.outcome != "rejected" and c.ws_open_ms is not None]
        barges = [c for c in calls if c.barge_in_planned and c.outcome == "completed"]
        sent, lost = _total(calls, "frames_sent"), _total(calls, "lost")
        histogram = self.histogram()
        return {
            "options": dict(self.options),
            "elapsed_s": round(self.elapsed_s, 3),
            "calls": {
                "requested": len(calls),
                "completed": self.count("completed"),
                "rejected": self.count("rejected"),
                "failed": self.count("failed"),
                "hung_up_by_ingress": sum(
                    1 for c in calls if c.outcome == "completed" and c.ended_by == "ingress"
                ),
                "errors": dict(Counter(c.error for c in calls if c.error).most_common(20)),
            },
            "setup_ms": {
                "twiml": summarize(c.twiml_ms for c in calls),
                "ws_open": summarize(c.ws_open_ms for c in media),
                "first_audio": summarize(c.first_audio_ms for c in media),
            },
            "frames": {
                "sent": sent,
                "speech": _total(calls, "speech_frames_sent"),
                "media_received": _total(calls, "media_received"),
                "echoed": _total(calls, "echoed"),
                "lost": lost,
                "flushed": _total(calls, "flushed"),
                "reordered": _total(calls, "reordered"),
                "duplicates": _total(calls, "duplicates"),
                "unknown_tags": _total(calls, "unknown_tags"),
                "loss_rate": round(lost / sent, 6) if sent else None,
            },
            "echo_latency_ms": summarize(self.echo_latencies_ms()),
            "echo_latency_histogram": dataclasses.asdict(histogram),
            "marks": {
                "received": _total(calls, "marks_received"),
                "echoed": _total(calls, "marks_echoed"),
            },
            "clears_received": _total(calls, "clears_received"),
            "playback_ms": {
                "received": round(_total(calls, "audio_ms_received"), 3),
                "played": round(_total(calls, "played_ms"), 3),
                "cleared": round(_total(calls, "cleared_ms"), 3),
                "max_buffered": summarize(c.max_buffered_ms for c in media),
            },
            "barge_in": {
                "planned": len(barges),  # of the completed calls
                "started": sum(1 for c in barges if c.barge_in_started),
                "cleared": sum(1 for c in barges if c.clear_latency_ms is not None),
                "missed": sum(
                    1 for c in barges if c.barge_in_started and c.clear_latency_ms is None
                ),
                "clear_latency_ms": summarize(c.clear_latency_ms for c in barges),
                "stale_ms": summarize(c.stale_ms for c in barges if c.barge_in_started),
            },
            "loadgen": {
                "max_tick_lag_ms": round(max((c.max_tick_lag_ms for c in calls), default=0.0), 3)
            },
            "per_call": [call.to_dict() for call in calls],
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def _outcome(caller: TwilioCaller, error: str | None, close_reason: str | None) -> CallOutcome:
    if error:
        return "failed"
    if caller.ended_by == "ingress" and close_reason == BUSY_CLOSE_REASON:
        return "rejected"
    return "completed"


def summarize(
    values: Iterable[float | None] | NDArray[np.float64],
) -> dict[str, float | int] | None:
    """count, mean, min, p50, p90, p99, max of the values that are not ``None``; ``None`` if
    there are none."""
    data = np.fromiter((v for v in values if v is not None), dtype=np.float64)
    if data.size == 0:
        return None
    p50, p90, p99 = np.percentile(data, [50, 90, 99])
    return {
        "count": int(data.size),
        "mean": round(float(data.mean()), 3),
        "min": round(float(data.min()), 3),
        "p50": round(float(p50), 3),
        "p90": round(float(p90), 3),
        "p99": round(float(p99), 3),
        "max": round(float(data.max()), 3),
    }


def _total(calls: Sequence[CallResult], field: str) -> Any:
    return sum(getattr(call, field) for call in calls)


def _rounded(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value


def _nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten that is at least ``value`` (axis ends)."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * magnitude >= value:
            return float(step * magnitude)
    return float(10 * magnitude)  # unreachable: step 10 always suffices
