"""The per-event metric paths: counts held in memory and added at most once a second, the media
hop sampled at most every 10 ms; the first value of each series goes out at once."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from services.observability import metrics
from tests.virtual_time import FakeClock


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    clock = FakeClock()
    monkeypatch.setattr(metrics, "_clock", clock)
    metrics.flush()  # nothing held from earlier tests
    return clock


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_model_events_are_added_once_a_second_and_on_flush(clock: FakeClock) -> None:
    kind = "test.tally"
    metrics.model_event(kind)
    assert _value("callray_model_events_total", kind=kind) == 1  # the series exists at once
    for _ in range(49):
        metrics.model_event(kind)
    assert _value("callray_model_events_total", kind=kind) == 1
    clock.advance(metrics.FLUSH_S)
    metrics.model_event(kind)
    assert _value("callray_model_events_total", kind=kind) == 51
    metrics.model_event(kind)
    metrics.flush()
    assert _value("callray_model_events_total", kind=kind) == 52


def test_a_call_ending_flushes_what_is_held(clock: FakeClock) -> None:
    before = _value("callray_media_frames_total", direction="out")
    metrics.media_frames("out", 1)
    clock.advance(metrics.FLUSH_S)
    metrics.media_frames("out", 1)
    metrics.media_frames("out", 3)
    assert _value("callray_media_frames_total", direction="out") == before + 2
    metrics.call_ended("test", "host-x", "completed")
    assert _value("callray_media_frames_total", direction="out") == before + 5


def test_the_media_hop_is_sampled(clock: FakeClock) -> None:
    def count() -> float:
        return _value("callray_media_hop_seconds_count", direction="test")

    metrics.media_hop("test", 0.001)
    assert count() == 1
    for _ in range(10):
        clock.advance(metrics.HOP_SAMPLE_S / 10 - 1e-6)
        metrics.media_hop("test", 0.001)
    assert count() == 1
    clock.advance(metrics.HOP_SAMPLE_S)
    metrics.media_hop("test", 0.002)
    assert count() == 2
