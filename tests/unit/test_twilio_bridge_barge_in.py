"""The Twilio bridge at a barge-in, without sockets: ``clear`` goes to Twilio and the session is
told exactly what the caller had acknowledged through marks at that moment."""

from __future__ import annotations

import json

from services.gateway.twilio_bridge import ToSession, TwilioBridge
from services.media.vocabulary import PlayAudio, PlaybackCut, Played

CALL = "CA" + "1" * 32
STREAM = "MZ" + "2" * 32


def started() -> TwilioBridge:
    bridge = TwilioBridge(None)
    start = {
        "event": "start",
        "streamSid": STREAM,
        "start": {
            "streamSid": STREAM,
            "accountSid": "AC" + "0" * 32,
            "callSid": CALL,
            "tracks": ["inbound"],
            "customParameters": {},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }
    bridge.receive(json.dumps(start))
    return bridge


def test_clear_reports_the_acknowledged_playback_to_the_session() -> None:
    bridge = started()
    frames = bridge.play(PlayAudio(CALL, b"\xff" * 8 * 200, "item_a", 0))
    marks = [json.loads(f)["mark"]["name"] for f in frames if json.loads(f)["event"] == "mark"]
    assert len(marks) == 10  # one per 20 ms frame
    played = []
    for name in marks[:3]:  # Twilio played 60 ms and echoed those marks
        echo = {"event": "mark", "streamSid": STREAM, "mark": {"name": name}}
        played += [a.message for a in bridge.receive(json.dumps(echo)) if isinstance(a, ToSession)]
    assert sum(p.ms for p in played if isinstance(p, Played)) == 60
    clear, to_session = bridge.interrupt()
    assert clear is not None and json.loads(clear)["event"] == "clear"
    # No slack on top: the session truncates at what the marks acknowledged.
    assert to_session == PlaybackCut((("item_a", 0, 60),))
    # The marks Twilio echoes for the cleared audio are stale: nothing more reaches the session.
    for name in marks[3:]:
        echo = {"event": "mark", "streamSid": STREAM, "mark": {"name": name}}
        assert not any(isinstance(a, ToSession) for a in bridge.receive(json.dumps(echo)))


def test_clear_with_nothing_playing_sends_no_clear_and_an_empty_cut() -> None:
    clear, to_session = started().interrupt()
    assert clear is None and to_session == PlaybackCut(())
