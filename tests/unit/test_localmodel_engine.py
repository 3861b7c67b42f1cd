"""The local model's per-connection engine, driven with events and virtual time (no sockets).

Every event in and out goes through the ``wire`` validator (the official openai models).
"""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np
import pytest

from services.localmodel.audio import PCM, PCMU, AudioConverter, AudioFormat, encode, resample
from services.localmodel.conversation import Conversation, StoredItem
from services.localmodel.engine import RealtimeEngine
from services.localmodel.scenario import parse_scenario
from services.localmodel.speech import SpeechSynthesizer, tone_speech
from tests.wire import WireValidator

SCENARIO = parse_scenario(
    {
        "steps": [
            {"say": "Hello."},
            {"user": "Where is my order?",
             "tool": {"name": "lookup_order", "arguments": {"order_id": "A1234"}},
             "then": "Your order {output}."},
            {"say": "Bye now."},
        ]
    }
)  # fmt: skip
LOOKUP_TOOL = {"type": "function", "name": "lookup_order", "parameters": {"type": "object"}}
SPEED, CHUNK_MS = 10.0, 50
INTERVAL = CHUNK_MS / 1000 / SPEED


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def speech_bytes(text: str, fmt: AudioFormat = PCM) -> bytes:
    return encode(resample(tone_speech(text), 24000, fmt.rate), fmt)


def tone(ms: int, fmt: AudioFormat = PCM, amp: float = 0.3) -> bytes:
    t = np.arange(fmt.rate * ms // 1000) / fmt.rate
    return encode((np.sin(2 * np.pi * 220 * t) * amp * 32767).astype(np.int16), fmt)


def silence(ms: int, fmt: AudioFormat = PCM) -> bytes:
    return encode(np.zeros(fmt.rate * ms // 1000, np.int16), fmt)


class Harness:
    """An engine, a virtual clock, and every server event seen so far (validated)."""

    def __init__(self, wire: WireValidator, **options: Any) -> None:
        options.setdefault("scenario", SCENARIO)
        options.setdefault("speech", SpeechSynthesizer(None))
        self.wire = wire
        self.now = 0.0
        self.engine = RealtimeEngine(speed=SPEED, chunk_ms=CHUNK_MS, **options)
        self.log: list[tuple[float, dict[str, Any]]] = []
        self.drain()

    def drain(self) -> list[dict[str, Any]]:
        events = self.engine.take_events()
        for event in events:
            self.wire("server", event)
            self.log.append((self.now, event))
        return events

    def send(self, event: dict[str, Any], *, valid: bool = True) -> list[dict[str, Any]]:
        if valid:
            self.wire("client", event)
        self.engine.receive(event, self.now)
        return self.drain()

    def update(self, **session: Any) -> dict[str, Any]:
        (event,) = self.send({"type": "session.update", "session": {"type": "realtime", **session}})
        assert event["type"] == "session.updated", event
        return event

    def run(self, until: float | None = None) -> list[dict[str, Any]]:
        """Tick at every deadline (up to ``until``) and return what was emitted."""
        out: list[dict[str, Any]] = []
        while (deadline := self.engine.next_deadline()) is not None:
            if until is not None and deadline > until:
                break
            self.now = max(self.now, deadline)
            self.engine.tick(self.now)
            out += self.drain()
        return out

    def append(self, audio: bytes, chunk_ms: int = 20, fmt: AudioFormat = PCM) -> list[dict]:
        step = fmt.bytes_for_ms(chunk_ms)
        out: list[dict[str, Any]] = []
        for i in range(0, len(audio), step):
            out += self.send(
                {"type": "input_audio_buffer.append", "audio": b64(audio[i : i + step])}
            )
        return out


def types(events: list[dict[str, Any]]) -> list[str]:
    """Event types with runs of deltas collapsed, for asserting sequences."""
    out: list[str] = []
    for event in events:
        kind = event["type"]
        if kind == "response.output_audio_transcript.delta":
            continue  # interleaved with the audio deltas; asserted separately
        if kind.endswith(".delta") and out and out[-1] == kind + "*":
            continue
        out.append(kind + "*" if kind.endswith(".delta") else kind)
    return out


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


AUDIO_RESPONSE = [
    "response.created",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
    "response.output_audio.delta*",
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "conversation.item.done",
    "response.done",
]


@pytest.fixture
def h(wire: WireValidator) -> Harness:
    return Harness(wire)


def test_session_created_first(h: Harness) -> None:
    (first,) = [e for _, e in h.log]
    assert first["type"] == "session.created"
    assert first["session"]["id"].startswith("sess_")
    assert first["session"]["model"] == "gpt-realtime"


def test_greeting_is_a_paced_audio_response(h: Harness) -> None:
    events = h.send({"type": "response.create"}) + h.run()
    audio = speech_bytes("Hello.")
    assert types(events) == AUDIO_RESPONSE
    deltas = of_type(events, "response.output_audio.delta")
    assert b"".join(base64.b64decode(d["delta"]) for d in deltas) == audio
    assert len(deltas) == math.ceil(len(audio) / PCM.bytes_for_ms(CHUNK_MS))
    # Delta k leaves at k * chunk / speed: 10x real time, never slower.
    times = [t for t, e in h.log if e["type"] == "response.output_audio.delta"]
    assert times == pytest.approx([k * INTERVAL for k in range(len(deltas))])
    transcript = "".join(
        d["delta"] for d in of_type(events, "response.output_audio_transcript.delta")
    )
    assert transcript == "Hello."
    done = of_type(events, "response.done")[0]["response"]
    assert done["status"] == "completed"
    assert done["output"][0]["content"] == [{"type": "output_audio", "transcript": "Hello."}]
    usage = done["usage"]
    assert usage["output_token_details"]["audio_tokens"] == math.ceil(640 / 50)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_pcmu_output_deltas_are_mulaw_chunks(h: Harness) -> None:
    h.update(audio={"output": {"format": {"type": "audio/pcmu"}}})
    events = h.send({"type": "response.create"}) + h.run()
    deltas = [base64.b64decode(d["delta"]) for d in of_type(events, "response.output_audio.delta")]
    assert {len(d) for d in deltas[:-1]} == {CHUNK_MS * 8}
    assert b"".join(deltas) == speech_bytes("Hello.", PCMU)
    done = of_type(events, "response.done")[0]["response"]
    assert done["audio"]["output"]["format"] == {"type": "audio/pcmu"}


def test_text_modality(h: Harness) -> None:
    events = h.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
    events += h.run()
    assert types(events) == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_text.delta*",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    assert of_type(events, "response.output_text.done")[0]["text"] == "Hello."
    assert of_type(events, "response.content_part.added")[0]["part"] == {"type": "text", "text": ""}


def test_tool_step_then_output(h: Harness) -> None:
    h.update(tools=[LOOKUP_TOOL])
    h.send({"type": "response.create"})
    h.run()
    events = h.send({"type": "response.create"})
    assert types(events) == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.function_call_arguments.delta*",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    added = of_type(events, "response.output_item.added")[0]["item"]
    assert (added["type"], added["status"], added["arguments"]) == (
        "function_call",
        "in_progress",
        "",
    )
    assert added["call_id"].startswith("call_")
    args = of_type(events, "response.function_call_arguments.delta")
    assert "".join(a["delta"] for a in args) == '{"order_id":"A1234"}'
    final = of_type(events, "response.output_item.done")[0]["item"]
    assert (final["status"], final["arguments"]) == ("completed", '{"order_id":"A1234"}')
    assert of_type(events, "response.done")[0]["response"]["output"] == [final]

    output = {
        "type": "function_call_output",
        "call_id": added["call_id"],
        "output": '{"status": "has shipped"}',
    }
    created = h.send({"type": "conversation.item.create", "item": output})
    assert types(created) == ["conversation.item.added", "conversation.item.done"]
    events = h.send({"type": "response.create"}) + h.run()
    assert of_type(events, "response.output_audio_transcript.done")[0]["transcript"] == (
        "Your order has shipped."
    )


def test_hold_until_the_output_arrives(h: Harness) -> None:
    h.update(tools=[LOOKUP_TOOL])
    h.send({"type": "response.create"})
    h.run()
    call = of_type(h.send({"type": "response.create"}), "response.output_item.done")[0]["item"]
    events = h.send({"type": "response.create"}) + h.run()
    assert of_type(events, "response.output_audio_transcript.done")[0]["transcript"] == (
        "One moment, please."
    )
    output = {"type": "function_call_output", "call_id": call["call_id"], "output": "left"}
    h.send({"type": "conversation.item.create", "item": output})
    events = h.send({"type": "response.create"}) + h.run()
    assert of_type(events, "response.output_audio_transcript.done")[0]["transcript"] == (
        "Your order left."
    )


def test_tool_not_offered_says_unavailable(h: Harness) -> None:
    h.send({"type": "response.create"})
    h.run()
    events = h.send({"type": "response.create"}) + h.run()
    assert not of_type(events, "response.function_call_arguments.done")
    assert of_type(events, "response.output_audio_transcript.done")[0]["transcript"] == (
        "Your order unavailable."
    )


def test_voice_turn_with_server_vad(h: Harness) -> None:
    h.update(audio={"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}})
    h.send({"type": "response.create"})
    h.run()
    h.update(tools=[LOOKUP_TOOL])
    events = h.append(silence(400) + tone(600) + silence(700))
    started = of_type(events, "input_audio_buffer.speech_started")[0]
    stopped = of_type(events, "input_audio_buffer.speech_stopped")[0]
    committed = of_type(events, "input_audio_buffer.committed")[0]
    assert started["audio_start_ms"] == 100  # speech at 400 ms - 300 ms prefix padding
    assert stopped["audio_end_ms"] == 1500  # speech ends at 1000 ms + 500 ms silence
    assert started["item_id"] == stopped["item_id"] == committed["item_id"]
    user = of_type(events, "conversation.item.done")[0]["item"]
    assert user["id"] == committed["item_id"]
    assert user["content"] == [{"type": "input_audio", "transcript": None}]
    transcription = of_type(events, "conversation.item.input_audio_transcription.completed")[0]
    assert transcription["transcript"] == "Where is my order?"
    # create_response: the scripted tool call follows the turn at once.
    assert of_type(events, "response.done")[0]["response"]["output"][0]["name"] == "lookup_order"
    retrieved = h.send({"type": "conversation.item.retrieve", "item_id": user["id"]})[0]["item"]
    audio = base64.b64decode(retrieved["content"][0]["audio"])
    assert len(audio) == PCM.bytes_for_ms(1500 - 100)  # the turn: padding start to speech end
    assert retrieved["content"][0]["transcript"] == "Where is my order?"


def test_barge_in_cancels_the_response(h: Harness) -> None:
    h.send({"type": "response.create"})
    h.run(until=3 * INTERVAL)
    events = h.append(tone(100))
    assert types(events)[:2] == ["input_audio_buffer.speech_started", "response.output_audio.done"]
    done = of_type(events, "response.done")[0]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert done["output"][0]["status"] == "incomplete"
    assert h.engine.next_deadline() is None
    assert not of_type(h.run(), "response.output_audio.delta")


def test_no_barge_in_without_interrupt_response(h: Harness) -> None:
    h.update(
        audio={"input": {"turn_detection": {"type": "server_vad", "interrupt_response": False}}}
    )
    h.send({"type": "response.create"})
    events = h.append(tone(100))
    assert of_type(events, "input_audio_buffer.speech_started")
    assert not of_type(events, "response.done")
    assert of_type(h.run(), "response.done")[0]["response"]["status"] == "completed"


def test_manual_turns_without_vad(h: Harness) -> None:
    h.update(audio={"input": {"turn_detection": None}})
    events = h.append(tone(300) + silence(1000))
    assert events == []
    error = h.send({"type": "input_audio_buffer.clear"})
    assert types(error) == ["input_audio_buffer.cleared"]
    (empty,) = h.send({"type": "input_audio_buffer.commit", "event_id": "c1"})
    assert empty["error"]["code"] == "input_audio_buffer_commit_empty"
    assert empty["error"]["event_id"] == "c1"
    h.append(tone(200))
    events = h.send({"type": "input_audio_buffer.commit"})
    assert types(events) == [
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]  # a commit never creates a response by itself


def test_one_response_at_a_time_and_cancel(h: Harness) -> None:
    h.send({"type": "response.create"})
    (busy,) = h.send({"type": "response.create", "event_id": "again"})
    assert busy["error"]["code"] == "conversation_already_has_active_response"
    assert busy["error"]["event_id"] == "again"
    h.run(until=2 * INTERVAL)
    events = h.send({"type": "response.cancel"})
    assert types(events) == AUDIO_RESPONSE[5:]
    done = events[-1]["response"]
    assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    transcript = done["output"][0]["content"][0]["transcript"]
    assert transcript == of_type(events, "response.output_audio_transcript.done")[0]["transcript"]
    assert "Hello.".startswith(transcript)
    assert len(transcript) < len("Hello.")
    (idle,) = h.send({"type": "response.cancel"})
    assert idle["error"]["code"] == "response_cancel_not_active"


def test_truncate(h: Harness) -> None:
    events = h.send({"type": "response.create"}) + h.run()
    item_id = of_type(events, "response.output_item.done")[0]["item"]["id"]
    (too_long,) = h.send(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 5000,
        }
    )
    assert too_long["error"]["message"] == "Audio content of 640ms is already shorter than 5000ms"
    (ok,) = h.send(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 320,
        }
    )
    assert ok == {
        **ok,
        "type": "conversation.item.truncated",
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": 320,
    }
    (retrieved,) = h.send({"type": "conversation.item.retrieve", "item_id": item_id})
    part = retrieved["item"]["content"][0]
    assert len(base64.b64decode(part["audio"])) == 320 * 48
    assert part["transcript"] == "Hel"  # half the audio, half the transcript


def test_items_create_insert_retrieve_delete(h: Harness) -> None:
    def create(text: str, **extra: Any) -> list[dict[str, Any]]:
        item = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        }
        return h.send({"type": "conversation.item.create", "item": item, **extra})

    first = create("one")[0]
    assert first["previous_item_id"] is None
    second = create("two")[1]
    assert second["previous_item_id"] == first["item"]["id"]
    root = create("zero", previous_item_id="root")[0]
    assert root["previous_item_id"] is None
    (missing,) = create("x", previous_item_id="item_nope")
    assert missing["error"]["code"] == "item_not_found"
    assert missing["error"]["param"] == "previous_item_id"
    (deleted,) = h.send({"type": "conversation.item.delete", "item_id": root["item"]["id"]})
    assert deleted["type"] == "conversation.item.deleted"
    (gone,) = h.send({"type": "conversation.item.retrieve", "item_id": root["item"]["id"]})
    assert gone["error"]["code"] == "item_not_found"
    audio_item = {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_audio", "transcript": "hi"}],
    }
    (refused,) = h.send({"type": "conversation.item.create", "item": audio_item})
    assert refused["error"]["param"] == "item.content[0].type"


def test_out_of_band_response(h: Harness) -> None:
    events = (
        h.send(
            {
                "type": "response.create",
                "response": {
                    "conversation": "none",
                    "metadata": {"topic": "summary"},
                    "output_modalities": ["text"],
                },
            }
        )
        + h.run()
    )
    assert not [e for e in events if e["type"].startswith("conversation.")]
    done = of_type(events, "response.done")[0]["response"]
    assert (done["conversation_id"], done["metadata"]) == (None, {"topic": "summary"})
    # The script did not advance: the next in-band response is still the greeting.
    events = h.send({"type": "response.create"}) + h.run()
    assert of_type(events, "response.output_audio_transcript.done")[0]["transcript"] == "Hello."


def test_echo_mode_streams_appends_back(wire: WireValidator) -> None:
    h = Harness(wire, mode="echo")
    h.update(audio={"input": {"format": {"type": "audio/pcmu"}}})
    audio = silence(200, PCMU) + tone(400, PCMU) + silence(600, PCMU)
    events = h.append(audio, fmt=PCMU)
    assert types(events)[:4] == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
    ]
    first = of_type(events, "response.created")[0]["response"]["id"]
    deltas = [
        d for d in of_type(events, "response.output_audio.delta") if d["response_id"] == first
    ]
    echoed = b"".join(base64.b64decode(d["delta"]) for d in deltas)
    # pcmu in, pcm out: the same audio, converted, in order, up to the end of the turn
    # (speech ends at 600 ms, + 500 ms silence); the next append opens the next echo response.
    assert len(echoed) == PCM.bytes_for_ms(1100)
    converter = AudioConverter(PCMU, PCM)
    step = PCMU.bytes_for_ms(20)
    expected = [
        converter.feed(audio[i : i + step]) for i in range(0, PCMU.bytes_for_ms(1100), step)
    ]
    assert echoed == b"".join(expected)
    assert len(of_type(events, "response.created")) == 2
    assert of_type(events, "input_audio_buffer.speech_started")  # VAD runs, but never cancels
    assert of_type(events, "response.done")[0]["response"]["status"] == "completed"
    assert types(events).index("input_audio_buffer.committed") < types(events).index(
        "response.done"
    )


def test_echo_mode_answers_text_with_text(wire: WireValidator) -> None:
    h = Harness(wire, mode="echo")
    item = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "ping pong"}],
    }
    h.send({"type": "conversation.item.create", "item": item})
    events = h.send({"type": "response.create"}) + h.run()
    assert of_type(events, "response.output_audio_transcript.done")[0]["transcript"] == "ping pong"


BAD_FRAMES: list[tuple[str | bytes, str, str | None]] = [
    ("{not json", "invalid_json", None),
    ("[1, 2]", "invalid_event", None),
    ('{"event_id": "e"}', "missing_required_parameter", "type"),
    ('{"type": "response.audio.delta"}', "invalid_value", "type"),
    ('{"type": "input_audio_buffer.append"}', "missing_required_parameter", "audio"),
    ('{"type": "input_audio_buffer.append", "audio": 5}', "invalid_type", "audio"),
    ('{"type": "input_audio_buffer.append", "audio": "***"}', "invalid_value", "audio"),
    ('{"type": "input_audio_buffer.commit", "extra": 1}', "unknown_parameter", "extra"),
    ('{"type": "conversation.item.truncate", "item_id": "x", "content_index": 0}',
     "missing_required_parameter", "audio_end_ms"),
    ('{"type": "session.update"}', "missing_required_parameter", "session"),
    ('{"type": "response.create", "response": {"conversation": "other"}}', "invalid_value",
     "response.conversation"),
    ('{"type": "output_audio_buffer.clear"}', "unsupported_event", "type"),
    (b"\x00\x01", "binary_frame_unsupported", None),
    ("x" * 5000, "message_too_large", None),
]  # fmt: skip


FRAME_LEVEL = {"invalid_json", "invalid_event", "binary_frame_unsupported", "message_too_large"}


@pytest.mark.parametrize(("frame", "code", "param"), BAD_FRAMES)
def test_bad_frames_become_errors_and_the_engine_goes_on(
    wire: WireValidator, frame: str | bytes, code: str, param: str | None
) -> None:
    h = Harness(wire, max_message_bytes=4096)
    parsed = h.engine.receive_frame(frame, 0.0)
    # Only JSON objects are handed back (for the observer); anything else is not an event.
    assert (parsed is None) == (code in FRAME_LEVEL)
    (error,) = h.drain()
    assert error["type"] == "error"
    assert (error["error"]["code"], error["error"]["param"]) == (code, param)
    assert error["error"]["type"] == "invalid_request_error"
    assert len(error["error"]["message"]) < 700  # payloads are never echoed back
    assert types(h.send({"type": "input_audio_buffer.clear"})) == ["input_audio_buffer.cleared"]


def test_internal_errors_cost_one_event(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(h.engine.conversation, "truncate", broken)
    (error,) = h.send(
        {
            "type": "conversation.item.truncate",
            "event_id": "t1",
            "item_id": "x",
            "content_index": 0,
            "audio_end_ms": 0,
        }
    )
    assert error["error"]["type"] == "server_error"
    assert error["error"]["event_id"] == "t1"
    assert types(h.send({"type": "input_audio_buffer.clear"})) == ["input_audio_buffer.cleared"]


def test_unknown_call_id_means_no_session(wire: WireValidator) -> None:
    h = Harness(wire, unknown_call_id="rtc_missing")
    ((_, first),) = h.log
    assert first["error"]["code"] == "call_id_not_found"
    (error,) = h.send({"type": "response.create", "event_id": "r1"})
    assert (error["error"]["code"], error["error"]["event_id"]) == ("session_not_found", "r1")


class SlowSpeech(SpeechSynthesizer):
    """A synthesizer whose audio is "not rendered yet" until :meth:`finish` is called."""

    def __init__(self) -> None:
        super().__init__(None)
        self.ready = False

    def lookup(self, text: str, voice: str) -> np.ndarray | None:
        return super().lookup(text, voice) if self.ready else None


def test_response_waits_for_slow_speech(wire: WireValidator) -> None:
    speech = SlowSpeech()
    h = Harness(wire, speech=speech)
    events = h.send({"type": "response.create"})
    assert types(events)[-1] == "response.content_part.added"
    assert h.engine.speech_requests() == [("Hello.", "marin")]
    assert h.engine.next_deadline() is None  # nothing to pace until the audio exists
    speech.ready = True
    h.now = 1.0
    h.engine.tick(h.now)
    events = h.drain() + h.run()
    assert types(events) == AUDIO_RESPONSE[4:]
    assert next(t for t, e in h.log if e["type"] == "response.output_audio.delta") == 1.0


def test_conversation_keeps_only_recent_audio() -> None:
    conversation = Conversation("conv_1")
    six_minutes = bytes(PCMU.bytes_for_ms(6 * 60 * 1000))
    for n in range(3):
        conversation.add(StoredItem.user_audio(f"item_{n}", six_minutes, PCMU))
    kept = {item.id: bool(item.audio) for item in conversation}
    assert kept == {"item_0": False, "item_1": False, "item_2": True}
    assert conversation.get("item_0").item["content"][0]["type"] == "input_audio"
