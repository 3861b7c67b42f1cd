"""The media channel between an ingress and a session host, sans-I/O: one WebSocket per pair.

Both ends import this module; the asyncio adapters over it are :mod:`.channel_client` (the
ingress) and :mod:`.channel_server` (the host). An actor call costs about 1 ms of CPU on each side
(bench/README.md), so media never crosses as actor calls; here a batch of frames is one binary
WebSocket message, and each direction has **one coalescing point**: its :class:`Outbox`, emptied
into one message at most every ``interval`` (what arrives meanwhile rides along).

Messages are msgpack arrays (never pickle: a socket must not be a way to run code in the host):

* ingress → host, first: ``["hello", VERSION, ingress_id, key]``. ``key`` is a random secret the
  host hands out only over Ray, so only members of the cluster can attach to a host's calls. The
  host answers ``["welcome", VERSION]``, or closes with 1008 and the reason.
* ingress → host: ``["in", sent_at, [item, ...]]``; an item is ``["m", call_id, audio]``,
  ``["p", call_id, item_id, content_index, ms]`` (played), ``["t", call_id, [[item_id,
  content_index, ms], ...]]`` (playback cut at a barge-in), ``["d", call_id, digit]`` or
  ``["h", call_id, reason]`` (caller hung up).
* host → ingress: ``["out", sent_at, [command, ...]]``; a command is ``["a", call_id, audio,
  item_id, content_index]``, ``["e", call_id, item_id, content_index]``, ``["c", call_id,
  speech_at]``, ``["H", call_id, reason]``, ``["T", call_id, target]`` or ``["E", call_id,
  reason]``.

``sent_at`` is the sender's ``time.time()``: the receiver measures the hop on the same machine's
clock (across machines it includes their skew).

**Backpressure.** An :class:`Outbox` holds at most ``limit`` items; past it the oldest *audio* is
dropped (and counted), never a control input or command, which change a call's state. While a
channel is down the host keeps its outbox for that ingress (audio ages out, controls wait), and the
ingress keeps the control inputs of a batch that did not go out for the next one.
"""

from __future__ import annotations

import dataclasses
import hmac
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Generic, TypeVar

import msgpack  # type: ignore[import-untyped]

from services.errors import ChannelError
from services.media.vocabulary import (
    AudioDone,
    CallEnded,
    CallerHungUp,
    CallInput,
    ClearPlayback,
    Command,
    Dtmf,
    Hangup,
    MoveCall,
    PlayAudio,
    PlaybackCut,
    Played,
    Transfer,
    TransferFailed,
    is_audio,
)

VERSION: Final = 1
MAX_MESSAGE_BYTES: Final = 16 * 2**20
DEFAULT_OUTBOX_LIMIT: Final = 20_000  # items: 4 s of 20 ms audio for 100 calls

__all__ = ["ChannelError", "Outbox", "Redelivery"]

Input = tuple[str, bytes | CallInput]
T = TypeVar("T")


# ----- the coalescing point of one direction -----------------------------------------------------


class Outbox(Generic[T]):
    """Items waiting to leave in the next message of one direction, in order.

    ``on_ready`` is called when the outbox goes from empty to non-empty: the adapter's sender
    wakes then, so nothing polls. Audio beyond ``limit`` items is dropped oldest first; control
    items are kept whatever the count.
    """

    def __init__(self, audio: Callable[[T], bool], *, limit: int = DEFAULT_OUTBOX_LIMIT) -> None:
        self._items: deque[T] = deque()
        self._audio = audio
        self._limit = limit
        self._audio_count = 0
        self.dropped = 0
        self.on_ready: Callable[[], None] | None = None
        self.on_drop: Callable[[int], None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        was_empty = not self._items
        self._items.append(item)
        if self._audio(item):
            self._audio_count += 1
        if len(self._items) > self._limit and self._audio_count:
            self._drop_oldest_audio()
        if was_empty and self.on_ready is not None:
            self.on_ready()

    def put_front(self, items: Sequence[T]) -> None:
        """Put back items that did not go out, ahead of everything queued since."""
        if not items:
            return
        was_empty = not self._items
        self._items.extendleft(reversed(items))
        self._audio_count += sum(1 for item in items if self._audio(item))
        if was_empty and self.on_ready is not None:
            self.on_ready()

    def take(self) -> list[T]:
        out = list(self._items)
        self._items.clear()
        self._audio_count = 0
        return out

    def _drop_oldest_audio(self) -> None:
        # Rare (a peer that stopped reading): a linear rebuild is fine.
        kept: deque[T] = deque()
        excess = len(self._items) - self._limit
        for item in self._items:
            if excess > 0 and self._audio(item):
                excess -= 1
                self.dropped += 1
                self._audio_count -= 1
                continue
            kept.append(item)
        dropped = len(self._items) - len(kept)
        self._items = kept
        if self.on_drop is not None:
            self.on_drop(dropped)


def input_outbox(limit: int = DEFAULT_OUTBOX_LIMIT) -> Outbox[Input]:
    return Outbox(lambda item: is_audio(item[1]), limit=limit)


def command_outbox(limit: int = DEFAULT_OUTBOX_LIMIT) -> Outbox[Command]:
    return Outbox(is_audio, limit=limit)


# ----- handshake ---------------------------------------------------------------------------------


def encode_hello(ingress_id: str, key: str) -> bytes:
    return _pack(["hello", VERSION, ingress_id, key])


def accept_hello(message: bytes | str, key: str) -> tuple[str, bytes]:
    """Check an ingress's first message; returns its id and the welcome to send back.
    Raises :class:`ChannelError` (the reason to close with) otherwise."""
    hello = _unpack(message)
    if not (isinstance(hello, list) and len(hello) == 4 and hello[0] == "hello"):
        raise ChannelError("expected hello with the channel version and key")
    _, version, ingress_id, their_key = hello
    if version != VERSION:
        raise ChannelError(f"media channel version {version!r} is not {VERSION}")
    # Compared as bytes: compare_digest refuses str with non-ASCII characters (TypeError), and
    # the peer chooses the characters (found by tests/unit/test_fuzz_parsers.py).
    if not isinstance(their_key, str) or not hmac.compare_digest(
        their_key.encode("utf-8", "surrogatepass"), key.encode()
    ):
        raise ChannelError("wrong media channel key")
    if not isinstance(ingress_id, str):
        raise ChannelError("hello without an ingress id")
    return ingress_id, _pack(["welcome", VERSION])


def check_welcome(message: bytes | str) -> None:
    welcome = _unpack(message)
    if welcome != ["welcome", VERSION]:
        raise ChannelError(f"expected welcome for version {VERSION}, got {welcome!r}"[:200])


# ----- batches -----------------------------------------------------------------------------------


def encode_inputs(sent_at: float, batch: Iterable[Input]) -> bytes:
    items: list[list[Any]] = []
    for call_id, data in batch:
        if isinstance(data, bytes):
            items.append(["m", call_id, data])
        elif isinstance(data, Played):
            items.append(["p", call_id, data.item_id, data.content_index, data.ms])
        elif isinstance(data, Dtmf):
            items.append(["d", call_id, data.digit])
        elif isinstance(data, PlaybackCut):
            items.append(["t", call_id, [list(h) for h in data.heard]])
        elif isinstance(data, TransferFailed):
            items.append(["x", call_id, data.target, data.status])
        else:
            items.append(["h", call_id, data.reason])
    return _pack(["in", sent_at, items])


def decode_inputs(message: bytes | str) -> tuple[float, list[Input]]:
    sent_at, items = _batch(message, "in")
    out: list[Input] = []
    try:
        for item in items:
            kind, call_id = item[0], str(item[1])
            if kind == "m":
                out.append((call_id, bytes(item[2])))
            elif kind == "p":
                out.append((call_id, Played(str(item[2]), int(item[3]), float(item[4]))))
            elif kind == "d":
                out.append((call_id, Dtmf(str(item[2]))))
            elif kind == "t":
                heard = tuple((str(i), int(c), int(ms)) for i, c, ms in item[2])
                out.append((call_id, PlaybackCut(heard)))
            elif kind == "h":
                out.append((call_id, CallerHungUp(str(item[2]))))
            elif kind == "x":
                out.append((call_id, TransferFailed(str(item[2]), int(item[3]))))
            else:
                raise ChannelError(f"unknown media channel input {kind!r}"[:120])
    except ChannelError:
        raise
    except Exception as exc:
        raise ChannelError(f"malformed media channel input: {exc}"[:200]) from None
    return sent_at, out


def encode_commands(sent_at: float, commands: Iterable[Command]) -> bytes:
    items: list[list[Any]] = []
    for c in commands:
        if isinstance(c, PlayAudio):
            items.append(["a", c.call_id, c.data, c.item_id, c.content_index])
        elif isinstance(c, AudioDone):
            items.append(["e", c.call_id, c.item_id, c.content_index])
        elif isinstance(c, ClearPlayback):
            items.append(["c", c.call_id, c.speech_at])
        elif isinstance(c, Hangup):
            items.append(["H", c.call_id, c.reason])
        elif isinstance(c, Transfer):
            items.append(["T", c.call_id, c.target])
        elif isinstance(c, MoveCall):
            items.append(["M", c.call_id, c.reason])
        else:
            items.append(["E", c.call_id, c.reason])
    return _pack(["out", sent_at, items])


def decode_commands(message: bytes | str) -> tuple[float, list[Command]]:
    sent_at, items = _batch(message, "out")
    out: list[Command] = []
    try:
        for item in items:
            kind, call_id = item[0], str(item[1])
            if kind == "a":
                out.append(PlayAudio(call_id, bytes(item[2]), str(item[3]), int(item[4])))
            elif kind == "e":
                out.append(AudioDone(call_id, str(item[2]), int(item[3])))
            elif kind == "c":
                out.append(ClearPlayback(call_id, float(item[2])))
            elif kind == "H":
                out.append(Hangup(call_id, str(item[2])))
            elif kind == "T":
                out.append(Transfer(call_id, str(item[2])))
            elif kind == "E":
                out.append(CallEnded(call_id, str(item[2])))
            elif kind == "M":
                out.append(MoveCall(call_id, str(item[2])))
            else:
                raise ChannelError(f"unknown media channel command {kind!r}"[:120])
    except ChannelError:
        raise
    except Exception as exc:
        raise ChannelError(f"malformed media channel command: {exc}"[:200]) from None
    return sent_at, out


# ----- the ingress's retry policy ----------------------------------------------------------------


@dataclasses.dataclass
class Redelivery:
    """What the ingress does with a batch that did not go out (the channel broke under it).

    Audio is only worth its moment: dropped. Control inputs (marks heard, DTMF, hang-ups) go first
    in the next batch, so a hang-up is not lost to a reconnect; after ``give_up_after`` failures
    in a row the host is taken for gone (the router reports its calls ended) and they are dropped
    too. :meth:`delay` is how long to wait before the next attempt (no spinning against a host
    that is gone), doubling from ``first_delay_s`` to ``max_delay_s``.
    """

    give_up_after: int = 20
    first_delay_s: float = 0.05
    max_delay_s: float = 1.0
    failures: int = 0

    def failed(self, batch: Sequence[Input]) -> list[Input]:
        """The items of ``batch`` to send again."""
        self.failures += 1
        if self.failures >= self.give_up_after:
            return []
        return [item for item in batch if not is_audio(item[1])]

    def delivered(self) -> None:
        self.failures = 0

    def delay(self) -> float:
        if self.failures == 0:
            return 0.0
        return float(min(self.max_delay_s, self.first_delay_s * 2 ** (self.failures - 1)))


# ----- helpers -----------------------------------------------------------------------------------


def _pack(value: Any) -> bytes:
    return bytes(msgpack.packb(value, use_bin_type=True))


def _unpack(message: bytes | str) -> Any:
    if isinstance(message, str):
        raise ChannelError("media channel messages are binary")
    if len(message) > MAX_MESSAGE_BYTES:
        raise ChannelError(f"media channel message of {len(message)} bytes is too large")
    try:
        return msgpack.unpackb(message, raw=False)
    except Exception as exc:
        raise ChannelError(f"malformed media channel message: {exc}"[:200]) from None


def _batch(message: bytes | str, kind: str) -> tuple[float, list[Any]]:
    value = _unpack(message)
    if not (
        isinstance(value, list)
        and len(value) == 3
        and value[0] == kind
        and isinstance(value[1], int | float)
        and isinstance(value[2], list)
    ):
        raise ChannelError(f"expected a {kind!r} batch [{kind!r}, sent_at, items]")
    return float(value[1]), value[2]
