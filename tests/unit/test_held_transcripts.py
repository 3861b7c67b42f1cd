"""An agent's line is written once, when the caller heard it out or cut it short."""

from __future__ import annotations

from services.runtime.held_transcripts import MAX_ITEMS, OVERDUE_GRACE_S, HeldTranscripts, Line

PCM24K = 48.0  # bytes per ms


def test_a_line_waits_until_its_audio_is_heard_out() -> None:
    held = HeldTranscripts(PCM24K)
    held.audio("i1", 48 * 1000, 0.0)  # 1 s generated
    assert held.audio_done("i1") == []
    assert held.text("i1", "Hello there.") == []  # generated, not yet heard
    assert held.held == 1
    assert held.played("i1", 500) == []
    assert held.played("i1", 490) == [Line("i1", "Hello there.", False, None, 1000)]
    assert held.held == 0
    assert held.played("i1", 20) == []  # once


def test_a_cut_line_says_how_much_was_heard_even_if_the_cut_came_first() -> None:
    held = HeldTranscripts(PCM24K)
    held.audio("i1", 48 * 2000, 0.0)
    held.played("i1", 300)
    assert held.cut("i1", 320) == []  # the model's truncation confirmed before the text
    assert held.text("i1", "A long answer") == [Line("i1", "A long answer", True, 320, 2000)]


def test_an_item_with_no_audio_here_is_written_with_its_text() -> None:
    # The model plays it itself (a browser call straight to the model): nothing to wait for.
    held = HeldTranscripts(PCM24K)
    assert held.text("i1", "Hi") == [Line("i1", "Hi", False, None, 0)]


def test_not_heard_out_until_the_model_finished_the_items_audio() -> None:
    held = HeldTranscripts(8.0)  # G.711
    held.audio("i1", 8 * 200, 0.0)
    held.text("i1", "Hm")
    assert held.played("i1", 200) == []  # more audio may come
    assert held.audio_done("i1") == [Line("i1", "Hm", False, None, 200)]


def test_the_end_of_the_call_writes_what_is_held_and_a_cut_of_a_user_item_is_ignored() -> None:
    held = HeldTranscripts(PCM24K)
    held.audio("i1", 4800, 0.0)
    held.text("i1", "Goodbye")
    assert held.cut("user-item", 100) == []
    assert held.flush() == [Line("i1", "Goodbye", False, None, 100)]
    assert held.flush() == []


def test_audio_whose_transcript_never_comes_is_forgotten_past_the_bound() -> None:
    held = HeldTranscripts(PCM24K)
    for n in range(MAX_ITEMS + 5):
        held.audio(f"i{n}", 48, 0.0)
    assert held.cut("i0", 1) == []  # forgotten: no line will ever come for it
    assert held.text(f"i{MAX_ITEMS + 4}", "kept") == []
    assert len(held.flush()) == 1


def test_a_line_no_one_reports_played_is_released_once_its_audio_had_time_to_play() -> None:
    # An ingress that reports no playback (or a report lost with a moving call).
    held = HeldTranscripts(PCM24K)
    held.audio("i1", 48 * 1500, 10.0)  # 1.5 s, starting at 10 s
    held.audio_done("i1")
    held.text("i1", "Hello")
    assert held.next_due() == 10.0 + 1.5 + OVERDUE_GRACE_S
    assert held.overdue(13.0) == []
    assert held.overdue(13.5) == [Line("i1", "Hello", False, None, 1500)]
    assert held.next_due() is None
