"""The input audio buffer of one session, on the session's audio clock, feeding the VAD.

The clock counts milliseconds of all audio appended during the session: clearing or committing
the buffer does not reset it, because ``audio_start_ms``/``audio_end_ms`` are measured on it
(reference/realtime-protocol.md, section 4.2). Audio reaches the VAD in 10 ms frames whatever the
size of the appends, so events land on 10 ms boundaries.

While a VAD listens and hears no speech, audio older than ``prefix_padding_ms`` can never belong
to a turn and is dropped, so an open line of silence (a phone call) does not grow the buffer.
"""

from __future__ import annotations

from typing import Final

from .audio import AudioFormat, convert
from .energy import frame_rms
from .vad import EnergyVad, VadEvent

__all__ = ["InputAudioBuffer"]

FRAME_MS: Final = 10


class InputAudioBuffer:
    def __init__(self, fmt: AudioFormat, vad: EnergyVad | None) -> None:
        self.fmt = fmt
        self.vad = vad
        self.clock_ms = 0.0  # end of all audio appended so far
        self._data = bytearray()
        self._start_ms = 0.0  # session-clock position of _data[0]
        self._unframed = bytearray()  # audio not yet seen by the VAD (less than one frame)
        self._frame_bytes = fmt.bytes_for_ms(FRAME_MS)

    @property
    def duration_ms(self) -> float:
        return self.fmt.duration_ms(len(self._data))

    def append(self, chunk: bytes) -> list[tuple[VadEvent, float]]:
        """Add audio; returns VAD events, each with the clock time at which it was detected."""
        vad = self.vad
        if vad is not None and not vad.in_speech:
            # Safe only here: the caller has acted on the events of earlier appends. A turn
            # starting in this append reaches back at most its padding plus a partial frame.
            self._drop_before(self.clock_ms - vad.prefix_padding_ms - FRAME_MS)
        self._data += chunk
        self.clock_ms += self.fmt.duration_ms(len(chunk))
        if vad is None:
            return []
        # Appends of whole frames (every telephony frame) are framed in place, without copies.
        pending = bytes(self._unframed + chunk) if self._unframed else chunk
        whole = len(pending) - len(pending) % self._frame_bytes
        frame_start = self.clock_ms - self.fmt.duration_ms(len(pending))
        events: list[tuple[VadEvent, float]] = []
        framed = pending if whole == len(pending) else pending[:whole]
        for rms in frame_rms(framed, self.fmt, self._frame_bytes):
            event = vad.feed_rms(rms, frame_start, FRAME_MS)
            if event is not None:
                events.append((event, frame_start + FRAME_MS))
            frame_start += FRAME_MS
        if whole == len(pending):
            self._unframed.clear()
        else:
            self._unframed = bytearray(pending[whole:])
        return events

    def take(self, start_ms: float | None = None, end_ms: float | None = None) -> bytes:
        """Remove and return the audio between two clock times (default: all of it).

        Audio before ``end_ms`` leaves the buffer; audio before ``start_ms`` is dropped with it
        (a VAD turn keeps only its own speech plus the prefix padding).
        """
        end = len(self._data) if end_ms is None else self._offset(end_ms)
        start = 0 if start_ms is None else min(self._offset(start_ms), end)
        taken = bytes(self._data[start:end])
        del self._data[:end]
        self._start_ms += self.fmt.duration_ms(end)
        return taken

    def clear(self) -> None:
        self.take()
        self._unframed.clear()
        if self.vad is not None:
            self.vad.reset()

    def set_vad(self, vad: EnergyVad | None) -> None:
        self.vad = vad
        self._unframed.clear()

    def set_format(self, fmt: AudioFormat) -> None:
        """Re-encode what is buffered so a format change mid-turn loses no audio."""
        if fmt == self.fmt:
            return
        self._data = bytearray(convert(bytes(self._data), self.fmt, fmt))
        self._unframed = bytearray(convert(bytes(self._unframed), self.fmt, fmt))
        self.fmt = fmt
        self._frame_bytes = fmt.bytes_for_ms(FRAME_MS)

    def _drop_before(self, clock_ms: float) -> None:
        # Drop in whole 10 ms frames only when a second has piled up, to keep appends cheap.
        if clock_ms - self._start_ms >= 1000:
            start = clock_ms - (clock_ms - self._start_ms) % FRAME_MS
            self.take(None, start)

    def _offset(self, clock_ms: float) -> int:
        offset = self.fmt.bytes_for_ms(max(0.0, clock_ms - self._start_ms))
        return min(offset, len(self._data))
