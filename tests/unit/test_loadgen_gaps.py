"""EchoLedger.longest_gap_ms: the silence a loss caused, which a fault run reports per call."""

from __future__ import annotations

import pytest

from services.loadgen.measurements import EchoLedger


def _ledger(missing: set[int], frames: int = 12, echo_delay: float = 0.005) -> EchoLedger:
    ledger = EchoLedger()
    for n in range(frames):
        ledger.on_sent(n, n * 0.02)
    for n in range(frames):
        if n not in missing:
            ledger.on_echo(n, n * 0.02 + echo_delay)
    return ledger


def test_the_longest_unexplained_gap_is_reported() -> None:
    ledger = _ledger({3, 4, 5, 8})
    # Frames 3-5 lost: silence from sending frame 2 (0.04 s) to frame 6's echo (0.125 s).
    assert ledger.longest_gap_ms() == pytest.approx(85.0)
    assert ledger.lost() == 4


def test_a_gap_a_clear_explains_or_one_still_open_is_not_a_fault_gap() -> None:
    cleared = _ledger({3, 4, 5})
    cleared.on_clear(0.07)  # a barge-in's clear inside the gap: flushed, not lost
    assert cleared.longest_gap_ms() == 0.0
    assert _ledger({10, 11}).longest_gap_ms() == 0.0  # the call ended inside it
    assert _ledger(set()).longest_gap_ms() == 0.0
