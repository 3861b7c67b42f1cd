"""Sequence tags hidden in μ-law frames, so an echo of each sent frame can be recognised.

In echo mode the model sends every appended input chunk straight back, and the ingress may cut
the audio into differently sized media messages on the way (our Twilio playback cuts 20 ms
frames, others batch 50 ms). So a frame cannot be matched by message boundaries; its *content*
has to say which frame it was. Each sent frame starts with a 12-byte tag::

    F5 7A F5 7A  d5 d4 d3 d2 d1 d0  c1 c0
    sync         sequence number    check (low byte of CRC-32 of the 3 sequence bytes)

where every ``d``/``c`` byte is ``0xF0 | nibble``. All of these are μ-law codes whose magnitude is
at most 120 of 32767 (-48 dBFS): a 1.5 ms whisper, far below any VAD threshold, so tagging does
not change what the model hears. The sync alternates sign every sample (``0xF?`` codes are tiny
positive values, ``0x7?`` tiny negative ones), which neither silence (``0xFF``) nor a tone or
voice can do, and the check byte rejects the rare accidental match.

The scheme needs the audio to come back bit-exact, which it does when the ingress passes μ-law
through to the model unchanged (``audio/pcmu``; reference/telephony.md §5.3). A transcoding path
would destroy the tags; the report then shows model audio but no echoed frames.
"""

from __future__ import annotations

import zlib
from typing import Final

__all__ = ["MAX_SEQUENCE", "TAG_BYTES", "TagScanner", "tag_bytes", "tag_frame"]

_SYNC: Final = b"\xf5\x7a\xf5\x7a"
_DIGITS: Final = 6
TAG_BYTES: Final = len(_SYNC) + _DIGITS + 2
#: Six nibbles: 2**24 frames of 20 ms is 93 hours of one call.
MAX_SEQUENCE: Final = (1 << (4 * _DIGITS)) - 1


def _check(sequence: int) -> int:
    return zlib.crc32(sequence.to_bytes(3, "big")) & 0xFF


# Tag bytes from and to hex digits with one ``bytes.translate`` each (both run per frame, so no
# per-byte Python loop): ``0xF0 | n`` <-> the hex digit of ``n``. Any byte that is not ``0xF?``
# reads as ``x``, which ``int(..., 16)`` never sees because a tag holding one is rejected first.
_HEX: Final = b"0123456789abcdef"
_HEX_TO_TAG: Final = bytes.maketrans(_HEX, bytes(range(0xF0, 0x100)))
_TAG_TO_HEX: Final = bytes(_HEX[b & 0x0F] if b & 0xF0 == 0xF0 else ord("x") for b in range(256))


def tag_bytes(sequence: int) -> bytes:
    """The :data:`TAG_BYTES`-byte tag of ``sequence``."""
    if not 0 <= sequence <= MAX_SEQUENCE:
        raise ValueError(f"sequence {sequence} is outside 0..{MAX_SEQUENCE}")
    return _SYNC + (b"%06x%02x" % (sequence, _check(sequence))).translate(_HEX_TO_TAG)


def tag_frame(frame: bytes, sequence: int) -> bytes:
    """``frame`` with its first :data:`TAG_BYTES` bytes replaced by the tag of ``sequence``."""
    tag = tag_bytes(sequence)
    if len(frame) < TAG_BYTES:
        raise ValueError(f"a tagged frame needs at least {TAG_BYTES} bytes, got {len(frame)}")
    return tag + frame[TAG_BYTES:]


def _read_tag(buffer: bytes, position: int) -> int | None:
    """The sequence number of a tag whose sync starts at ``position``, if its digits and check
    are valid."""
    digits = buffer[position + len(_SYNC) : position + TAG_BYTES].translate(_TAG_TO_HEX)
    if b"x" in digits:
        return None
    sequence = int(digits[:_DIGITS], 16)
    return sequence if int(digits[_DIGITS:], 16) == _check(sequence) else None


class TagScanner:
    """Finds tags in a byte stream fed in pieces of any size (a tag may straddle two pieces)."""

    __slots__ = ("_carry",)

    def __init__(self) -> None:
        # The last TAG_BYTES - 1 bytes: the start of a tag whose end is in the next piece. No
        # complete tag fits in it, so a tag is never reported twice.
        self._carry = b""

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        """Tags completed by ``data``, as ``(end, sequence)`` with ``end`` the offset in
        ``data`` just after the tag's last byte (1..len(data))."""
        buffer = self._carry + data
        skip = len(self._carry)
        found: list[tuple[int, int]] = []
        position = buffer.find(_SYNC)
        while position != -1 and position + TAG_BYTES <= len(buffer):
            sequence = _read_tag(buffer, position)
            if sequence is not None:
                found.append((position + TAG_BYTES - skip, sequence))
                position = buffer.find(_SYNC, position + TAG_BYTES)
            else:
                position = buffer.find(_SYNC, position + 1)
        self._carry = buffer[-(TAG_BYTES - 1) :]
        return found
