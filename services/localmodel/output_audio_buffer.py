"""The server's output audio buffer of a WebRTC session, sans-I/O.

Over WebRTC the model's audio goes out on the media track, not as events
(reference/realtime-protocol.md, sections 4.5 and 7.3). :meth:`OutputAudioBuffer.route` takes
each event the engine emits and returns what goes on the ``oai-events`` channel instead:

* ``response.output_audio.delta`` is consumed: its audio (in the response's output format) is
  converted to 24 kHz PCM16 and queued on the :class:`~services.media.playout.Playout` the
  track reads, per item;
* ``output_audio_buffer.started`` goes out when the track hands out the first frame of a
  response's audio (:meth:`played`; the playout must report every frame, ``report_ms=20``), so
  a client labelling the track's audio by it labels it right even behind an earlier response;
* ``output_audio_buffer.stopped`` goes out once the response is done (after its
  ``response.done``) and the track has handed out all of its audio;
* ``output_audio_buffer.cleared`` goes out for each response whose audio was queued or playing
  when the buffer was emptied: by the client's ``output_audio_buffer.clear`` (:meth:`clear`) or
  by a VAD barge-in (a ``response.done`` cancelled for ``turn_detected``). Later audio of a
  cleared response is dropped. A clear with nothing queued sends nothing.

:meth:`clear` also says how much of each item the caller had been handed, for the engine to
truncate the item there (the server owns playback over WebRTC, section 5.2).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.media.playout import PCM24K, Playout
from services.media.vocabulary import Played

from .audio import PCM, AudioConverter, AudioFormat

__all__ = ["OutputAudioBuffer"]


@dataclass(slots=True)
class _Response:
    response_id: str
    converter: AudioConverter
    parts: set[tuple[str, int]] = field(default_factory=set)  # (item_id, content_index)
    queued_bytes: int = 0
    played_bytes: int = 0
    started: bool = False
    done: bool = False


class OutputAudioBuffer:
    def __init__(self, playout: Playout, new_id: Callable[[str], str]) -> None:
        self.playout = playout
        self._new_id = new_id
        self._formats: dict[str, AudioFormat] = {}  # response id → its output format
        self._responses: dict[str, _Response] = {}  # those with audio not yet stopped
        self._by_item: dict[str, _Response] = {}
        self._cleared: set[str] = set()  # responses whose later audio is dropped

    def route(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """What to send on the channel for one engine event, in order."""
        kind = event["type"]
        if kind == "response.output_audio.delta":
            self._queue(event)
            return []
        if kind == "response.created":
            response = event["response"]
            fmt = response.get("audio", {}).get("output", {}).get("format")
            self._formats[response["id"]] = AudioFormat.from_wire(fmt) if fmt else PCM
        elif kind == "response.output_audio.done":
            self.playout.done(event["item_id"], event["content_index"])
        elif kind == "response.done":
            return [event, *self._response_done(event["response"])]
        return [event]

    def played(self, played: list[Played]) -> list[dict[str, Any]]:
        """Account what the track handed out; the ``started``/``stopped`` events now due."""
        out: list[dict[str, Any]] = []
        for report in played:
            response = self._by_item.get(report.item_id)
            if response is None:
                continue
            if not response.started:
                response.started = True
                out.append(self._event("output_audio_buffer.started", response))
            response.played_bytes += round(report.ms * PCM24K.bytes_per_ms)
            out += self._stop_if_drained(response)
        return out

    def clear(self) -> tuple[list[dict[str, Any]], list[tuple[str, int, int]]]:
        """Empty the buffer: the ``cleared`` events, and (item_id, content_index, heard ms) of
        each item the caller had been handed part of."""
        cut, played = self.playout.interrupt()
        out = self.played(played)
        for response in list(self._responses.values()):
            if not response.done:
                self._cleared.add(response.response_id)  # until its response.done
            self._forget(response)
            out.append(self._event("output_audio_buffer.cleared", response))
        return out, list(cut.heard)

    # ----- helpers ------------------------------------------------------------------------

    def _queue(self, event: dict[str, Any]) -> None:
        response_id = event["response_id"]
        if response_id in self._cleared:
            return
        response = self._responses.get(response_id)
        if response is None:
            fmt = self._formats.get(response_id, PCM)
            response = _Response(response_id, AudioConverter(fmt, PCM))
            self._responses[response_id] = response
        item_id, content_index = event["item_id"], event["content_index"]
        response.parts.add((item_id, content_index))
        self._by_item[item_id] = response
        pcm = response.converter.feed(base64.b64decode(event["delta"]))
        response.queued_bytes += len(pcm)
        self.playout.push(item_id, content_index, pcm)

    def _response_done(self, wire: dict[str, Any]) -> list[dict[str, Any]]:
        self._formats.pop(wire["id"], None)
        self._cleared.discard(wire["id"])
        response = self._responses.get(wire["id"])
        if response is None:
            return []  # no audio (text, or a function call), or cleared already
        response.done = True
        for item_id, content_index in response.parts:
            self.playout.done(item_id, content_index)  # a cancelled response ends mid-item
        details = wire.get("status_details") or {}
        if wire.get("status") == "cancelled" and details.get("reason") == "turn_detected":
            return self.clear()[0]  # barge-in: the caller spoke over it
        return self._stop_if_drained(response)

    def _stop_if_drained(self, response: _Response) -> list[dict[str, Any]]:
        if not (response.done and response.started) or response.played_bytes < (
            response.queued_bytes
        ):
            return []
        self._forget(response)
        return [self._event("output_audio_buffer.stopped", response)]

    def _forget(self, response: _Response) -> None:
        del self._responses[response.response_id]
        for item_id, _ in response.parts:
            if self._by_item.get(item_id) is response:
                del self._by_item[item_id]

    def _event(self, kind: str, response: _Response) -> dict[str, Any]:
        return {
            "type": kind,
            "event_id": self._new_id("event"),
            "response_id": response.response_id,
        }
