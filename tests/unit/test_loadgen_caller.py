"""The simulated Twilio caller without sockets: pacing, playback, marks, clear, echo accounting.

The ingress side of every exchange is the real :class:`TwilioSerializer`, so what the caller sends
is checked by the same parser the ingress uses, and what it reads is what the ingress encodes.
"""

from __future__ import annotations

import json
import struct
import wave
import zlib
from pathlib import Path
from typing import Any

import pytest

from services.errors import MediaStreamProtocolError, ProtocolError, UserError
from services.loadgen.audio import frame_rms, load_wav_ulaw, tone_ulaw
from services.loadgen.frame_tags import TagScanner, tag_frame
from services.loadgen.histogram_png import encode_png, render_histogram, write_histogram_png
from services.loadgen.options import LoadOptions
from services.loadgen.report import CallResult, Histogram, LoadReport, summarize
from services.loadgen.script import CallerScript
from services.loadgen.twilio_caller import TwilioCaller
from services.loadgen.twiml_reader import (
    Rejected,
    StreamAnswer,
    parse_voice_answer,
    rebase_stream_url,
)
from services.loadgen.wire import (
    PlayClear,
    PlayMark,
    PlayMedia,
    StreamIdentity,
    TwilioCallerCodec,
)
from services.telephony.media_streams import (
    MediaReceived,
    StreamConnected,
    StreamStarted,
    StreamStopped,
    TwilioSerializer,
    UnknownStreamEvent,
)
from services.telephony.twiml import busy_twiml, connect_stream_twiml

FIXTURES = Path(__file__).parent.parent / "fixtures" / "twilio"
IDS = StreamIdentity("AC" + "0" * 32, "CA" + "1" * 32, "MZ" + "2" * 32)
SID = IDS.stream_sid
APP = TwilioSerializer()  # only its encoders, which are stateless
TICK = 0.02


def make_caller(**script: Any) -> TwilioCaller:
    settings: dict[str, Any] = {"duration_s": 1.0, "speech": tone_ulaw(1000), "opening_ms": 0}
    return TwilioCaller(IDS, CallerScript(**(settings | script)), {"token": "t0k"})


def ingress_view(caller: TwilioCaller, now: float = 0.0) -> TwilioSerializer:
    """Open ``caller`` and return an ingress-side parser that has seen connected and start."""
    ingress = TwilioSerializer()
    connected, start = (ingress.parse(m) for m in caller.open(now))
    assert isinstance(connected, StreamConnected)
    assert isinstance(start, StreamStarted)
    assert start.custom_parameters == {"token": "t0k"}
    assert (start.encoding, start.sample_rate, start.channels) == ("audio/x-mulaw", 8000, 1)
    return ingress


def sent_frames(caller: TwilioCaller, ingress: TwilioSerializer, now: float) -> list[bytes]:
    events = [ingress.parse(m) for m in caller.tick(now)]
    return [e.payload for e in events if isinstance(e, MediaReceived)]


def mark_names(messages: list[str]) -> list[str]:
    return [json.loads(m)["mark"]["name"] for m in messages if json.loads(m)["event"] == "mark"]


# --- pacing and framing ---------------------------------------------------------------------


def test_one_media_message_per_20ms_tick_with_twilio_chunk_and_timestamp() -> None:
    caller = make_caller(duration_s=0.1, echo=False)
    ingress = ingress_view(caller, now=10.0)
    for k in range(5):
        messages = caller.tick(10.0 + k * TICK)
        assert len(messages) == 1
        event = ingress.parse(messages[0])
        assert isinstance(event, MediaReceived)
        assert (event.chunk, event.timestamp_ms, len(event.payload)) == (k + 1, 20 * k, 160)
        assert json.loads(messages[0])["sequenceNumber"] == str(k + 2)  # start was "1"
        assert caller.tick(10.0 + k * TICK + 0.01) == []  # nothing between ticks
    (stop,) = caller.tick(10.1)  # nothing left to drain
    assert isinstance(ingress.parse(stop), StreamStopped)
    assert caller.done and caller.ended_by == "caller"


def test_a_late_tick_catches_up_on_the_grid_and_records_the_lag() -> None:
    caller = make_caller(echo=False)
    ingress = ingress_view(caller)
    events = [ingress.parse(m) for m in caller.tick(0.065)]
    assert [e.timestamp_ms for e in events if isinstance(e, MediaReceived)] == [0, 20, 40, 60]
    assert caller.stats.max_tick_lag_ms == pytest.approx(65.0)
    assert caller.next_tick_at == pytest.approx(0.08)


def shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return type(value).__name__


@pytest.mark.parametrize("name", ["connected", "start", "media", "mark", "stop"])
def test_messages_have_the_shape_of_the_golden_twilio_captures(name: str) -> None:
    codec = TwilioCallerCodec(IDS)
    message = {
        "connected": codec.connected,
        "start": lambda: codec.start({"tenant": "acme", "token": "x"}),
        "media": lambda: codec.media(2, 5, b"\xff" * 160),
        "mark": lambda: codec.mark("item_abc:1240:g3:m17"),
        "stop": codec.stop,
    }[name]()
    golden = json.loads((FIXTURES / f"{name}.json").read_text())
    assert shape(json.loads(message)) == shape(golden)


def test_app_messages_parse_from_what_the_ingress_serializer_encodes() -> None:
    codec = TwilioCallerCodec(IDS)
    assert codec.parse(APP.encode_media(SID, b"\x01\x02")) == PlayMedia(b"\x01\x02")
    assert codec.parse(APP.encode_mark(SID, "m1")) == PlayMark("m1")
    assert codec.parse(APP.encode_clear(SID)) == PlayClear()
    assert isinstance(codec.parse('{"event": "dtmf", "streamSid": "x"}'), UnknownStreamEvent)
    with pytest.raises(MediaStreamProtocolError, match="streamSid"):
        codec.parse(APP.encode_clear("MZ" + "9" * 32))
    with pytest.raises(MediaStreamProtocolError, match=r"media\.payload"):
        codec.parse(json.dumps({"event": "media", "streamSid": SID, "media": {}}))


# --- playback like Twilio -------------------------------------------------------------------


def test_audio_plays_in_real_time_and_a_mark_returns_when_its_audio_has_played() -> None:
    caller = make_caller(echo=False)
    ingress_view(caller)
    caller.tick(0.0)
    assert caller.receive(APP.encode_media(SID, b"\x55" * 400), 0.005) == []  # 50 ms
    assert caller.receive(APP.encode_mark(SID, "a"), 0.006) == []
    for t in (0.02, 0.04, 0.06):  # 160 + 160 + 80 bytes start playing
        assert mark_names(caller.tick(t)) == []
        assert caller.playback.is_playing
    assert mark_names(caller.tick(0.08)) == ["a"]  # the last 10 ms finished in that period
    assert caller.playback.played_bytes == 400
    assert caller.stats.marks_received == caller.stats.marks_echoed == 1


def test_a_mark_with_nothing_buffered_is_echoed_at_once() -> None:
    caller = make_caller(echo=False)
    ingress_view(caller)
    assert mark_names(caller.receive(APP.encode_mark(SID, "now"), 0.001)) == ["now"]


def test_clear_drops_buffered_audio_and_echoes_every_pending_mark_at_once() -> None:
    caller = make_caller(echo=False)
    ingress_view(caller)
    caller.receive(APP.encode_media(SID, b"\x55" * 800), 0.001)
    caller.receive(APP.encode_mark(SID, "x"), 0.001)
    caller.receive(APP.encode_media(SID, b"\x55" * 160), 0.001)
    caller.receive(APP.encode_mark(SID, "y"), 0.001)
    caller.tick(0.0)  # the first 20 ms start playing
    assert mark_names(caller.receive(APP.encode_clear(SID), 0.01)) == ["x", "y"]
    assert caller.playback.cleared_bytes == 960
    assert caller.playback.pending_bytes == 0 and not caller.playback.is_playing
    assert mark_names(caller.tick(0.02)) == []
    assert mark_names(caller.receive(APP.encode_mark(SID, "z"), 0.021)) == ["z"]


# --- echo accounting ------------------------------------------------------------------------


def test_echo_latency_loss_reordering_and_duplicates_from_rechunked_echoes() -> None:
    caller = make_caller(duration_s=0.2, drain_s=0.5)
    ingress = ingress_view(caller)
    frames = [f for k in range(10) for f in sent_frames(caller, ingress, k * TICK)]
    order = [0, 1, 2, 4, 3, 5, 5, 6, 8, 9]  # 7 lost, 3 after 4, 5 twice
    stream = b"".join(frames[k] for k in order)
    for offset in range(0, len(stream), 400):  # the ingress re-cut it into 50 ms messages
        caller.receive(APP.encode_media(SID, stream[offset : offset + 400]), 0.5)
    echo = caller.stats.echo
    assert echo is not None
    assert sorted(echo.latencies_ms) == pytest.approx(
        sorted((0.5 - k * TICK) * 1000 for k in set(order))
    )
    assert (echo.echoed, echo.reordered, echo.duplicates, echo.unknown) == (9, 1, 1, 0)
    caller.tick(0.69)
    assert not caller.done  # still waiting for frame 7
    caller.tick(0.72)
    assert caller.done and (echo.lost(), echo.flushed()) == (1, 0)


def test_frames_unechoed_before_a_clear_count_as_flushed_not_lost() -> None:
    caller = make_caller(duration_s=0.3, drain_s=0.2)
    ingress = ingress_view(caller)
    frames = [f for k in range(10) for f in sent_frames(caller, ingress, k * TICK)]
    for k in range(5):
        caller.receive(APP.encode_media(SID, frames[k]), 0.19)
    caller.receive(APP.encode_clear(SID), 0.195)  # frames 5..9 may have been dropped
    frames += [f for k in range(10, 15) for f in sent_frames(caller, ingress, k * TICK)]
    for k in (10, 11, 13, 14):  # 12 never comes back
        caller.receive(APP.encode_media(SID, frames[k]), 0.3)
    result = CallResult.from_caller(0, caller, post_sent_at=0, answered_at=0, ws_open_at=0)
    assert (result.echoed, result.flushed, result.lost) == (9, 5, 1)


def test_echoes_suppressed_from_a_clear_until_they_resume_count_as_flushed() -> None:
    """callray's session drops the model's audio from a barge-in until the model answers anew."""
    caller = make_caller(duration_s=0.4, drain_s=0.2)
    ingress = ingress_view(caller)
    for k in range(20):
        (frame,) = sent_frames(caller, ingress, k * TICK)
        if k == 1:
            caller.receive(APP.encode_clear(SID), k * TICK + 0.001)
        if k < 1 or k >= 12:  # nothing comes back from frame 1 to 11
            caller.receive(APP.encode_media(SID, frame), k * TICK + 0.001)
    caller.tick(0.45)
    assert caller.done  # playback ended at 420 ms, and no frame is outstanding
    result = CallResult.from_caller(0, caller, post_sent_at=0, answered_at=0, ws_open_at=0)
    assert (result.echoed, result.flushed, result.lost) == (9, 11, 0)


def test_a_busy_close_from_the_ingress_is_a_rejection() -> None:
    caller = make_caller(echo=False)
    ingress_view(caller)
    caller.peer_closed()
    times = {"post_sent_at": 0.0, "answered_at": 0.0, "ws_open_at": 0.0}
    assert CallResult.from_caller(0, caller, **times, close_reason="busy").outcome == "rejected"
    assert CallResult.from_caller(0, caller, **times, close_reason="").outcome == "completed"


def test_barge_in_clear_latency_and_stale_echo_audio() -> None:
    caller = make_caller(barge_in_after_s=0.1, barge_in_ms=100)
    ingress = ingress_view(caller)
    frames: list[bytes] = []
    for k in range(12):
        frames += sent_frames(caller, ingress, k * TICK)
        caller.receive(APP.encode_media(SID, frames[k]), k * TICK + 0.001)  # instant echo
        if k == 6:
            caller.receive(APP.encode_clear(SID), 5 * TICK + 0.03)
    loud = [k for k, frame in enumerate(frames) if frame_rms(frame) > 3000]
    assert loud == [5, 6, 7, 8, 9]  # echo audio was playing at 100 ms: barge-in at once
    barge = caller.stats.barge_in
    assert barge is not None and barge.first_sequence == 5
    assert barge.clear_latency_ms == pytest.approx(30.0)
    assert barge.stale_bytes == 0  # echoes of speech frames are not stale
    caller.receive(APP.encode_media(SID, frames[2]), 0.3)  # pre-barge-in audio after the clear
    assert barge.stale_bytes == 160


def test_without_echo_stale_audio_is_what_arrives_between_clear_and_end_of_speech() -> None:
    caller = make_caller(echo=False, barge_in_after_s=0.1, barge_in_ms=100)
    ingress_view(caller)
    for k in range(15):
        caller.tick(k * TICK)
        caller.receive(APP.encode_media(SID, b"\x55" * 160), k * TICK + 0.001)  # model talks
        if k == 6:
            caller.receive(APP.encode_clear(SID), 5 * TICK + 0.03)
    barge = caller.stats.barge_in
    assert barge is not None and barge.started_at == pytest.approx(5 * TICK)
    assert barge.ended_at == pytest.approx(9 * TICK)
    assert barge.stale_bytes == 2 * 160  # after the clear at 130 ms: audio at 141 and 161 ms


# --- tags, TwiML, audio files, report -------------------------------------------------------


def test_tags_are_found_across_any_message_boundaries_and_never_in_plain_audio() -> None:
    frames = [tag_frame(tone_ulaw(20) if k % 2 else b"\xff" * 160, k) for k in range(50)]
    stream, scanner, seen = b"".join(frames), TagScanner(), []
    for offset in range(0, len(stream), 7):
        seen += [seq for _, seq in scanner.feed(stream[offset : offset + 7])]
    assert seen == list(range(50))
    assert TagScanner().feed(tone_ulaw(10_000) + b"\xff" * 8000 + tone_ulaw(500, dbfs=-50)) == []


def test_twiml_connect_stream_and_busy() -> None:
    twiml = connect_stream_twiml("wss://voice.example.com/twilio/media", {"token": "a&b"})
    assert parse_voice_answer(twiml) == StreamAnswer(
        "wss://voice.example.com/twilio/media", {"token": "a&b"}
    )
    assert parse_voice_answer(busy_twiml("All lines are busy.")) == Rejected(
        verbs=("Say", "Hangup"), say="All lines are busy."
    )
    for bad in (
        "<Response><Connect>",
        "<Html/>",
        "<Response><Connect><Stream/></Connect></Response>",
    ):
        with pytest.raises(ProtocolError):
            parse_voice_answer(bad)
    public = "wss://voice.example.com/twilio/media"
    assert rebase_stream_url(public, "http://127.0.0.1:8080") == "ws://127.0.0.1:8080/twilio/media"


def test_wav_files_become_8khz_ulaw(tmp_path: Path) -> None:
    with wave.open(str(tmp_path / "stereo.wav"), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"\x00\x10" * 2 * 16000)  # 1 s of a constant level
    assert len(load_wav_ulaw(tmp_path / "stereo.wav")) == 8000
    ulaw = tone_ulaw(100)
    fmt = struct.pack("<HHIIHH", 7, 1, 8000, 8000, 1, 8)
    riff = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", 800)
    (tmp_path / "ulaw.wav").write_bytes(b"RIFF" + struct.pack("<I", len(riff) + 800) + riff + ulaw)
    assert load_wav_ulaw(tmp_path / "ulaw.wav") == ulaw  # passed through untouched


def test_the_histogram_png_is_a_valid_image(tmp_path: Path) -> None:
    histogram = Histogram.of([1.0, 2.0, 2.5, 3.0, 40.0], bins=10)
    assert sum(histogram.counts) == 5 and histogram.edges_ms[-1] == 50.0
    png = encode_png(render_histogram(histogram))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    offset, chunks = 8, {}
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        kind, data = png[offset + 4 : offset + 8], png[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", png[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + data)
        chunks[kind] = data
        offset += 12 + length
    width, height = struct.unpack(">II", chunks[b"IHDR"][:8])
    assert len(zlib.decompress(chunks[b"IDAT"])) == height * (1 + 3 * width)
    assert list(chunks) == [b"IHDR", b"IDAT", b"IEND"]
    write_histogram_png(tmp_path / "h.png", histogram, xlabel="ms")
    assert (tmp_path / "h.png").read_bytes()[:8] == png[:8]


def test_report_aggregates_calls() -> None:
    calls = (
        CallResult(0, "completed", twiml_ms=5.0, ws_open_ms=7.0, frames_sent=100, lost=1),
        CallResult(1, "rejected", twiml_ms=4.0),
        CallResult(2, "failed", error="TimeoutError"),
    )
    data = json.loads(LoadReport({"calls": 3}, 1.0, calls).to_json())
    assert data["calls"] | {"errors": None} == {
        "requested": 3, "completed": 1, "rejected": 1, "failed": 1, "hung_up_by_ingress": 0,
        "errors": None,
    }  # fmt: skip
    assert data["calls"]["errors"] == {"TimeoutError": 1}
    assert data["frames"]["loss_rate"] == 0.01
    assert data["setup_ms"]["twiml"]["count"] == 2
    assert summarize([None]) is None


def test_options_pick_exactly_the_barge_in_share_and_reject_nonsense() -> None:
    options = LoadOptions(calls=10, barge_in_rate=0.3, duration_s=5)
    assert sum(options.barges_in(i) for i in range(10)) == 3
    assert all(LoadOptions(calls=4, barge_in_rate=1.0).barges_in(i) for i in range(4))
    for bad in ({"calls": 0}, {"barge_in_rate": 1.5}, {"base_url": "ftp://x"}):
        with pytest.raises(UserError):
            LoadOptions(**bad)
    with pytest.raises(UserError, match="too short"):
        LoadOptions(duration_s=0.5, barge_in_rate=0.5)


def test_the_codecs_dtmf_is_what_twilio_sends_and_the_ingress_reads() -> None:
    from services.telephony.media_streams import DtmfReceived

    codec = TwilioCallerCodec(IDS)
    ingress = TwilioSerializer()
    ingress.parse(codec.connected())
    ingress.parse(codec.start({}))
    message = json.loads(codec.dtmf("#"))
    fixture = json.loads((FIXTURES / "dtmf.json").read_text())
    assert set(message) == set(fixture) and set(message["dtmf"]) == set(fixture["dtmf"])
    assert ingress.parse(codec.dtmf("#")) == DtmfReceived("#")
