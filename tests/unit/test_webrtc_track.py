"""The paced outbound track and the inbound reader, on a virtual clock: what each reports for
``callray_ingress_added_seconds`` (how late a frame is handed to aiortc; each delivered frame's
``pts``)."""

from __future__ import annotations

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError

from services.media.playout import Playout
from services.webrtc.track import PacedTrack, read_caller


class Clock:
    """``now`` advances only when the track sleeps, plus any stall a test injects."""

    def __init__(self) -> None:
        self.now = 100.0
        self.stall = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds + self.stall


async def test_lateness_is_zero_on_time_and_the_stall_when_the_loop_wakes_late() -> None:
    clock = Clock()
    late: list[float] = []
    track = PacedTrack(
        Playout(), lambda _p: None, clock=clock, sleep=clock.sleep, on_late=late.append
    )
    for _ in range(3):
        await track.recv()
    clock.stall = 0.004  # the loop wakes 4 ms after each frame was due
    for _ in range(2):
        await track.recv()
    clock.stall = 0.0
    clock.now += 0.030  # the next frame is asked for 14 ms after it was due: sent at once
    await track.recv()
    # The first frame is due at once; the next two exactly on time; then the stalls.
    assert late[:3] == [0.0, 0.0, 0.0]
    assert [round(x, 4) for x in late[3:5]] == [0.004, 0.004]
    assert round(late[5], 4) == 0.014  # due at 100 ms, asked for at 84 + 30


class FramesThenEnd:
    def __init__(self, frames: list[av.AudioFrame]) -> None:
        self.frames = frames

    async def recv(self) -> av.AudioFrame:
        if not self.frames:
            raise MediaStreamError
        return self.frames.pop(0)


def stereo48k(pts: int) -> av.AudioFrame:
    pcm = np.zeros((1, 960 * 2), np.int16)
    frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="stereo")
    frame.sample_rate = 48_000
    frame.pts = pts
    return frame


async def test_each_delivered_frame_is_told_by_its_pts_after_its_audio_went_out() -> None:
    order: list[tuple[str, int]] = []
    track = FramesThenEnd([stereo48k(0), stereo48k(960), stereo48k(1920)])
    await read_caller(
        track,
        lambda pcm: order.append(("audio", len(pcm))),
        lambda pts: order.append(("delivered", pts)),
    )
    # Mono 24 kHz out; libswresample holds a little back from the first frame.
    assert [kind for kind, _ in order] == ["audio", "delivered"] * 3
    assert [pts for kind, pts in order if kind == "delivered"] == [0, 960, 1920]
