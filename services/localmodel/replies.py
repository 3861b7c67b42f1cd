"""What the local model answers: the scenario's next step (scripted mode) or the user back (echo).

Both are pure decisions over the conversation; responses.py turns a :data:`Reply` into events.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .audio import AudioFormat
from .conversation import StoredItem
from .scenario import Scenario, Step, output_text

__all__ = ["CallTool", "Replay", "Reply", "Say", "ScriptPlayer", "echo_reply"]

UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class Say:
    text: str


@dataclass(frozen=True)
class CallTool:
    name: str
    arguments: str  # JSON text, as the wire carries it


@dataclass(frozen=True)
class Replay:
    """Play recorded user audio back (echo mode's answer to a committed audio turn)."""

    audio: bytes
    fmt: AudioFormat
    transcript: str


Reply = Say | CallTool | Replay


class ScriptPlayer:
    """Plays a scenario, one step per response (the rules are in scenario.py's docstring)."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.index = 0
        self._pending: tuple[str, Step] | None = None  # (call_id, step) awaiting its output
        self._outputs: dict[str, str] = {}

    def user_transcript(self) -> str | None:
        """What the caller is "heard" saying before the next response, if the script says."""
        if self._pending is not None:
            return None
        return self.scenario.step(self.index).user

    def note_output(self, call_id: str, output: str) -> None:
        self._outputs[call_id] = output

    def reply(self, tools: Iterable[str], *, out_of_band: bool = False) -> Reply:
        """The next reply; advances the script unless the response is out of band."""
        if out_of_band:
            return Say(self.scenario.fallback.say or "")
        if self._pending is not None:
            call_id, step = self._pending
            if call_id not in self._outputs:
                return Say(self.scenario.hold)
            self._pending = None
            return Say(step.then_text(output_text(self._outputs.pop(call_id))))
        step = self.scenario.step(self.index)
        self.index += 1
        if step.tool is None:
            return Say(step.say or "")
        if step.tool.name not in set(tools):
            return Say(step.then_text(UNAVAILABLE))
        return CallTool(step.tool.name, step.tool.arguments_json)

    def call_started(self, call_id: str) -> None:
        """Remember the call the last :class:`CallTool` reply made (its id is the engine's)."""
        self._pending = (call_id, self.scenario.step(self.index - 1))


def echo_reply(items: Iterable[StoredItem]) -> Reply:
    """Echo mode: say the last user message's text, or replay its audio; else say nothing."""
    last_user = None
    for item in items:
        if item.item.get("type") == "message" and item.item.get("role") == "user":
            last_user = item
    if last_user is None:
        return Say("")
    texts = [p["text"] for p in last_user.item["content"] if p["type"] == "input_text"]
    if texts:
        return Say(" ".join(texts))
    for index, audio in last_user.audio.items():
        transcript = last_user.item["content"][index].get("transcript") or ""
        return Replay(audio, last_user.formats[index], transcript)
    return Say("")
