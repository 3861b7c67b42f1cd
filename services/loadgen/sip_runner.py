"""The asyncio driver of simulated SIP callers: ``callray loadtest --provider sip``.

Each call is what a trunk sends a UAS: an INVITE with a PCMU offer from our one SIP socket
(:class:`~services.loadgen.sip_uac.SipUac` does the signalling of every call), then, once the
200 OK is ACKed, μ-law RTP both ways on a port of the call's own, with the script, frame tags
and measurements of the Twilio caller (:class:`~services.loadgen.rtp_caller.RtpCaller`); at the
end our BYE. This module only moves datagrams and reads the clock. Each call keeps its own
20 ms grid with a timer (``loop.call_later``), as the Twilio media leg does, and the load
generator's own lateness is reported (``loadgen.max_tick_lag_ms``) so that an overloaded
generator is not mistaken for a slow ingress.

Outcomes: a 200 is a call; 503 is ``rejected`` (busy: the ingress turning calls away as
designed, so a trunk fails over); any other final, no final by ``timeout_s``, an answer we
cannot use, or a media leg that overran its time is ``failed``. The report is the Twilio
report (no marks: RTP has none) plus a ``sip`` section: the final statuses, INVITE
retransmissions, BYEs never answered, SIP input dropped, RTP packets that were idle, bad or
from a foreign address, and per answered call its callray call id (``X-Callray-Call-Id``), the
ingress's RTP port, the idle packets it received between model audio (with an echoing model,
pacer ticks the echo missed) and, after a barge-in, ``heard_before_cut_ms``. Setup times are
named for SIP: ``invite_to_final``, ``invite_to_200``, ``first_audio``, all from the INVITE.
Loopback only: every socket binds 127.0.0.1 and the target is 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Final, TextIO, cast

from services.loadgen.audio import load_wav_ulaw, tone_ulaw
from services.loadgen.live_status import LiveStatus
from services.loadgen.options import SIP_HOST, LoadOptions
from services.loadgen.report import CallResult, LoadReport
from services.loadgen.rtp_caller import RtpCaller
from services.loadgen.script import CallerScript
from services.loadgen.sip_uac import Answered, HungUp, Output, Refused, Send, SipUac, UacCall
from services.loadgen.twilio_caller import TwilioCaller

__all__ = ["BUSY_STATUS", "SipLoadReport", "run_sip_load"]

Clock = Callable[[], float]
#: 503 (+ Retry-After) is the ingress being full: the call is rejected, not failed.
BUSY_STATUS: Final = 503
_PROGRESS_INTERVAL_S: Final = 0.5


@dataclasses.dataclass(frozen=True)
class SipLoadReport(LoadReport):
    """:class:`LoadReport` with SIP's names for the setup times and a ``sip`` section."""

    sip: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        setup = data["setup_ms"]
        data["setup_ms"] = {
            "invite_to_final": setup["twiml"],
            "invite_to_200": setup["ws_open"],
            "first_audio": setup["first_audio"],
        }
        for call in data["per_call"]:
            call["invite_to_final_ms"] = call.pop("twiml_ms")
            call["invite_to_200_ms"] = call.pop("ws_open_ms")
            del call["marks_received"], call["marks_echoed"]
        del data["marks"]
        data["sip"] = dict(self.sip)
        return data


async def run_sip_load(
    options: LoadOptions, *, clock: Clock = time.monotonic, progress: TextIO | None = None
) -> SipLoadReport:
    """Place ``options.calls`` SIP calls at ``options.target`` and measure them (the contract of
    :func:`services.loadgen.runner.run_load`)."""
    speech = load_wav_ulaw(options.wav) if options.wav else tone_ulaw(1000)
    if progress is None and (
        options.progress or (options.progress is None and sys.stderr.isatty())
    ):
        progress = sys.stderr
    live = LiveStatus()
    endpoint = await _SipEndpoint.open(options.target_address(), options.sip_user, clock)
    run = _Run(options, speech, clock, live, endpoint)
    started = clock()
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(
                    run.scheduled_call(i, started + i * options.ramp_s / options.calls)
                )
                for i in range(options.calls)
            ]
            if progress is not None:
                group.create_task(live.report_until_done(progress, tasks))
        await asyncio.sleep(0.05)  # the last BYEs' 200s
    finally:
        endpoint.close()
    results = tuple(task.result() for task in tasks)
    uac = endpoint.uac
    sip = {
        "target": options.target,
        "final_status": {str(k): v for k, v in sorted(run.statuses.items())},
        "invite_retransmits": sum(c.invite_retransmits for c in uac.calls.values()),
        "bye_timeouts": uac.bye_timeouts,
        "dropped": dict(uac.dropped),
        "rtp": {
            "idle_received": run.idle_received,
            "idle_after_first_audio": run.underruns,
            "bad_packets": run.bad_packets,
            "foreign_packets": run.foreign_packets,
        },
        "calls": [run.per_call[i] for i in sorted(run.per_call)],
    }
    return SipLoadReport(
        options=options.describe(), elapsed_s=clock() - started, calls=results, sip=sip
    )


class _Run:
    """Shared state of one SIP load test."""

    def __init__(
        self,
        options: LoadOptions,
        speech: bytes,
        clock: Clock,
        live: LiveStatus,
        endpoint: _SipEndpoint,
    ) -> None:
        self.options = options
        self.speech = speech
        self.clock = clock
        self.live = live
        self.endpoint = endpoint
        self.limit = asyncio.Semaphore(options.concurrency or options.calls)
        self.statuses: Counter[int] = Counter()
        self.per_call: dict[int, dict[str, Any]] = {}  # SIP details of answered calls
        self.idle_received = self.underruns = self.bad_packets = self.foreign_packets = 0

    async def scheduled_call(self, index: int, at: float) -> CallResult:
        await asyncio.sleep(max(0.0, at - self.clock()))
        async with self.limit:
            self.live.active += 1
            try:
                result = await self.call(index)
            finally:
                self.live.active -= 1
        self.live.finished(result)
        return result

    def script(self, index: int) -> CallerScript:
        return CallerScript.for_call(self.options, index, self.speech)

    async def call(self, index: int) -> CallResult:
        loop = asyncio.get_running_loop()
        caller = RtpCaller(self.script(index))
        leg = _RtpLeg(caller, self.clock)
        transport, _ = await loop.create_datagram_endpoint(lambda: leg, local_addr=(SIP_HOST, 0))
        try:
            return await self._call(index, caller, leg)
        finally:
            transport.close()
            self.idle_received += caller.idle_received
            self.underruns += caller.underruns
            self.bad_packets += caller.bad_packets
            self.foreign_packets += leg.foreign

    async def _call(self, index: int, caller: RtpCaller, leg: _RtpLeg) -> CallResult:
        o = self.options
        call, setup = self.endpoint.dial(index, leg.port)
        try:
            async with asyncio.timeout(o.timeout_s):
                final = await setup
        except TimeoutError:
            self.endpoint.abandon(call)
            self.statuses[0] += 1
            error = f"no final response in {o.timeout_s:g} s"
            return CallResult(index=index, outcome="failed", error=error)
        final_ms = (self.clock() - call.invite_sent_at) * 1000
        self.statuses[call.status] += 1
        if isinstance(final, Refused):
            if call.status == BUSY_STATUS:
                return CallResult(index=index, outcome="rejected", twiml_ms=final_ms)
            return CallResult(index=index, outcome="failed", error=final.reason, twiml_ms=final_ms)
        assert call.answered_at is not None and call.remote_rtp is not None
        failure: str | None = None
        details: dict[str, Any] = {
            "index": index,
            "callray_call_id": call.callray_call_id,
            "ingress_rtp_port": call.remote_rtp[1],
        }
        self.per_call[index] = details
        self.live.attach(caller)
        self.endpoint.legs[call.call_id] = leg
        try:
            async with asyncio.timeout(o.duration_s + o.drain_s + o.timeout_s):
                await leg.run(call.remote_rtp, hung_up=call.closed_reason)
        except TimeoutError:
            failure = "TimeoutError: the media leg overran its time"
        except Exception as exc:  # a bug in the caller: this call fails, the others go on
            failure = f"{type(exc).__name__}: {exc}"
        finally:
            self.live.detach(caller)
            self.endpoint.legs.pop(call.call_id, None)
            self.endpoint.hang_up(call)  # nothing if the ingress hung up first
        details["idle_after_first_audio"] = caller.underruns
        if caller.heard_before_cut_ms is not None:
            details["heard_before_cut_ms"] = caller.heard_before_cut_ms
        return CallResult.from_caller(
            index,
            # from_caller reads .stats, .playback and .ended_by, which RtpCaller has with the
            # same types as TwilioCaller.
            cast(TwilioCaller, caller),
            post_sent_at=call.invite_sent_at,
            answered_at=call.invite_sent_at + final_ms / 1000,
            ws_open_at=call.answered_at,
            error=failure,
            close_reason=caller.close_reason,
        )


class _SipEndpoint(asyncio.DatagramProtocol):
    """The load generator's SIP socket: datagrams to and from :class:`SipUac`, and its timers."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.transport: asyncio.DatagramTransport | None = None
        self._uac: SipUac | None = None
        self.setups: dict[str, asyncio.Future[Answered | Refused]] = {}
        self.legs: dict[str, _RtpLeg] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    @classmethod
    async def open(cls, target: tuple[str, int], user: str, clock: Clock) -> _SipEndpoint:
        loop = asyncio.get_running_loop()
        endpoint = cls(clock)
        await loop.create_datagram_endpoint(lambda: endpoint, local_addr=(SIP_HOST, 0))
        assert endpoint.transport is not None
        local = endpoint.transport.get_extra_info("sockname")[:2]
        endpoint._uac = SipUac((local[0], local[1]), target, user=user)
        return endpoint

    @property
    def uac(self) -> SipUac:
        assert self._uac is not None
        return self._uac

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._apply(self.uac.receive(data, (addr[0], addr[1]), self.clock()))

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable: the target is not listening; Timer B reports it

    def dial(self, index: int, rtp_port: int) -> tuple[UacCall, asyncio.Future[Answered | Refused]]:
        call, out = self.uac.dial(index, rtp_port, self.clock())
        setup: asyncio.Future[Answered | Refused] = asyncio.get_running_loop().create_future()
        self.setups[call.call_id] = setup
        self._apply(out)
        return call, setup

    def abandon(self, call: UacCall) -> None:
        """We stopped waiting for the INVITE's final: if a 200 comes after all, BYE it."""
        self.setups.pop(call.call_id, None)

    def hang_up(self, call: UacCall) -> None:
        self._apply(self.uac.hang_up(call, self.clock()))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            self.transport.close()

    def _apply(self, outputs: list[Output]) -> None:
        for item in outputs:
            if isinstance(item, Send):
                if self.transport is not None:
                    self.transport.sendto(item.data, item.destination)
            elif isinstance(item, Answered | Refused):
                setup = self.setups.pop(item.call.call_id, None)
                if setup is not None and not setup.done():
                    setup.set_result(item)
                elif isinstance(item, Answered):
                    self.hang_up(item.call)  # answered after we gave up on it
            elif isinstance(item, HungUp):
                leg = self.legs.get(item.call.call_id)
                if leg is not None:
                    leg.peer_hung_up(item.call.closed_reason)
        self._rearm()

    def _rearm(self) -> None:
        deadline = self.uac.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            delay = max(0.0, deadline - self.clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self._apply(self.uac.tick(self.clock()))


class _RtpLeg(asyncio.DatagramProtocol):
    """One call's RTP port: the caller's ticks out, the ingress's packets in (from its address
    only; others are counted as foreign and ignored)."""

    def __init__(self, caller: RtpCaller, clock: Clock) -> None:
        self.caller = caller
        self.clock = clock
        self.transport: asyncio.DatagramTransport | None = None
        self.remote: tuple[str, int] | None = None
        self.foreign = 0
        self._done: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    async def run(self, remote: tuple[str, int], *, hung_up: str | None = None) -> None:
        """Stream until the caller is done or the ingress hangs up."""
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        self.remote = remote
        self.caller.open(self.clock())
        if hung_up is not None:  # its BYE came with (or right after) the 200
            self.peer_hung_up(hung_up)
        self._tick()
        try:
            await self._done
        finally:
            if self._timer is not None:
                self._timer.cancel()

    def _tick(self) -> None:
        self._timer = None
        done = self._done
        if done is None or done.done() or self.transport is None or self.remote is None:
            return
        caller = self.caller
        try:
            datagrams = caller.tick(self.clock())
        except Exception as exc:  # a bug: fail the call, do not leave it to the loop's log
            done.set_exception(exc)
            return
        for datagram in datagrams:
            self.transport.sendto(datagram, self.remote)
        if caller.done:
            done.set_result(None)
            return
        delay = caller.next_tick_at - self.clock()
        self._timer = asyncio.get_running_loop().call_later(max(0.0, delay), self._tick)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if (addr[0], addr[1]) != self.remote:
            self.foreign += 1
            return
        self.caller.receive(data, self.clock())

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable: the ingress closed the port; its BYE follows

    def peer_hung_up(self, reason: str | None) -> None:
        self.caller.peer_hung_up(reason)
        if self._done is not None and not self._done.done():
            self._done.set_result(None)
