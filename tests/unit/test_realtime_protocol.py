"""The transport's protocol core, without sockets: sequencing, barge-in, tool calls, bad input."""

from __future__ import annotations

import base64

from services.errors import ProviderError, RealtimeProtocolError
from services.realtime.items import ContentPart, MessageItem
from services.realtime.playback import PlaybackTracker, WallClockPlayback
from services.realtime.transports.base import TransportToolCall
from tests.realtime_helpers import (
    RecordingTransport,
    audio_delta,
    response_created,
    response_done,
    session_updated,
)
from tests.virtual_time import FakeClock

MS_100_PCMU = base64.b64encode(b"\xff" * 800).decode()  # 100 ms of μ-law


def speech_started() -> dict:
    return {
        "type": "input_audio_buffer.speech_started",
        "event_id": "ev",
        "audio_start_ms": 500,
        "item_id": "user_2",
    }


def test_response_create_waits_for_the_active_response() -> None:
    t = RecordingTransport()
    t.request_response()
    first = t.take()
    assert [e["type"] for e in first] == ["response.create"]
    t.feed(response_created())
    t.request_response()
    t.request_response()  # a second plain request while one waits is the same request
    assert t.take() == []
    t.feed(response_done())
    queued = t.take()
    assert [e["type"] for e in queued] == ["response.create"]
    assert queued[0]["event_id"] != first[0]["event_id"]


def test_error_naming_the_create_releases_the_sequencer() -> None:
    t = RecordingTransport()
    errors = []
    t.on("error", errors.append)
    t.request_response()
    create_id = t.take()[0]["event_id"]
    t.request_response({"instructions": "again"})
    assert t.take() == []  # first still in flight
    t.feed(
        {
            "type": "error",
            "event_id": "ev",
            "error": {"type": "invalid_request_error", "message": "bad", "event_id": create_id},
        }
    )
    sent = t.take()
    assert sent[0]["response"] == {"instructions": "again"}
    assert isinstance(errors[0].error, ProviderError)
    assert errors[0].error.retryable is False


def test_send_event_routes_response_create_through_the_sequencer() -> None:
    t = RecordingTransport()
    t.feed(response_created())
    t.send_event({"type": "response.create", "response": {"instructions": "x"}})
    assert t.take() == []
    t.feed(response_done())
    assert t.take()[0]["response"] == {"instructions": "x"}


def barge_in_setup(interrupt_response: bool, tracker: PlaybackTracker | None = None):
    t = RecordingTransport(playback=tracker)
    t.feed(session_updated(interrupt_response))
    t.feed(response_created())
    for _ in range(5):  # 500 ms received
        t.feed(audio_delta("item_a", MS_100_PCMU))
    return t


def test_barge_in_truncates_at_reported_playback_and_lets_server_cancel() -> None:
    tracker = PlaybackTracker(bytes_per_ms=8)
    t = barge_in_setup(interrupt_response=True, tracker=tracker)
    interrupted = []
    t.on("audio_interrupted", lambda: interrupted.append(True))
    tracker.on_play_ms("item_a", 0, 180)
    tracker.on_play_bytes("item_a", 0, 8 * 57)  # 237 ms in all
    t.feed(speech_started())
    sent = t.take()
    # The server cancels on its own (interrupt_response), so no response.cancel from us.
    assert [e["type"] for e in sent] == ["conversation.item.truncate"]
    assert sent[0] == {
        "type": "conversation.item.truncate",
        "item_id": "item_a",
        "content_index": 0,
        "audio_end_ms": 237,
    }
    assert interrupted == [True]


def test_barge_in_cancels_itself_when_the_server_does_not() -> None:
    tracker = PlaybackTracker(bytes_per_ms=8)
    t = barge_in_setup(interrupt_response=False, tracker=tracker)
    tracker.on_play_ms("item_a", 0, 100)
    t.feed(speech_started())
    assert t.sent_types() == ["response.cancel", "conversation.item.truncate"]


def test_truncate_never_exceeds_received_audio() -> None:
    tracker = PlaybackTracker(bytes_per_ms=8)
    t = barge_in_setup(interrupt_response=True, tracker=tracker)
    tracker.on_play_ms("item_a", 0, 9000)
    t.interrupt()
    truncate = next(e for e in t.take() if e["type"] == "conversation.item.truncate")
    assert truncate["audio_end_ms"] == 500


def test_deferred_barge_in_truncates_at_the_figure_the_player_reports() -> None:
    tracker = PlaybackTracker(bytes_per_ms=8)
    t = barge_in_setup(interrupt_response=True, tracker=tracker)  # item_a: 500 ms received
    t.feed(audio_delta("item_b", MS_100_PCMU))  # queued behind item_a
    t.defer_truncation = True
    interrupted = []
    t.on("audio_interrupted", lambda: interrupted.append(True))
    tracker.on_play_ms("item_a", 0, 200)  # what the acks that reached us say
    t.feed(speech_started())
    # Playback stops at once (the ingress clears); the truncate waits for the player's figure.
    assert interrupted == [True] and t.take() == [] and t.interruption_pending
    t.complete_interruption([("item_a", 0, 260), ("item_b", 0, 0)])
    truncates = [(e["item_id"], e["audio_end_ms"]) for e in t.take()]
    assert truncates == [("item_a", 260), ("item_b", 0)]
    assert not t.interruption_pending
    t.complete_interruption([("item_a", 0, 300)])  # a late second answer changes nothing
    assert t.take() == []


def test_deferred_barge_in_never_goes_back_or_past_the_received_audio() -> None:
    tracker = PlaybackTracker(bytes_per_ms=8)
    t = barge_in_setup(interrupt_response=True, tracker=tracker)
    t.defer_truncation = True
    tracker.on_play_ms("item_a", 0, 200)
    t.feed(speech_started())
    t.complete_interruption([("item_a", 0, 9000)])
    assert [e["audio_end_ms"] for e in t.take()] == [500]  # only 500 ms were received
    tracker2 = PlaybackTracker(bytes_per_ms=8)
    t2 = barge_in_setup(interrupt_response=True, tracker=tracker2)
    t2.defer_truncation = True
    tracker2.on_play_ms("item_a", 0, 200)
    t2.feed(speech_started())
    t2.complete_interruption([("item_a", 0, 120)])  # older than what we know: ours stands
    assert [e["audio_end_ms"] for e in t2.take()] == [200]


def test_deferred_barge_in_without_an_answer_uses_the_tracker() -> None:
    tracker = PlaybackTracker(bytes_per_ms=8)
    t = barge_in_setup(interrupt_response=True, tracker=tracker)
    t.defer_truncation = True
    tracker.on_play_ms("item_a", 0, 140)
    t.interrupt()
    assert [e["type"] for e in t.take()] == ["response.cancel"]  # the truncate waits
    t.complete_interruption(None)
    assert [(e["item_id"], e["audio_end_ms"]) for e in t.take()] == [("item_a", 140)]


def test_wall_clock_fallback_uses_time_since_first_delta() -> None:
    clock = FakeClock()
    t = RecordingTransport(playback=WallClockPlayback(clock))
    t.feed(session_updated(True))
    t.feed(response_created())
    t.feed(audio_delta("item_a", MS_100_PCMU))
    clock.advance(0.050)
    t.feed(audio_delta("item_a", MS_100_PCMU))
    clock.advance(0.0301)
    t.feed(speech_started())
    assert t.take()[0]["audio_end_ms"] == 80


def test_no_interruption_once_everything_was_heard() -> None:
    clock = FakeClock()
    t = RecordingTransport(playback=WallClockPlayback(clock))
    t.feed(session_updated(True))
    t.feed(response_created())
    t.feed(audio_delta("item_a", MS_100_PCMU))
    t.feed(response_done())
    clock.advance(5)
    interrupted = []
    t.on("audio_interrupted", lambda: interrupted.append(True))
    t.feed(speech_started())
    assert t.take() == [] and interrupted == []


def test_function_call_dispatched_once_when_item_completes() -> None:
    t = RecordingTransport()
    calls: list[TransportToolCall] = []
    t.on("function_call", calls.append)
    item = {
        "id": "item_f",
        "type": "function_call",
        "status": "in_progress",
        "call_id": "call_9",
        "name": "lookup_order",
        "arguments": "",
    }
    added = {
        "type": "response.output_item.added",
        "event_id": "e",
        "response_id": "r",
        "output_index": 0,
    }
    t.feed({**added, "item": item})
    assert calls == []
    done = {**added, "type": "response.output_item.done"}
    completed = {**item, "status": "completed", "arguments": '{"order_id":"A1"}'}
    t.feed({**done, "item": completed})
    t.feed({**done, "item": completed})  # a repeat never runs the tool twice
    assert calls == [
        TransportToolCall("item_f", "call_9", "lookup_order", '{"order_id":"A1"}', "r")
    ]


def test_bad_frames_become_errors_and_raw_events_reach_star() -> None:
    t = RecordingTransport()
    errors, raw = [], []
    t.on("error", errors.append)
    t.on("*", raw.append)
    t.receive_text("{not json")
    t.receive_text(b"\x00binary")
    t.feed({"type": "input_audio_buffer.speech_started", "event_id": "e"})
    t.feed({"type": "response.future_event", "event_id": "e", "n": 1})
    assert len(errors) == 3
    assert all(isinstance(e.error, RealtimeProtocolError) for e in errors)
    assert "audio_start_ms" in str(errors[2].error)
    assert [r["type"] for r in raw] == [
        "input_audio_buffer.speech_started",
        "response.future_event",
    ]


def test_mute_drops_audio_and_commit_is_sent() -> None:
    t = RecordingTransport()
    t.mute(True)
    t.send_audio(b"\x01\x02")
    assert t.take() == []
    t.mute(False)
    t.send_audio(b"\x01\x02", commit=True)
    sent = t.take()
    assert sent == [
        {"type": "input_audio_buffer.append", "audio": "AQI="},
        {"type": "input_audio_buffer.commit"},
    ]


def test_reset_history_deletes_changed_and_creates_new_items() -> None:
    t = RecordingTransport()
    keep = MessageItem("a", "user", [ContentPart("input_text", text="hi")])
    old_b = MessageItem("b", "user", [ContentPart("input_text", text="old")])
    new_b = MessageItem("b", "user", [ContentPart("input_text", text="new")])
    gone = MessageItem("c", "user", [ContentPart("input_text", text="bye")])
    added = MessageItem("d", "system", [ContentPart("input_text", text="note")])
    t.reset_history([keep, old_b, gone], [keep, new_b, added])
    sent = t.take()
    assert [(e["type"], e.get("item_id") or e["item"]["id"]) for e in sent] == [
        ("conversation.item.delete", "b"),
        ("conversation.item.delete", "c"),
        ("conversation.item.create", "b"),
        ("conversation.item.create", "d"),
    ]
    assert sent[2]["previous_item_id"] == "a" and sent[3]["previous_item_id"] == "b"


def test_output_format_from_session_sets_audio_duration() -> None:
    tracker = PlaybackTracker(bytes_per_ms=48)
    t = RecordingTransport(playback=tracker)
    t.feed(session_updated(True, fmt="audio/pcm"))
    t.feed(response_created())
    # 4800 bytes of 24 kHz PCM16 is 100 ms, not 600 ms as it would be in μ-law.
    t.feed(audio_delta("item_a", base64.b64encode(b"\x00" * 4800).decode()))
    tracker.on_play_ms("item_a", 0, 400)
    t.interrupt()
    truncate = next(e for e in t.take() if e["type"] == "conversation.item.truncate")
    assert truncate["audio_end_ms"] == 100


def test_items_queued_behind_the_heard_one_are_truncated_at_zero() -> None:
    tracker = PlaybackTracker(bytes_per_ms=8)
    t = barge_in_setup(interrupt_response=True, tracker=tracker)  # item_a: 500 ms received
    t.feed(audio_delta("item_b", MS_100_PCMU))  # queued at the listener behind item_a
    tracker.on_play_ms("item_a", 0, 120)
    t.feed(speech_started())
    truncates = [(e["item_id"], e["audio_end_ms"]) for e in t.take()]
    assert truncates == [("item_a", 120), ("item_b", 0)]


def test_nothing_reported_heard_yet_truncates_what_was_received_at_zero() -> None:
    t = barge_in_setup(interrupt_response=True, tracker=PlaybackTracker(bytes_per_ms=8))
    t.feed(speech_started())
    assert [(e["item_id"], e["audio_end_ms"]) for e in t.take()] == [("item_a", 0)]


def test_a_fully_heard_item_with_another_queued_truncates_only_the_queued_one() -> None:
    tracker = PlaybackTracker(bytes_per_ms=8)
    t = barge_in_setup(interrupt_response=True, tracker=tracker)
    t.feed(audio_delta("item_b", MS_100_PCMU))
    t.feed(response_done())
    tracker.on_play_ms("item_a", 0, 500)
    t.feed(speech_started())
    assert [(e["item_id"], e["audio_end_ms"]) for e in t.take()] == [("item_b", 0)]
