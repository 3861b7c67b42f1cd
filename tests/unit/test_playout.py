"""The paced outbound queue, one tick at a time, for every frame format (24 kHz PCM16 for WebRTC,
G.711 μ-law and A-law for RTP): frames in order, the codec's silence when idle, playback
reported per item at least every report_ms and at its end, a barge-in that empties the queue in
the same tick and says exactly what was handed out; for G.711, exact to the 20 ms packet."""

from __future__ import annotations

import pytest

from services.media.playout import FRAME_FORMATS, PCM24K, PCMA, PCMU, FrameFormat, Playout
from services.media.vocabulary import PlaybackCut, Played

FORMATS = [pytest.param(f, id=f.name) for f in (PCM24K, PCMU, PCMA)]


def ms(fmt: FrameFormat, n: int, fill: int = 1) -> bytes:
    return bytes([fill]) * (n * fmt.bytes_per_ms)


def idle(fmt: FrameFormat, nbytes: int | None = None) -> bytes:
    return fmt.silence(fmt.frame_bytes if nbytes is None else nbytes)


def test_the_formats() -> None:
    assert (PCM24K.frame_bytes, PCMU.frame_bytes, PCMA.frame_bytes) == (960, 160, 160)
    assert (PCM24K.silence(2), PCMU.silence(2), PCMA.silence(2)) == (
        b"\x00\x00",
        b"\xff\xff",
        b"\xd5\xd5",
    )
    assert FRAME_FORMATS["audio/pcmu"] is PCMU
    assert Playout().format is PCM24K  # the WebRTC track's default is unchanged


@pytest.mark.parametrize("fmt", FORMATS)
def test_idle_is_the_codecs_silence(fmt: FrameFormat) -> None:
    playout = Playout(fmt)
    frame, played = playout.next_frame()
    assert frame == idle(fmt) and played == []
    assert playout.silent_frames == 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_audio_goes_out_a_frame_a_tick_reported_every_report_ms_and_at_the_end(
    fmt: FrameFormat,
) -> None:
    playout = Playout(fmt, report_ms=100)
    playout.push("a", 0, ms(fmt, 250, fill=7))
    playout.done("a")
    reports: list[Played] = []
    frames = []
    for _ in range(14):
        frame, played = playout.next_frame()
        frames.append(frame)
        reports += played
    assert all(len(f) == fmt.frame_bytes for f in frames)
    assert b"".join(frames[:12]).startswith(ms(fmt, 240, fill=7))
    assert frames[12] == ms(fmt, 10, fill=7) + idle(fmt, fmt.frame_bytes // 2)  # tail, padded
    assert frames[13] == idle(fmt)
    assert reports == [Played("a", 0, 100.0), Played("a", 0, 100.0), Played("a", 0, 50.0)]
    assert not playout.playing


@pytest.mark.parametrize("fmt", FORMATS)
def test_items_play_in_order_and_a_frame_never_mixes_two(fmt: FrameFormat) -> None:
    playout = Playout(fmt)
    playout.push("a", 0, ms(fmt, 30, fill=1))
    playout.push("b", 0, ms(fmt, 20, fill=2))
    playout.done("a")
    out = [playout.next_frame() for _ in range(3)]
    assert out[0][0] == ms(fmt, 20, fill=1)
    assert out[1][0] == ms(fmt, 10, fill=1) + idle(fmt, fmt.frame_bytes // 2)
    assert out[1][1] == [Played("a", 0, 30.0)]
    assert out[2][0] == ms(fmt, 20, fill=2)


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_item_still_streaming_is_not_closed_when_the_queue_runs_dry(fmt: FrameFormat) -> None:
    playout = Playout(fmt, report_ms=1000)
    playout.push("a", 0, ms(fmt, 20))
    assert playout.next_frame()[1] == []
    assert playout.next_frame() == (idle(fmt), [])  # the model is behind: silence
    playout.push("a", 0, ms(fmt, 20))
    playout.done("a")
    assert playout.next_frame()[1] == [Played("a", 0, 40.0)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_barge_in_empties_the_queue_and_says_what_was_handed_out(fmt: FrameFormat) -> None:
    playout = Playout(fmt, report_ms=100)
    playout.push("a", 0, ms(fmt, 1000))
    reported = []
    for _ in range(7):  # 140 ms handed out; 100 of it reported
        reported += playout.next_frame()[1]
    assert reported == [Played("a", 0, 100.0)]
    cut, played = playout.interrupt()
    assert cut == PlaybackCut((("a", 0, 140),))
    assert played == [Played("a", 0, 40.0)]
    assert playout.next_frame() == (idle(fmt), [])  # the same tick: silence next
    assert playout.interrupt() == (PlaybackCut(()), [])


@pytest.mark.parametrize("fmt", [pytest.param(PCMU, id="pcmu"), pytest.param(PCMA, id="pcma")])
@pytest.mark.parametrize("packets", [1, 3, 17, 49])
def test_g711_accounting_is_exact_to_the_packet(fmt: FrameFormat, packets: int) -> None:
    """What the truncation gets is the packets sent times 20 ms, however the audio arrived."""
    playout = Playout(fmt, report_ms=20)
    for chunk in range(25):  # 1 s of the model's audio in uneven deltas
        playout.push("a", 0, ms(fmt, 40, fill=chunk + 1)[: 320 - chunk])
        playout.push("a", 0, ms(fmt, 40, fill=chunk + 1)[320 - chunk :])
    sent = b""
    reported = 0.0
    for _ in range(packets):
        frame, played = playout.next_frame()
        assert len(frame) == 160
        sent += frame
        reported += sum(p.ms for p in played)
    assert reported == 20.0 * packets  # every packet reported as it goes out
    cut, played = playout.interrupt()
    assert cut == PlaybackCut((("a", 0, 20 * packets),)) and played == []
    assert len(sent) == 160 * packets and fmt.silence_byte not in sent
    frame, played = playout.next_frame()  # the tick after the barge-in
    assert frame == idle(fmt) and played == [] and playout.queued_ms == 0


def test_audio_of_a_cut_item_arriving_after_the_barge_in_is_dropped() -> None:
    # The model was told the item was truncated; its deltas still in flight must not play.
    playout = Playout(PCMU)
    playout.push("i1", 0, b"\x11" * 480)
    playout.next_frame()
    playout.interrupt()
    playout.push("i1", 0, b"\x22" * 320)  # late audio of the cut item
    playout.push("i2", 0, b"\x33" * 160)  # the next response's
    frame, _ = playout.next_frame()
    assert frame == b"\x33" * 160 and playout.dropped_bytes == 320
