"""The caller's audio jitter buffer, fed real ``aiortc.rtp.RtpPacket`` objects one ``add`` at a
time (the receiver's only call): frames in order, a reordered packet used, a lost one skipped
after ``skip_after`` packets, a burst skipped at once, sequence numbers wrapping; and the hook
into aiortc's receiver still pointing where aiortc builds and uses its own buffer."""

from __future__ import annotations

import inspect
import random
import types

import pytest
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtpPacket

from services.errors import UserError
from services.webrtc import jitter
from services.webrtc.jitter import AudioJitterBuffer

SAMPLES = 960  # 20 ms at Opus's 48 kHz RTP clock


def rtp(i: int, first: int = 1000) -> RtpPacket:
    """Frame ``i`` of a stream whose first sequence number is ``first``."""
    return RtpPacket(
        payload_type=111,
        sequence_number=(first + i) % 65536,
        timestamp=(7 + i * SAMPLES) % (1 << 32),
        payload=i.to_bytes(4, "big"),
    )


def feed(buffer: AudioJitterBuffer, order: list[int], first: int = 1000) -> list[int | None]:
    """What each ``add`` released, as frame numbers."""
    out: list[int | None] = []
    for i in order:
        pli, frame = buffer.add(rtp(i, first))
        assert pli is False
        if frame is None:
            out.append(None)
        else:
            n = int.from_bytes(frame.data, "big")
            assert frame.timestamp == (7 + n * SAMPLES) % (1 << 32)
            out.append(n)
    return out


# ----- the hook into aiortc ----------------------------------------------------------------------


def test_aiortc_builds_and_uses_the_buffer_we_replace() -> None:
    # If aiortc renames the field, builds the audio buffer elsewhere or calls more than add() on
    # it, install() would silently do nothing or break the receiver: look again at jitter.py.
    init = inspect.getsource(RTCRtpReceiver.__init__)
    assert "self.__jitter_buffer = JitterBuffer(capacity=16, prefetch=4)" in init
    handle = inspect.getsource(RTCRtpReceiver._handle_rtp_packet)
    assert "pli_flag, encoded_frame = self.__jitter_buffer.add(packet)" in handle
    assert inspect.getsource(RTCRtpReceiver).count("__jitter_buffer") == 3  # 2 builds, 1 add


def test_install_replaces_an_audio_receivers_buffer() -> None:
    receiver = RTCRtpReceiver("audio", types.SimpleNamespace(state="new"))  # type: ignore[arg-type]
    assert isinstance(getattr(receiver, jitter.RECEIVER_FIELD), JitterBuffer)
    buffer = AudioJitterBuffer()
    assert jitter.install(receiver, buffer) is buffer
    assert getattr(receiver, jitter.RECEIVER_FIELD) is buffer


def test_install_refuses_a_receiver_without_the_field() -> None:
    with pytest.raises(UserError, match="no _RTCRtpReceiver__jitter_buffer"):
        jitter.install(object(), AudioJitterBuffer())  # type: ignore[arg-type]


# ----- behaviour ---------------------------------------------------------------------------------


def test_in_order_a_frame_leaves_once_prefetch_packets_follow_it() -> None:
    assert feed(AudioJitterBuffer(prefetch=0), [0, 1, 2, 3]) == [0, 1, 2, 3]
    assert feed(AudioJitterBuffer(prefetch=1), [0, 1, 2, 3]) == [None, 0, 1, 2]
    assert feed(AudioJitterBuffer(prefetch=2), [0, 1, 2, 3]) == [None, None, 0, 1]


def test_the_receivers_depayloaded_data_is_what_goes_to_the_decoder() -> None:
    buffer = AudioJitterBuffer(prefetch=0)
    packet = rtp(0)
    packet._data = b"depayloaded"  # type: ignore[attr-defined]  # as _handle_rtp_packet does
    _, frame = buffer.add(packet)
    assert frame is not None and frame.data == b"depayloaded"


def test_a_packet_reordered_by_one_is_used_and_costs_no_depth() -> None:
    buffer = AudioJitterBuffer(prefetch=1)
    assert feed(buffer, [0, 1, 3, 2, 4, 5]) == [None, 0, 1, 2, 3, 4]
    assert (buffer.skipped, buffer.late) == (0, 0)


def test_with_no_prefetch_a_reordered_packet_is_skipped_then_late() -> None:
    buffer = AudioJitterBuffer(prefetch=0)  # skip_after 1
    assert feed(buffer, [0, 2, 1, 3]) == [0, 2, None, 3]
    assert (buffer.skipped, buffer.late) == (1, 1)


@pytest.mark.parametrize("skip_after", [1, 2, 3])
def test_a_lost_packet_is_skipped_once_skip_after_packets_follow_it(skip_after: int) -> None:
    buffer = AudioJitterBuffer(prefetch=0, skip_after=skip_after)
    # 1 is lost: held until skip_after packets are behind the hole, then one frame per add
    # (the receiver's contract), so the wait stays as depth...
    out = feed(buffer, [0, 2, 3, 4, 5])
    assert out == [0] + [None] * (skip_after - 1) + list(range(2, 7 - skip_after))
    assert buffer.skipped == 1
    # ...until the late packet: dropped, it lets one held frame out.
    assert feed(buffer, [1]) == [None if skip_after == 1 else 7 - skip_after]
    assert buffer.late == 1


def test_with_the_default_skip_after_a_loss_costs_no_latency() -> None:
    lost = feed(AudioJitterBuffer(prefetch=1), [0, 1, 3, 4, 5, 6])
    assert lost == [None, 0, 1, 3, 4, 5]  # every frame leaves on the same add as without loss


def test_a_burst_of_losses_is_skipped_at_once() -> None:
    buffer = AudioJitterBuffer(prefetch=1)
    assert feed(buffer, [0, 1, 7, 8, 9]) == [None, 0, 1, 7, 8]
    assert buffer.skipped == 5


def test_sequence_numbers_wrap_at_65535() -> None:
    buffer = AudioJitterBuffer(prefetch=1)
    first = 65533  # frames 0..2 are 65533..65535, frame 3 is sequence number 0
    out = feed(buffer, [0, 1, 3, 2, 4, 6, 7, 8], first=first)  # reordered across, 5 lost
    assert out == [None, 0, 1, 2, 3, 4, 6, 7]
    assert (buffer.skipped, buffer.late) == (1, 0)


def test_a_duplicate_is_dropped() -> None:
    buffer = AudioJitterBuffer(prefetch=1)
    assert feed(buffer, [0, 1, 1, 2]) == [None, 0, None, 1]
    assert buffer.late == 1


def test_a_jump_beyond_the_capacity_gives_up_the_oldest() -> None:
    buffer = AudioJitterBuffer(prefetch=1, capacity=16)
    assert feed(buffer, [0, 1, 2, 500, 501, 502]) == [None, 0, 1, None, 500, 501]
    assert (buffer.dropped, buffer.skipped) == (1, 497)  # frame 2, and 3..499


def test_a_sender_that_restarts_its_sequence_numbers_is_followed() -> None:
    buffer = AudioJitterBuffer(prefetch=1)
    assert feed(buffer, [1000, 1001, 1002]) == [None, 1000, 1001]
    assert feed(buffer, [0, 1, 2]) == [None, 0, 1]  # 1000 behind: beyond MAX_MISORDER
    assert buffer.dropped == 1


@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_any_arrival_order_gives_frames_in_order_once_each(prefetch: int) -> None:
    rng = random.Random(prefetch)
    sent = [i for i in range(3000) if rng.random() > 0.05]
    arrival = sorted(sent, key=lambda i: i + rng.expovariate(1 / 1.5))  # reorders, some by 3+
    buffer = AudioJitterBuffer(prefetch=prefetch)
    released = [n for n in feed(buffer, arrival, first=60_000) if n is not None]
    assert released == sorted(set(released))
    # Every packet is released, late or still held; every position passed is released or
    # skipped.
    held = len(buffer._packets)
    assert len(released) + buffer.late + held == len(sent)
    assert buffer._head == 60_000 + arrival[0] + len(released) + buffer.skipped
    assert buffer.dropped == 0


def test_settings_it_cannot_honour_are_refused() -> None:
    for bad in ({"prefetch": -1}, {"skip_after": 0}, {"prefetch": 16}, {"skip_after": 16}):
        with pytest.raises(UserError):
            AudioJitterBuffer(**bad)
    assert AudioJitterBuffer(prefetch=2).skip_after == 3
    assert AudioJitterBuffer().capacity == 16


def test_each_released_frame_is_told_by_its_rtp_timestamp_once() -> None:
    # The ingress times its own work on a frame from here (callray_ingress_added_seconds).
    told: list[int] = []
    buffer = AudioJitterBuffer(prefetch=1, on_release=told.append)
    released = feed(buffer, [0, 2, 1, 3, 5, 6, 7])  # 4 lost
    frames = [n for n in released if n is not None]
    assert told == [(7 + n * SAMPLES) % (1 << 32) for n in frames]
    assert frames == [0, 1, 2, 3, 5, 6]
