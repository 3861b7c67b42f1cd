"""TwilioPlayback: framing of model audio, mark echoes, and barge-in truncation (AJS rules).

Virtual and exact: Twilio is simulated by echoing the mark names the tracker sent, in order, as
Twilio does when the audio before each has played (telephony.md §1.3).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from services.media.vocabulary import Played
from services.telephony.twilio_playback import (
    FRAME_BYTES,
    Interruption,
    MarkResult,
    Outbound,
    SendMark,
    SendMedia,
    Truncation,
    TwilioPlayback,
)


def audio(n: int, start: int = 0) -> bytes:
    """``n`` bytes whose values follow their position, so any loss or reordering shows."""
    return bytes((start + i) % 251 for i in range(n))


def media(out: Sequence[Outbound]) -> bytes:
    return b"".join(o.payload for o in out if isinstance(o, SendMedia))


def marks(out: Sequence[Outbound]) -> list[str]:
    return [o.name for o in out if isinstance(o, SendMark)]


def echo(tracker: TwilioPlayback, names: Sequence[str]) -> list[MarkResult]:
    return [tracker.on_mark(name) for name in names]


def played(results: Sequence[MarkResult]) -> list[Played]:
    return [r.played for r in results if r.played is not None]


# ----- framing ---------------------------------------------------------------------------------


def test_chunks_carry_up_to_chunk_ms_of_whole_frames_with_one_mark_each() -> None:
    tracker = TwilioPlayback(chunk_ms=60, truncate_slack_ms=0)  # as the ingress runs it
    data = audio(5 * FRAME_BYTES + 70)  # 100 ms and a 70-byte tail

    out = tracker.on_model_audio("item_a", 0, data)

    # 60 ms, then the 40 ms of whole frames left; the tail waits for more audio or its done.
    assert out == [
        SendMedia(data[0:480]),
        SendMark("item_a:60:g1:m1"),
        SendMedia(data[480:800]),
        SendMark("item_a:100:g1:m2"),
    ]
    assert tracker.buffered_bytes() == 70
    # A barge-in truncates exactly at the last mark Twilio acknowledged: chunk resolution.
    echo(tracker, ["item_a:60:g1:m1"])
    assert tracker.interrupt().truncations == (Truncation("item_a", 0, 60),)


def test_a_mark_follows_once_mark_ms_went_out_unmarked_and_at_the_items_end() -> None:
    tracker = TwilioPlayback(mark_ms=60, truncate_slack_ms=0)
    frames = [audio(FRAME_BYTES, start=n) for n in range(5)]
    out = []
    for frame in frames:  # five 20 ms deltas, as an echoing model sends them
        out += tracker.on_model_audio("item_a", 0, frame)
    assert out == [
        SendMedia(frames[0]),
        SendMedia(frames[1]),
        SendMedia(frames[2]),
        SendMark("item_a:60:g1:m1"),
        SendMedia(frames[3]),
        SendMedia(frames[4]),
    ]
    assert marks(tracker.on_audio_done("item_a")) == ["done:item_a:g1:m2"]
    # Heard up to the first mark: the barge-in truncates there, not at what was merely sent.
    echo(tracker, ["item_a:60:g1:m1"])
    assert tracker.interrupt().truncations == (Truncation("item_a", 0, 60),)


def test_the_done_mark_acknowledges_an_items_unmarked_tail() -> None:
    tracker = TwilioPlayback(mark_ms=100)
    tracker.on_model_audio("item_a", 0, audio(2 * FRAME_BYTES))
    (done,) = marks(tracker.on_audio_done("item_a"))
    (result,) = echo(tracker, [done])
    assert result.outcome == "done" and result.played == Played("item_a", 0, 40.0)


@pytest.mark.parametrize("setting", ["chunk_ms", "mark_ms"])
@pytest.mark.parametrize("value", [0, 10, 30, -20])
def test_chunk_and_mark_ms_must_be_positive_multiples_of_a_frame(setting: str, value: int) -> None:
    with pytest.raises(ValueError, match=f"{setting} must be a positive multiple of 20"):
        TwilioPlayback(**{setting: value})


def test_audio_is_cut_into_20ms_frames_each_followed_by_a_mark() -> None:
    tracker = TwilioPlayback()
    data = audio(3 * FRAME_BYTES)

    out = tracker.on_model_audio("item_a", 0, data)

    assert out == [
        SendMedia(data[0:160]),
        SendMark("item_a:20:g1:m1"),
        SendMedia(data[160:320]),
        SendMark("item_a:40:g1:m2"),
        SendMedia(data[320:480]),
        SendMark("item_a:60:g1:m3"),
    ]
    assert tracker.queued_ms() == 60.0
    assert tracker.playing()


def test_odd_sized_chunks_lose_and_reorder_no_byte() -> None:
    tracker = TwilioPlayback()
    sizes = [1, 159, 161, 7, 300, 0, 333, 80]
    data = audio(sum(sizes))
    out: list[Outbound] = []
    offset = 0
    for size in sizes:
        out += tracker.on_model_audio("item_a", 0, data[offset : offset + size])
        offset += size
    # 1041 bytes: six whole frames sent, the 81-byte tail held back until done.
    assert tracker.buffered_bytes() == len(data) % FRAME_BYTES == 81
    assert [len(o.payload) for o in out if isinstance(o, SendMedia)] == [160] * 6

    out += tracker.on_audio_done("item_a")

    assert media(out) == data
    assert tracker.buffered_bytes() == 0
    assert [type(o) for o in out] == [SendMedia, SendMark] * 7 + [SendMark]
    assert marks(out)[-2:] == ["item_a:130:g1:m7", "done:item_a:g1:m8"]
    assert tracker.queued_ms() == len(data) / 8


def test_a_held_back_tail_goes_out_before_the_next_items_audio() -> None:
    tracker = TwilioPlayback()
    first = tracker.on_model_audio("item_a", 0, audio(100))
    assert first == []  # under one frame: held back

    out = tracker.on_model_audio("item_b", 0, audio(FRAME_BYTES, start=100))

    assert media(out) == audio(100 + FRAME_BYTES)
    assert marks(out) == ["item_a:12:g1:m1", "item_b:20:g1:m2"]


def test_done_for_an_item_without_audio_sends_nothing_and_done_is_sent_once() -> None:
    tracker = TwilioPlayback()
    assert tracker.on_audio_done("item_x") == []
    tracker.on_model_audio("item_a", 0, audio(FRAME_BYTES))
    assert marks(tracker.on_audio_done("item_a")) == ["done:item_a:g1:m2"]
    assert tracker.on_audio_done("item_a") == []


# ----- mark echoes -----------------------------------------------------------------------------


def test_marks_echoed_in_order_advance_playback_in_20ms_steps() -> None:
    tracker = TwilioPlayback()
    out = tracker.on_model_audio("item_a", 0, audio(1000)) + tracker.on_audio_done("item_a")
    names = marks(out)

    results = echo(tracker, names[:-1])

    assert [r.outcome for r in results] == ["played"] * 7
    increments = played(results)
    # 1000 bytes = six 20 ms frames plus a 40-byte (5 ms) tail flushed by done.
    assert increments == [Played("item_a", 0, 20.0)] * 6 + [Played("item_a", 0, 5.0)]
    assert sum(p.ms for p in increments) == 125.0
    state = tracker.item("item_a")
    assert state is not None and state.played_ms == state.sent_ms == 125.0
    assert tracker.queued_ms() == 0.0
    assert not tracker.playing()

    done = tracker.on_mark(names[-1])

    assert done == MarkResult("done", None, "item_a", 0)
    assert tracker.item("item_a") is None


def test_played_increments_sum_to_the_acknowledged_time_across_odd_chunks() -> None:
    tracker = TwilioPlayback()
    names: list[str] = []
    for size in (333, 1, 500, 77):
        names += marks(tracker.on_model_audio("item_a", 2, audio(size)))
    acked = names[:4]

    increments = played(echo(tracker, acked))

    assert all(p.item_id == "item_a" and p.content_index == 2 for p in increments)
    assert sum(p.ms for p in increments) == 80.0
    assert tracker.queued_ms() == (911 // 160 - 4) * 20.0


def test_a_duplicate_echo_is_unknown_and_changes_nothing() -> None:
    tracker = TwilioPlayback()
    names = marks(tracker.on_model_audio("item_a", 0, audio(2 * FRAME_BYTES)))
    assert tracker.on_mark(names[0]).played == Played("item_a", 0, 20.0)

    again = tracker.on_mark(names[0])

    assert again == MarkResult("unknown")
    assert tracker.queued_ms() == 20.0


@pytest.mark.parametrize(
    "name",
    [
        "",
        "garbage",
        "item_a:20:g1",
        "item_a:20:gX:m1",
        ":g1:m1",
        "item_a:20:g1:m1:extra",
        "item_a:20:g" + "9" * 5000 + ":m1",  # int() would raise past 4300 digits
        None,
        42,
    ],
)
def test_malformed_mark_names_are_ignored(name: object) -> None:
    tracker = TwilioPlayback()
    tracker.on_model_audio("item_a", 0, audio(FRAME_BYTES))

    assert tracker.on_mark(name) == MarkResult("malformed")
    assert tracker.queued_ms() == 20.0
    assert tracker.pending_marks() == 1


def test_well_formed_names_never_sent_are_unknown() -> None:
    tracker = TwilioPlayback()
    tracker.on_model_audio("item_a", 0, audio(FRAME_BYTES))

    assert tracker.on_mark("item_a:20:g1:m99") == MarkResult("unknown")
    assert tracker.on_mark("done:item_a:g1:m99") == MarkResult("unknown")
    assert tracker.on_mark("item_a:20:g7:m1") == MarkResult("unknown")  # future generation
    assert tracker.queued_ms() == 20.0


# ----- barge-in --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("acked_frames", "audio_end_ms"),
    [
        (0, 50),  # the first item is playing even before its first echo
        (3, 110),  # 60 ms acknowledged + 50 ms slack
        (11, 250),  # 220 + 50 = 270, capped at the 250 ms sent
        (12, 250),  # 240 + 50, capped
        (13, 250),  # all acknowledged, the 10 ms tail included
    ],
)
def test_barge_in_truncates_at_acknowledged_plus_50_capped_at_sent(
    acked_frames: int, audio_end_ms: int
) -> None:
    tracker = TwilioPlayback()
    out = tracker.on_model_audio("item_a", 0, audio(2000)) + tracker.on_audio_done("item_a")
    names = marks(out)[:-1]  # 250 ms: twelve 20 ms frames and an 80-byte tail
    echo(tracker, names[:acked_frames])

    result = tracker.interrupt()

    assert result == Interruption((Truncation("item_a", 0, audio_end_ms),), clear=True)


def test_barge_in_floors_fractional_sent_ms() -> None:
    tracker = TwilioPlayback()
    out = tracker.on_model_audio("item_a", 0, audio(1004)) + tracker.on_audio_done("item_a")
    echo(tracker, marks(out)[:-1])  # 125.5 ms acknowledged, done not yet echoed

    assert tracker.interrupt().truncations == (Truncation("item_a", 0, 125),)


def test_a_queued_second_item_not_yet_started_truncates_at_zero() -> None:
    tracker = TwilioPlayback()
    a = tracker.on_model_audio("item_a", 0, audio(320)) + tracker.on_audio_done("item_a")
    tracker.on_model_audio("item_b", 0, audio(320))
    echo(tracker, marks(a)[:1])  # 20 of item_a's 40 ms heard

    result = tracker.interrupt()

    assert result.truncations == (Truncation("item_a", 0, 40), Truncation("item_b", 0, 0))
    assert result.clear


def test_overlapping_items_truncate_at_their_own_positions() -> None:
    tracker = TwilioPlayback()
    a = tracker.on_model_audio("item_a", 0, audio(320)) + tracker.on_audio_done("item_a")
    b = tracker.on_model_audio("item_b", 0, audio(800))
    echo(tracker, marks(a)[:2] + marks(b)[:1])  # a fully heard (done not echoed), b 20 ms

    result = tracker.interrupt()

    assert result.truncations == (Truncation("item_a", 0, 40), Truncation("item_b", 0, 70))


def test_once_the_first_item_is_done_the_next_is_the_one_playing() -> None:
    tracker = TwilioPlayback()
    a = tracker.on_model_audio("item_a", 0, audio(320)) + tracker.on_audio_done("item_a")
    tracker.on_model_audio("item_b", 0, audio(800))
    echo(tracker, marks(a))  # item_a fully played and completed

    assert tracker.interrupt().truncations == (Truncation("item_b", 0, 50),)


def test_barge_in_drops_the_held_back_tail() -> None:
    tracker = TwilioPlayback()
    tracker.on_model_audio("item_a", 0, audio(FRAME_BYTES + 100))
    assert tracker.buffered_bytes() == 100

    result = tracker.interrupt()

    assert result.truncations == (Truncation("item_a", 0, 20),)  # the tail was never sent
    assert tracker.buffered_bytes() == 0
    assert tracker.on_audio_done("item_a") == []


def test_interrupt_with_nothing_playing_needs_no_clear() -> None:
    tracker = TwilioPlayback()
    out = tracker.on_model_audio("item_a", 0, audio(FRAME_BYTES)) + tracker.on_audio_done("item_a")
    echo(tracker, marks(out))

    assert tracker.interrupt() == Interruption((), clear=False)
    assert tracker.generation == 1
    assert marks(tracker.on_model_audio("item_b", 0, audio(FRAME_BYTES))) == ["item_b:20:g1:m3"]


def test_marks_echoed_after_the_clear_are_stale_and_ignored() -> None:
    tracker = TwilioPlayback()
    out = tracker.on_model_audio("item_a", 0, audio(4 * FRAME_BYTES)) + tracker.on_audio_done(
        "item_a"
    )
    old = marks(out)
    echo(tracker, old[:1])
    tracker.interrupt()
    new = marks(tracker.on_model_audio("item_b", 0, audio(2 * FRAME_BYTES)))

    # Twilio echoes every mark the clear dropped, all at once.
    results = echo(tracker, old[1:])

    assert [r.outcome for r in results] == ["stale"] * 4
    assert played(results) == []
    state = tracker.item("item_b")
    assert state is not None and state.played_ms == 0.0
    assert tracker.item("item_a") is None
    assert tracker.pending_marks() == len(new)


def test_audio_of_an_interrupted_item_arriving_after_the_interrupt_is_dropped() -> None:
    tracker = TwilioPlayback()
    tracker.on_model_audio("item_a", 0, audio(2 * FRAME_BYTES))
    tracker.interrupt()

    assert tracker.on_model_audio("item_a", 0, audio(3 * FRAME_BYTES)) == []
    assert tracker.on_model_audio("item_a", 1, audio(FRAME_BYTES)) == []
    assert tracker.on_audio_done("item_a") == []
    assert tracker.dropped_bytes == 4 * FRAME_BYTES
    assert not tracker.playing()
    assert tracker.queued_ms() == 0.0


def test_a_new_item_after_the_interrupt_plays_normally() -> None:
    tracker = TwilioPlayback()
    tracker.on_model_audio("item_a", 0, audio(2 * FRAME_BYTES))
    tracker.interrupt()
    data = audio(2 * FRAME_BYTES + 8, start=7)

    out = tracker.on_model_audio("item_b", 0, data) + tracker.on_audio_done("item_b")

    assert media(out) == data
    assert marks(out) == [
        "item_b:20:g2:m3",
        "item_b:40:g2:m4",
        "item_b:41:g2:m5",
        "done:item_b:g2:m6",
    ]
    results = echo(tracker, marks(out))
    assert [r.outcome for r in results] == ["played"] * 3 + ["done"]
    assert sum(p.ms for p in played(results)) == 41.0
    assert not tracker.playing()
    # A second barge-in works from the new generation's figures alone.
    tracker.on_model_audio("item_c", 0, audio(3 * FRAME_BYTES))
    assert tracker.interrupt().truncations == (Truncation("item_c", 0, 50),)
    assert tracker.generation == 3
