"""The paced track's queue, one tick at a time: frames in order, silence when idle, playback
reported per item at least every report_ms and at its end, a barge-in that empties the queue
in the same tick and says exactly what was handed out."""

from __future__ import annotations

from services.media.vocabulary import PlaybackCut, Played
from services.webrtc.playout import BYTES_PER_MS, FRAME_BYTES, Playout


def ms(n: int, fill: int = 1) -> bytes:
    return bytes([fill]) * (n * BYTES_PER_MS)


def test_idle_is_silence() -> None:
    playout = Playout()
    frame, played = playout.next_frame()
    assert frame == bytes(FRAME_BYTES) and played == []
    assert playout.silent_frames == 1


def test_audio_goes_out_a_frame_a_tick_and_is_reported_every_report_ms_and_at_the_end() -> None:
    playout = Playout(report_ms=100)
    playout.push("a", 0, ms(250, fill=7))
    playout.done("a")
    reports: list[Played] = []
    frames = []
    for _ in range(14):
        frame, played = playout.next_frame()
        frames.append(frame)
        reports += played
    assert all(len(f) == FRAME_BYTES for f in frames)
    assert b"".join(frames[:12]).startswith(ms(240, fill=7))
    assert frames[12] == ms(10, fill=7) + bytes(FRAME_BYTES // 2)  # the tail, padded
    assert frames[13] == bytes(FRAME_BYTES)
    assert reports == [Played("a", 0, 100.0), Played("a", 0, 100.0), Played("a", 0, 50.0)]
    assert not playout.playing


def test_items_play_in_order_and_a_frame_never_mixes_two() -> None:
    playout = Playout()
    playout.push("a", 0, ms(30, fill=1))
    playout.push("b", 0, ms(20, fill=2))
    playout.done("a")
    out = [playout.next_frame() for _ in range(3)]
    assert out[0][0] == ms(20, fill=1)
    assert out[1][0] == ms(10, fill=1) + bytes(FRAME_BYTES // 2)
    assert out[1][1] == [Played("a", 0, 30.0)]
    assert out[2][0] == ms(20, fill=2)


def test_an_item_still_streaming_is_not_closed_when_the_queue_runs_dry() -> None:
    playout = Playout(report_ms=1000)
    playout.push("a", 0, ms(20))
    assert playout.next_frame()[1] == []
    assert playout.next_frame() == (bytes(FRAME_BYTES), [])  # the model is behind: silence
    playout.push("a", 0, ms(20))
    playout.done("a")
    assert playout.next_frame()[1] == [Played("a", 0, 40.0)]


def test_a_barge_in_empties_the_queue_and_says_what_was_handed_out() -> None:
    playout = Playout(report_ms=100)
    playout.push("a", 0, ms(1000))
    reported = []
    for _ in range(7):  # 140 ms handed out; 100 of it reported
        reported += playout.next_frame()[1]
    assert reported == [Played("a", 0, 100.0)]
    cut, played = playout.interrupt()
    assert cut == PlaybackCut((("a", 0, 140),))
    assert played == [Played("a", 0, 40.0)]
    assert playout.next_frame() == (bytes(FRAME_BYTES), [])  # the same tick: silence next
    assert playout.interrupt() == (PlaybackCut(()), [])
