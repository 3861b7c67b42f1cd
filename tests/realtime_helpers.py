"""Socket-free helpers for testing the Realtime protocol core."""

from __future__ import annotations

import json
from typing import Any

from services.realtime.transports.openai_base import OpenAIRealtimeBase
from tests.wire import validate_client_event


class RecordingTransport(OpenAIRealtimeBase):
    """The protocol core with its outgoing text collected instead of written to a socket.

    Every event sent is checked against the openai package's client event models.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sent: list[dict[str, Any]] = []
        self._status = "connected"

    def _send_text(self, text: str) -> None:
        event = json.loads(text)
        validate_client_event(event)
        self.sent.append(event)

    def feed(self, event: dict[str, Any]) -> None:
        self.receive_text(json.dumps(event))

    def sent_types(self) -> list[str]:
        return [e["type"] for e in self.sent]

    def take(self) -> list[dict[str, Any]]:
        out, self.sent = self.sent, []
        return out


def audio_delta(item_id: str, data_b64: str, response_id: str = "resp_1") -> dict[str, Any]:
    return {
        "type": "response.output_audio.delta",
        "event_id": "ev",
        "response_id": response_id,
        "item_id": item_id,
        "output_index": 0,
        "content_index": 0,
        "delta": data_b64,
    }


def response_created(response_id: str = "resp_1") -> dict[str, Any]:
    return {
        "type": "response.created",
        "event_id": "ev",
        "response": {"id": response_id, "object": "realtime.response", "status": "in_progress"},
    }


def response_done(response_id: str = "resp_1", status: str = "completed") -> dict[str, Any]:
    return {
        "type": "response.done",
        "event_id": "ev",
        "response": {
            "id": response_id,
            "object": "realtime.response",
            "status": status,
            "output": [],
        },
    }


def session_updated(interrupt_response: bool, fmt: str = "audio/pcmu") -> dict[str, Any]:
    return {
        "type": "session.updated",
        "event_id": "ev",
        "session": {
            "type": "realtime",
            "audio": {
                "input": {
                    "format": {"type": fmt},
                    "turn_detection": {
                        "type": "server_vad",
                        "interrupt_response": interrupt_response,
                    },
                },
                "output": {"format": {"type": fmt}},
            },
        },
    }
