"""What a simulated caller says, and when: the script's opening, then a barge-in over the
model's audio, as 20 ms frames of its utterance. Shared by every simulated caller (Twilio's
media stream, SIP/RTP), which only put the frames on their wire. Sans-I/O."""

from __future__ import annotations

from services.loadgen.audio import FRAME_BYTES, FRAME_MS
from services.loadgen.measurements import CallStats
from services.loadgen.script import CallerScript

_FRAME_S = FRAME_MS / 1000


class Voice:
    def __init__(self, script: CallerScript, stats: CallStats) -> None:
        self.script = script
        self.stats = stats
        self._at = 0  # read position in script.speech
        self._frames_left = 0
        self.burst_end = 0  # the first frame after the barge-in's speech burst

    def speaking(self, index: int, now: float, model_playing: bool) -> bool:
        """Whether frame ``index`` is speech: the opening, then, once ``barge_in.after_s`` has
        passed, a burst of ``barge_in_ms`` as soon as model audio plays (only speech over the
        model's audio is an interruption; until the model talks, the caller waits)."""
        if index * FRAME_MS < self.script.opening_ms:
            return True
        barge = self.stats.barge_in
        if barge is not None and barge.started_at is None:
            if index * _FRAME_S >= barge.after_s and model_playing:
                barge.started_at = now
                barge.first_sequence = index
                self._frames_left = max(1, self.script.barge_in_ms // FRAME_MS)
                self.burst_end = index + self._frames_left
                self._at = 0  # say the utterance again from its start
        if self._frames_left == 0:
            return False
        self._frames_left -= 1
        if self._frames_left == 0 and barge is not None:
            barge.ended_at = now
        return True

    def frame(self) -> bytes:
        """The utterance's next 20 ms (from its start again once it ran out)."""
        speech = self.script.speech
        if self._at + FRAME_BYTES > len(speech):
            self._at = 0
        frame = speech[self._at : self._at + FRAME_BYTES]
        self._at += FRAME_BYTES
        self.stats.speech_frames_sent += 1
        return frame
