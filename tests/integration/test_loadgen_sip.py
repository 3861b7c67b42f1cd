"""``callray loadtest --provider sip`` against the gateway's SIP ingress on real sockets
(127.0.0.1), a real CallHost and the local model in echo mode: every tagged μ-law frame comes
back through RTP → ingress → host → model → host → pacer → RTP, busy calls are 503s, and a
barge-in's truncation matches, to the packet, the audio the caller heard before the cut."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from pathlib import Path

import pytest

from services.config import SipSettings
from services.loadgen.audio import FRAME_BYTES, tone_ulaw
from services.loadgen.cli import add_loadtest_parser
from services.loadgen.frame_tags import TagScanner, tag_frame
from services.loadgen.options import LoadOptions
from services.loadgen.sip_caller import SipCaller
from services.loadgen.sip_runner import run_sip_load
from tests.integration.test_gateway import running_gateway, until
from tests.wire import WireValidator

pytestmark = pytest.mark.integration

IDLE = b"\xff" * FRAME_BYTES


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sip() -> SipSettings:
    return SipSettings(port=free_udp_port(), rtp_ports=(32000, 32999))


async def test_a_small_sip_load_loses_no_frame_and_finds_every_tag(
    wire: WireValidator, tmp_path: Path
) -> None:
    settings = sip()
    out = tmp_path / "report.json"
    async with running_gateway(wire, sip=settings, mode="echo", capacity=5) as (_b, host):
        parser = argparse.ArgumentParser(prog="callray")
        add_loadtest_parser(parser.add_subparsers(dest="command"))
        args = parser.parse_args(
            ["loadtest", "--provider", "sip", "--target", f"127.0.0.1:{settings.port}",
             "--calls", "5", "--rate", "10", "--duration", "5", "--out", str(out)]
        )  # fmt: skip
        code = await asyncio.to_thread(args.run, args)
        await until(lambda: not host.calls, "every call ended by our BYE")
    data = json.loads(out.read_text())
    assert code == 0 and data["options"]["provider"] == "sip"
    assert data["calls"]["completed"] == 5 and data["calls"]["hung_up_by_ingress"] == 0
    frames = data["frames"]
    assert frames["sent"] == 5 * 250 and frames["lost"] == 0
    # Echo mode over G.711 pass-through: every frame's tag came back intact and in order.
    assert frames["echoed"] == frames["sent"] and frames["unknown_tags"] == 0
    assert frames["reordered"] == 0 and frames["duplicates"] == 0
    assert data["echo_latency_ms"]["count"] == frames["sent"]
    assert data["setup_ms"]["invite_to_200"]["count"] == 5
    assert data["sip"]["final_status"] == {"200": 5} and data["sip"]["rtp"]["bad_packets"] == 0
    assert {c["invite_to_200_ms"] is not None for c in data["per_call"]} == {True}


async def test_calls_over_capacity_are_rejected_with_503(wire: WireValidator) -> None:
    settings = sip()
    async with running_gateway(wire, sip=settings, mode="echo", capacity=2) as (_b, host):
        options = LoadOptions(
            provider="sip", target=f"127.0.0.1:{settings.port}", calls=4, ramp_s=0.1, duration_s=1
        )
        report = await run_sip_load(options)
        await until(lambda: not host.calls, "the calls ended")
    data = report.to_dict()
    assert data["calls"]["completed"] == 2 and data["calls"]["rejected"] == 2
    assert data["calls"]["failed"] == 0 and data["sip"]["final_status"] == {"200": 2, "503": 2}
    assert data["frames"]["lost"] == 0 and data["frames"]["echoed"] == 2 * 50


# One barge-in call with tagged frames: 1.5 s of (tagged) silence, 0.6 s of tone, silence.
LOUD_FROM, LOUD_UNTIL, FRAMES = 75, 105, 250


async def barge_in_call(wire: WireValidator) -> tuple[list[int | None], list[int]]:
    """The tag sequence of every packet the caller received (None: none in it), and the
    ``audio_end_ms`` of every truncate callray sent the model."""
    settings = sip()
    async with running_gateway(wire, sip=settings, mode="echo") as (_b, host):
        caller = SipCaller(("127.0.0.1", settings.port or 0))
        tone = tone_ulaw(20 * FRAMES)
        frames = [
            tag_frame(tone[n * FRAME_BYTES : (n + 1) * FRAME_BYTES], n)
            if LOUD_FROM <= n < LOUD_UNTIL
            else tag_frame(IDLE, n)
            for n in range(FRAMES)
        ]
        assert {len(f) for f in frames} == {FRAME_BYTES}
        caller.speak(b"".join(frames))
        assert await caller.dial() == 200
        await until(lambda: len(caller.received) >= FRAMES + 10, "the call's audio")
        await caller.hang_up()
        await until(lambda: not host.calls, "the call ended")
    received: list[int | None] = []
    for _, payload in caller.received:
        tags = TagScanner().feed(payload)
        received.append(tags[0][1] if tags else None)
    truncates = [e for e in wire.client_log if e["type"] == "conversation.item.truncate"]
    return received, [int(e["audio_end_ms"]) for e in truncates]


def cut_position(received: list[int | None]) -> int:
    """Index of the first packet, once the caller spoke up, that does not carry the frame
    after the previous one, when a later packet skips frames: where the response was cut (an
    idle packet followed by the next frame after all is a pacer tick before the echo came)."""
    expected, broken_at = 0, None
    for n, sequence in enumerate(received):
        if sequence is None:
            broken_at = n if broken_at is None else broken_at
            continue
        if sequence > expected and expected >= LOUD_FROM:
            return n if broken_at is None else broken_at
        broken_at, expected = None, max(expected, sequence + 1)
    raise AssertionError("no cut in what the caller received")


async def test_the_truncation_is_the_audio_heard_before_the_cut_to_the_packet(
    wire: WireValidator,
) -> None:
    received, truncates = await barge_in_call(wire)
    cut = cut_position(received)
    heard = [s for s in received[:cut] if s is not None]
    # The echo item began with the call's first frame and every packet of it carries a tag.
    assert heard == list(range(len(heard))) and heard[-1] >= LOUD_FROM - 1
    assert truncates[0] == 20 * len(heard)


async def test_nothing_of_the_interrupted_response_plays_after_the_cut(
    wire: WireValidator,
) -> None:
    received, _ = await barge_in_call(wire)
    cut = cut_position(received)
    after = [s for s in received[cut:] if s is not None]
    # The echo of the caller's own speech belongs to the response it interrupted.
    assert not [s for s in after if s < LOUD_UNTIL]
