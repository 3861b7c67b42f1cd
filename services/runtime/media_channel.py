"""A streaming media channel between an ingress and a session host: one WebSocket per pair.

Actor calls cost about 1 ms of CPU on both sides each (profiled in bench/README.md), which made
the media hop the largest cost of a call. Over this channel a batch of frames is one binary
message: a few microseconds to encode, no scheduler in the way. Messages are msgpack arrays
(never pickle: a socket must not be a way to run code in the host).

Ingress → host: ``["hello", ingress_id, key]`` once (``key`` is a random secret the host hands
out only through Ray, so only members of the cluster can attach to a host's calls), then
batches ``[sent_at, [item, ...]]`` where an item is ``["m", call_id, audio]``,
``["p", call_id, item_id, content_index, ms]`` (played), ``["t", call_id, [[item_id,
content_index, ms], ...]]`` (playback cut at a barge-in), ``["d", call_id, digit]`` or
``["h", call_id, reason]`` (caller hung up).
Host → ingress: ``[sent_at, [command, ...]]`` where a command is
``["a", call_id, audio, item_id, content_index]``, ``["e", call_id, item_id, content_index]``,
``["c", call_id, speech_at]``, ``["H", call_id, reason]``,
``["T", call_id, target]``, ``["E", call_id, reason]``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgpack  # type: ignore[import-untyped]

from services.errors import ProtocolError
from services.runtime.commands import (
    AudioDone,
    CallEnded,
    CallerHungUp,
    CallInput,
    ClearPlayback,
    Command,
    Dtmf,
    Hangup,
    PlayAudio,
    PlaybackCut,
    Played,
    Transfer,
)


def encode_inputs(sent_at: float, batch: Sequence[tuple[str, bytes | CallInput]]) -> bytes:
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
        else:
            items.append(["h", call_id, data.reason])
    return bytes(msgpack.packb([sent_at, items], use_bin_type=True))


def decode_inputs(message: bytes) -> tuple[float, list[tuple[str, bytes | CallInput]]]:
    try:
        sent_at, items = msgpack.unpackb(message, raw=False)
        out: list[tuple[str, bytes | CallInput]] = []
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
            else:
                raise ProtocolError(f"unknown media channel input {kind!r}")
        return float(sent_at), out
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"malformed media channel message: {exc}") from None


def encode_commands(sent_at: float, commands: Sequence[Command]) -> bytes:
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
        else:
            items.append(["E", c.call_id, c.reason])
    return bytes(msgpack.packb([sent_at, items], use_bin_type=True))


def decode_commands(message: bytes) -> tuple[float, list[Command]]:
    try:
        out: list[Command] = []
        sent_at, items = msgpack.unpackb(message, raw=False)
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
            else:
                raise ProtocolError(f"unknown media channel command {kind!r}")
        return float(sent_at), out
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"malformed media channel message: {exc}") from None


class MediaChannelServer:
    """The host's end: one WebSocket server; each ingress connects once and streams."""

    def __init__(
        self, host: Any, *, bind: str = "127.0.0.1", min_interval_s: float = 0.002
    ) -> None:
        import secrets

        self._min_interval_s = min_interval_s
        self._host = host  # a CallHost (typed loosely to keep this module free of the host's)
        self._bind = bind
        self.key = secrets.token_hex(16)
        self._server: Any = None
        self.url = ""

    async def start(self) -> str:
        from websockets.asyncio.server import serve

        self._server = await serve(
            self._handle, self._bind, 0, max_size=16 * 2**20, compression=None
        )
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.url = f"ws://{self._bind}:{port}/media"
        return self.url

    async def _handle(self, ws: Any) -> None:
        import asyncio

        from websockets.exceptions import ConnectionClosed

        try:
            import hmac

            hello = msgpack.unpackb(await ws.recv(), raw=False)
            if not (
                isinstance(hello, list)
                and len(hello) == 3
                and hello[0] == "hello"
                and hmac.compare_digest(str(hello[2]), self.key)
            ):
                await ws.close(1008, "expected hello with the channel key")
                return
            ingress_id = str(hello[1])
        except (ConnectionClosed, ValueError, msgpack.ExtraData, msgpack.FormatError):
            return

        async def send_commands() -> None:
            # A message goes out at once when the last one left at least min_interval_s ago;
            # otherwise what arrives meanwhile joins it. Each message costs a send here and a
            # receive at the ingress (loopback TCP: ~20 µs of kernel time each), so under load
            # this caps messages per second, as the ingress's feed loop does the other way.
            loop = asyncio.get_running_loop()
            last = 0.0
            while True:
                commands = await self._host.pull_output(1.0, ingress_id, coalesce_s=0.0)
                if not commands:
                    continue
                wait = last + self._min_interval_s - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                    commands += self._host.take_output(ingress_id)
                last = loop.time()
                await ws.send(encode_commands(time.time(), commands))

        sender = asyncio.create_task(send_commands())
        try:
            async for message in ws:
                try:
                    sent_at, batch = decode_inputs(message)
                except ProtocolError as exc:
                    import logging

                    logging.getLogger(__name__).warning("bad media channel message: %s", exc)
                    continue
                self._host.feed(batch, sent_at)
        except ConnectionClosed:
            pass
        finally:
            sender.cancel()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
