"""Our SIP ingress against peers no one here wrote: sipp scenarios and a headless baresip
(tests/sip_peers.py), with a real CallHost and the local model behind the gateway. Loopback
only, in the namespace scripts/test.sh makes; skipped without sipp/baresip, except in CI."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from services.config import SipSettings
from services.runtime.host import CallHost
from services.telephony.g711 import pcm16_to_ulaw
from tests.integration.test_gateway import running_gateway, until
from tests.sip_peers import Baresip, Sipp, analyse_wav, free_port, require_raw_socket, tone_pcm16
from tests.wire import WireValidator

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

HANG_UP = {"steps": [{"tool": {"name": "hang_up", "arguments": {}}, "then": "Goodbye."}]}
TRANSFER = {
    "steps": [
        {
            "tool": {"name": "transfer_to_human", "arguments": {"department": "billing"}},
            "then": "Transferring you to billing.",
        }
    ]
}


@asynccontextmanager
async def ingress(
    wire: WireValidator,
    tmp_path: Path,
    *,
    scenario: dict[str, Any] | None = None,
    capacity: int = 3,
    **sip: Any,
) -> AsyncIterator[tuple[tuple[str, int], CallHost]]:
    settings = SipSettings(port=free_port(), rtp_ports=(34000, 35999), **sip)
    path = None
    if scenario is not None:
        path = tmp_path / "scenario.json"
        path.write_text(json.dumps(scenario))
    async with running_gateway(
        wire, sip=settings, capacity=capacity, scenario=str(path) if path else None
    ) as (_base, host):
        yield ("127.0.0.1", settings.port or 0), host


def appended_audio(wire: WireValidator) -> bytes:
    return b"".join(
        base64.b64decode(e["audio"])
        for e in wire.client_log
        if e["type"] == "input_audio_buffer.append"
    )


def events_of(host: CallHost, kind: str) -> list[dict[str, Any]]:
    return [f for k, _c, f in host._events.events if k == kind]  # type: ignore[attr-defined]


async def test_sipps_mu_law_reaches_the_model_untouched(
    wire: WireValidator, tmp_path: Path
) -> None:
    tone = pcm16_to_ulaw(tone_pcm16(hz=440, seconds=2.0))
    async with ingress(wire, tmp_path) as (target, host):
        result = await Sipp("uac_rtp_stream.xml", tmp_path / "sipp", tone=tone).run(target)
        result.assert_ok()
        await until(lambda: not host.calls, "the call ended by sipp's BYE")
    # G.711 passed through: the tone's bytes arrive at the model as sipp sent them.
    assert tone[160:-160] in appended_audio(wire)
    assert [f["reason"] for f in events_of(host, "call.ended")] == ["caller_hangup"]


async def test_sipps_rfc_4733_digits_become_dtmf_events(
    wire: WireValidator, tmp_path: Path
) -> None:
    require_raw_socket()
    async with ingress(wire, tmp_path) as (target, host):
        sipp = Sipp(
            "uac_rtp_stream_dtmf.xml",
            tmp_path / "sipp",
            keys={"dtmf": "4#"},
            tone=pcm16_to_ulaw(tone_pcm16(seconds=1.0)),
            duration_ms=1800,
        )
        (await sipp.run(target)).assert_ok()
        await until(lambda: not host.calls, "the call ended")
    assert [f["digit"] for f in events_of(host, "dtmf")] == ["4", "#"]


@pytest.mark.parametrize(
    "scenario", ["uac_options.xml", "uac_hold_resume.xml", "uac_session_timer.xml"]
)
async def test_sipp_signalling_scenarios_pass(
    wire: WireValidator, tmp_path: Path, scenario: str
) -> None:
    async with ingress(wire, tmp_path) as (target, host):
        sipp = Sipp(scenario, tmp_path / "sipp", duration_ms=500)
        (await sipp.run(target)).assert_ok()
        await until(lambda: not host.calls, "no call left")


async def test_a_cancel_before_the_answer_gets_487_and_frees_the_seat(
    wire: WireValidator, tmp_path: Path
) -> None:
    async with ingress(wire, tmp_path, capacity=1) as (target, host):
        (await Sipp("uac_cancel.xml", tmp_path / "sipp").run(target)).assert_ok()
        await until(lambda: not host.calls, "the seat freed")
        # The one seat is free again: a call goes through.
        (await Sipp("uac_options.xml", tmp_path / "sipp2").run(target)).assert_ok()


async def test_a_trunk_answers_the_407_and_is_taken(wire: WireValidator, tmp_path: Path) -> None:
    from services.config import Secret

    async with ingress(
        wire,
        tmp_path,
        auth_users=Secret("trunk:s3cret"),
        auth_algorithms=("MD5",),  # sipp reads the first challenge and knows MD5 only
    ) as (target, host):
        good = Sipp("uac_auth.xml", tmp_path / "good", auth=("trunk", "s3cret"), duration_ms=300)
        (await good.run(target)).assert_ok()
        bad = Sipp("uac_auth.xml", tmp_path / "bad", auth=("trunk", "wrong"), timeout=5)
        result = await bad.run(target)
        # Challenged again, never taken (sipp then waits out its timeout).
        challenges = result.received("SIP/2.0 407")  # each retransmission gets one too
        assert len(challenges) >= 2 and not result.received("SIP/2.0 200")
        await until(lambda: not host.calls, "no call left")


async def test_the_agents_transfer_is_a_refer_then_a_bye(
    wire: WireValidator, tmp_path: Path
) -> None:
    async with ingress(wire, tmp_path, scenario=TRANSFER) as (target, host):
        sipp = Sipp("uac_refer_target.xml", tmp_path / "sipp")
        result = await sipp.run(target)
        result.assert_ok()
        [refer] = result.received("REFER")
        # The demo agent's queue, at the PBX the call came from (sipp's own SIP port).
        assert refer.header("Refer-To") == f"<sip:billing@127.0.0.1:{sipp.sip_port}>"
        assert [f["reason"] for f in events_of(host, "call.ended")] == ["transferred"]


async def test_a_failed_transfer_keeps_the_call_and_tells_the_agent(
    wire: WireValidator, tmp_path: Path
) -> None:
    async with ingress(wire, tmp_path, scenario=TRANSFER) as (target, host):
        sipp = Sipp("uac_refer_target_fails.xml", tmp_path / "sipp", duration_ms=1500)
        (await sipp.run(target)).assert_ok()  # it fails the call if we send a BYE
        assert any("did not go through" in str(e) for e in wire.client_log)
        assert [f["reason"] for f in events_of(host, "call.ended")] == ["caller_hangup"]


async def test_the_agents_hang_up_is_a_bye(wire: WireValidator, tmp_path: Path) -> None:
    async with ingress(wire, tmp_path, scenario=HANG_UP) as (target, host):
        (await Sipp("uac_callee_hangs_up.xml", tmp_path / "sipp").run(target)).assert_ok()
        assert [f["reason"] for f in events_of(host, "call.ended")] == ["agent_hangup"]


async def test_we_register_with_a_pbx_registrar(wire: WireValidator, tmp_path: Path) -> None:
    from services.config import Secret

    registrar = Sipp("uas_registrar.xml", tmp_path / "reg", timeout=10, recv_timeout_ms=3000)
    pbx = await registrar.start()
    async with pbx:
        async with ingress(
            wire,
            tmp_path,
            registrar=("127.0.0.1", pbx.sip_port),
            register_user="1001",
            register_password=Secret("secret"),
        ):
            result = await pbx.wait(10)
    result.assert_ok()
    registers = result.received("REGISTER")
    assert len(registers) >= 2 and registers[-1].header("Authorization")


async def test_baresip_hears_the_agent_and_its_digits_reach_the_call(
    wire: WireValidator, tmp_path: Path
) -> None:
    async with ingress(wire, tmp_path) as (target, host):
        caller = Baresip(tmp_path / "bs", tone_seconds=4.0, digits="5", digits_after=2.5)
        result = await caller.call(f"sip:agent@127.0.0.1:{target[1]}")
        await until(lambda: not host.calls, "baresip hung up at the end of its file")
    assert not result.timed_out and "CALL_ESTABLISHED" in result.types()
    heard = analyse_wav(result.received[0])
    assert heard.voiced_seconds > 1.0, heard  # the greeting, as μ-law RTP
    assert [f["digit"] for f in events_of(host, "dtmf")] == ["5"]


async def test_a_hundred_sipp_calls_at_once_all_succeed(
    wire: WireValidator, tmp_path: Path
) -> None:
    tone = pcm16_to_ulaw(tone_pcm16(seconds=2.0))
    async with ingress(wire, tmp_path, capacity=100) as (target, host):
        load = Sipp(
            "uac_rtp_stream.xml",
            tmp_path / "load",
            calls=100,
            limit=100,
            rate=20,
            tone=tone,
            timeout=60,
        )
        result = await load.run(target)
        result.assert_ok(calls=100)
        await until(lambda: not host.calls, "every call ended")
    assert result.failed == 0 and result.successful == 100


async def test_baresip_follows_the_agents_refer_to_a_configured_queue(
    wire: WireValidator, tmp_path: Path
) -> None:
    # The billing queue is a PBX extension (sipp answering); baresip, transferred by our REFER,
    # calls it, reports 200 by NOTIFY, and we leave the call with a BYE.
    target = await Sipp("uas_answer.xml", tmp_path / "queue").start()
    async with target:
        queue = f"sip:billing@127.0.0.1:{target.sip_port}"
        async with ingress(
            wire, tmp_path, scenario=TRANSFER, transfer_targets=(("billing", queue),)
        ) as (address, host):
            caller = Baresip(tmp_path / "bs", tone_seconds=3.0)
            result = await caller.call(f"sip:agent@127.0.0.1:{address[1]}")
            await until(lambda: not host.calls, "our call ended after the transfer")
        served = await target.wait(5)
    assert "TRANSFER" in result.types() and result.types().count("CALL_ESTABLISHED") == 2
    assert [m.first_line for m in served.received("INVITE")] == [f"INVITE {queue} SIP/2.0"]
    assert [f["reason"] for f in events_of(host, "call.ended")] == ["transferred"]
