"""IngressCore moving a call between hosts, on real media channels (two recording hosts behind
MediaChannelServers) with a scripted router: a host's MoveCall moves the call and silences that
host for it; a move the router refuses, or one slower than ``no_session_s``, ends the call with
the unavailable announcement instead of dead air; a placement that lands after that is hung up."""

from __future__ import annotations

import asyncio
import dataclasses
import wave
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from services.config import MediaSettings
from services.gateway import announcement
from services.gateway.ingress_core import ANNOUNCEMENT_ITEM, IngressCall, IngressCore
from services.media import channel
from services.media.channel_server import MediaChannelServer
from services.media.vocabulary import (
    AudioDone,
    CallerHungUp,
    CallSpec,
    Command,
    Hangup,
    MoveCall,
    PlayAudio,
    PlaybackCut,
    Transfer,
)
from services.observability import metrics
from services.runtime.placement import Rejected
from services.runtime.router import Opened
from tests.conftest import TIMEOUT_FACTOR

pytestmark = pytest.mark.integration

WAIT = 10 * TIMEOUT_FACTOR


class RecordingHost:
    """A session host reduced to its media channel: records inputs, sends what a test puts."""

    def __init__(self, host_id: str) -> None:
        self.host_id = host_id
        self.inputs: list[tuple[str, object]] = []
        self._outboxes: dict[str, channel.Outbox[Command]] = {}
        self.server = MediaChannelServer(self)

    def feed(self, batch: Sequence[channel.Input], sent_at: float | None = None) -> int:
        self.inputs.extend(batch)
        return 0

    def outbox(self, ingress_id: str) -> channel.Outbox[Command]:
        return self._outboxes.setdefault(ingress_id, channel.command_outbox())

    def say(self, command: Command) -> None:
        self.outbox("i1").put(command)


class ScriptedRouter:
    def __init__(self, hosts: dict[str, RecordingHost]) -> None:
        self.hosts = hosts
        self.place_on = "h1"
        self.move_to: str | None = "h2"
        self.move_delay_s = 0.0
        self.moves: list[tuple[str, str]] = []

    async def open_call(self, spec: CallSpec) -> Any:
        return Opened(spec.call_id, self.place_on, self.hosts[self.place_on], 0.0)

    async def move_call(self, spec: CallSpec, from_host: str) -> Any:
        self.moves.append((spec.call_id, from_host))
        assert spec.resumed and not spec.greet
        await asyncio.sleep(self.move_delay_s)
        if self.move_to is None:
            return Rejected("no_host_with_capacity")
        return Opened(spec.call_id, self.move_to, self.hosts[self.move_to], 0.0)


@dataclasses.dataclass
class RecordingLeg:
    played: list[PlayAudio] = dataclasses.field(default_factory=list)
    done: list[AudioDone] = dataclasses.field(default_factory=list)
    ended: list[str] = dataclasses.field(default_factory=list)
    interrupts: int = 0

    def play(self, command: PlayAudio) -> None:
        self.played.append(command)

    def audio_done(self, command: AudioDone) -> None:
        self.done.append(command)

    def interrupt(self) -> PlaybackCut:
        self.interrupts += 1
        return PlaybackCut(())

    def control(self, command: Hangup | Transfer) -> None:
        self.ended.append(command.call_id)

    def end(self, reason: str) -> None:
        self.ended.append(reason)


@pytest.fixture
def short_recording(tmp_path: Any) -> str:
    """A half-second announcement, so the tests do not wait out the built-in one."""
    path = tmp_path / "short.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(b"\x10\x00" * 8000)
    return str(path)


@pytest.fixture
async def rig(short_recording: str) -> AsyncIterator[tuple[IngressCore, ScriptedRouter]]:
    hosts = {h: RecordingHost(h) for h in ("h1", "h2")}
    for host in hosts.values():
        await host.server.start()

    def locate(host: RecordingHost) -> Callable[[], Any]:
        async def where() -> tuple[str, str]:
            return host.server.url, host.server.key

        return where

    router = ScriptedRouter(hosts)
    core = IngressCore(
        ingress_id="i1",
        router=router,
        locate_channel=locate,
        media=MediaSettings(no_session_s=0.5, unavailable_announcement=short_recording),
    )
    try:
        yield core, router
    finally:
        await core.close()
        for host in hosts.values():
            await host.server.stop()


async def until(predicate: Callable[[], object]) -> None:
    async with asyncio.timeout(WAIT):
        while not predicate():
            await asyncio.sleep(0.01)


async def open_call(core: IngressCore, call_id: str = "c1") -> tuple[IngressCall, RecordingLeg]:
    leg = RecordingLeg()
    call = await core.open(CallSpec(call_id, transport="test"), leg)
    assert isinstance(call, IngressCall)
    return call, leg


async def test_a_host_handing_a_call_off_moves_it_and_is_not_heard_again(
    rig: tuple[IngressCore, ScriptedRouter],
) -> None:
    core, router = rig
    h1, h2 = router.hosts["h1"], router.hosts["h2"]
    call, leg = await open_call(core)
    h1.say(MoveCall("c1", "host_drained"))
    await until(lambda: call.host_id == "h2")
    assert router.moves == [("c1", "h1")]
    h1.say(PlayAudio("c1", b"old", "item-old"))  # the old session, still up until closed
    h2.say(PlayAudio("c1", b"new", "item-new"))
    await until(lambda: leg.played)
    await asyncio.sleep(0.1)
    assert [p.data for p in leg.played] == [b"new"]
    core.caller_audio("c1", b"\xff" * 160)
    await until(lambda: h2.inputs)
    assert h2.inputs == [("c1", b"\xff" * 160)] and not leg.ended


async def test_a_refused_move_plays_the_announcement_then_ends(
    rig: tuple[IngressCore, ScriptedRouter], short_recording: str
) -> None:
    core, router = rig
    router.move_to = None
    before = metrics.CALLS_ANNOUNCED.labels("test", "no_capacity")._value.get()
    call, leg = await open_call(core)
    router.hosts["h1"].say(MoveCall("c1", "host_drained"))
    await until(lambda: leg.played)
    recording = announcement.load(short_recording)
    assert [p.item_id for p in leg.played] == [ANNOUNCEMENT_ITEM]
    assert leg.played[0].data == recording.encoded("audio/pcmu")
    assert len(leg.played[0].data) == 4000  # 0.5 s at 16 kHz, played at 8 kHz
    assert [d.item_id for d in leg.done] == [ANNOUNCEMENT_ITEM]
    assert leg.interrupts == 1 and call.ended and leg.ended == []  # not cut off mid-message
    await until(lambda: leg.ended)
    assert leg.ended == ["no_capacity"]
    assert metrics.CALLS_ANNOUNCED.labels("test", "no_capacity")._value.get() == before + 1


async def test_no_session_within_the_deadline_announces_and_hangs_up_the_late_one(
    rig: tuple[IngressCore, ScriptedRouter],
) -> None:
    core, router = rig
    router.move_delay_s = 1.0  # twice no_session_s
    call, leg = await open_call(core)
    router.hosts["h1"].say(MoveCall("c1", "host_drained"))
    await until(lambda: leg.played)
    assert leg.played[0].item_id == ANNOUNCEMENT_ITEM and call.ended
    # The placement that lands later opened a session nobody will hear: it is told to end.
    await until(lambda: router.hosts["h2"].inputs)
    assert router.hosts["h2"].inputs == [("c1", CallerHungUp("caller_hangup"))]


def test_the_announcement_is_encoded_for_every_leg_format() -> None:
    recording = announcement.load()
    assert 3.0 < recording.seconds < 6.0
    ulaw = recording.encoded("audio/pcmu")
    assert len(ulaw) == len(recording.pcm)  # one byte a sample at 8 kHz
    assert len(recording.encoded("audio/pcma")) == len(ulaw)
    assert recording.encoded("audio/pcmu") != recording.encoded("audio/pcma")
    pcm24 = recording.encoded("audio/pcm")
    assert len(pcm24) == 2 * 3 * len(recording.pcm)  # 16-bit at three times the rate


def test_a_bad_announcement_file_is_a_config_error(tmp_path: Any) -> None:
    from services.errors import ConfigError

    bad = tmp_path / "a.wav"
    bad.write_bytes(b"not a wav")
    with pytest.raises(ConfigError, match="CALLRAY_UNAVAILABLE_ANNOUNCEMENT"):
        announcement.load(str(bad))
