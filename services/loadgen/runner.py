"""The asyncio driver of simulated Twilio callers: ``callray loadtest`` runs :func:`run_load`.

Each call does what Twilio does for an inbound call: ``POST`` the voice webhook with Twilio's
form fields, read the TwiML, and for ``<Connect><Stream>`` open the media WebSocket and stream
(reference/telephony.md §1). Everything the call does on the stream is decided by the sans-I/O
:class:`~services.loadgen.twilio_caller.TwilioCaller`; this module only moves its messages and
reads the clock. Each call's media leg (:class:`~services.loadgen.media_leg.MediaLeg`) paces its
own 20 ms ticks with a timer on its own phase; the load generator's own lateness is reported
(``loadgen.max_tick_lag_ms``) so an overloaded generator is not mistaken for a slow ingress.
Every wait is bounded by ``timeout_s``, and a call's media leg by its duration plus drain plus
``timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from typing import Final, TextIO

import aiohttp
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from services.errors import CallrayError, TransportError
from services.loadgen.audio import load_wav_ulaw, tone_ulaw
from services.loadgen.live_status import LiveStatus
from services.loadgen.media_leg import MediaLeg
from services.loadgen.media_socket import MediaSocket
from services.loadgen.options import LoadOptions
from services.loadgen.report import CallResult, LoadReport
from services.loadgen.script import CallerScript
from services.loadgen.twilio_caller import TwilioCaller
from services.loadgen.twiml_reader import (
    MAX_TWIML_BYTES,
    Rejected,
    StreamAnswer,
    parse_voice_answer,
    rebase_stream_url,
)
from services.loadgen.wire import StreamIdentity, new_sid
from services.telephony.twilio_signature import SIGNATURE_HEADER, public_request_url

__all__ = ["run_load"]

Clock = Callable[[], float]
_TO_NUMBER: Final = "+15555550100"
_MAX_APP_MESSAGE_BYTES: Final = 1 << 20


async def run_load(
    options: LoadOptions, *, clock: Clock = time.monotonic, progress: TextIO | None = None
) -> LoadReport:
    """Run ``options.calls`` simulated callers against the ingress and measure them.

    ``progress`` receives a live status line; by default stderr when it is a terminal or when
    ``options.progress`` asks for it. ``clock`` must count seconds like the event loop's clock
    (sleeps are the loop's); it is a parameter so measurements can be read on another clock
    that runs at the same rate. ``options.provider`` says how calls arrive; SIP calls are
    placed by :func:`services.loadgen.sip_runner.run_sip_load`.
    """
    if options.provider == "sip":
        from services.loadgen.sip_runner import run_sip_load

        return await run_sip_load(options, clock=clock, progress=progress)
    speech = load_wav_ulaw(options.wav) if options.wav else tone_ulaw(1000)
    if progress is None and (
        options.progress or (options.progress is None and sys.stderr.isatty())
    ):
        progress = sys.stderr
    live = LiveStatus()
    run = _Run(options, speech, clock, live, account_sid=new_sid("AC"))
    started = clock()
    timeout = aiohttp.ClientTimeout(total=options.timeout_s)
    # No pool limit: concurrency is bounded by our semaphore, and waiting for a pooled
    # connection would show up as ingress setup time.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        # A TaskGroup: a bug in one call cancels the others instead of leaving them running.
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(
                    run.scheduled_call(http, i, started + i * options.ramp_s / options.calls)
                )
                for i in range(options.calls)
            ]
            if progress is not None:
                group.create_task(live.report_until_done(progress, tasks))
    results = tuple(task.result() for task in tasks)
    return LoadReport(options=options.describe(), elapsed_s=clock() - started, calls=results)


class _Run:
    """Shared state of one load test: its options, the caller's voice, the clock."""

    def __init__(
        self,
        options: LoadOptions,
        speech: bytes,
        clock: Clock,
        live: LiveStatus,
        *,
        account_sid: str,
    ) -> None:
        self.options = options
        self.speech = speech
        self.clock = clock
        self.live = live
        self.account_sid = account_sid
        self.limit = asyncio.Semaphore(options.concurrency or options.calls)
        self.signer = RequestValidator(options.auth_token.value) if options.auth_token else None

    async def scheduled_call(
        self, http: aiohttp.ClientSession, index: int, at: float
    ) -> CallResult:
        await asyncio.sleep(max(0.0, at - self.clock()))
        async with self.limit:
            self.live.active += 1
            try:
                result = await self.call(http, index)
            finally:
                self.live.active -= 1
        self.live.finished(result)
        return result

    def script(self, index: int) -> CallerScript:
        return CallerScript.for_call(self.options, index, self.speech)

    async def call(self, http: aiohttp.ClientSession, index: int) -> CallResult:
        identity = StreamIdentity.generate(self.account_sid)
        post_sent_at = self.clock()
        try:
            answer = await self.post_voice(http, identity, index)
        except (aiohttp.ClientError, TimeoutError, CallrayError) as exc:
            return CallResult(index=index, outcome="failed", error=_describe(exc))
        answered_at = self.clock()
        if isinstance(answer, Rejected):
            twiml_ms = (answered_at - post_sent_at) * 1000
            return CallResult(index=index, outcome="rejected", twiml_ms=twiml_ms)
        caller = TwilioCaller(identity, self.script(index), answer.parameters)
        try:
            async with asyncio.timeout(self.options.timeout_s):
                socket = await self.open_stream(answer)
        except (OSError, TimeoutError, InvalidHandshake, CallrayError) as exc:
            twiml_ms = (answered_at - post_sent_at) * 1000
            error = f"media WebSocket: {_describe(exc)}"
            return CallResult(index=index, outcome="failed", error=error, twiml_ms=twiml_ms)
        ws_open_at = self.clock()
        failure = await self.media_leg(socket, caller)
        return CallResult.from_caller(
            index,
            caller,
            post_sent_at=post_sent_at,
            answered_at=answered_at,
            ws_open_at=ws_open_at,
            error=failure,
            close_reason=socket.close_reason if caller.ended_by == "ingress" else None,
        )

    async def media_leg(self, socket: MediaSocket, caller: TwilioCaller) -> str | None:
        """Stream until the caller is done; returns what went wrong, if anything."""
        o = self.options
        self.live.attach(caller)
        try:
            async with asyncio.timeout(o.duration_s + o.drain_s + o.timeout_s):
                await MediaLeg(socket, caller, self.clock).run()
        except (OSError, TimeoutError, ConnectionClosed, CallrayError) as exc:
            return _describe(exc)
        finally:
            self.live.detach(caller)
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(socket.close(), o.timeout_s)
        return None

    async def post_voice(
        self, http: aiohttp.ClientSession, identity: StreamIdentity, index: int
    ) -> StreamAnswer | Rejected:
        """The voice webhook request Twilio makes when the call rings."""
        o = self.options
        caller_number = f"+1555{index % 10_000_000:07d}"  # 555: a fictional number range
        form = {
            "AccountSid": identity.account_sid,
            "ApiVersion": "2010-04-01",
            "CallSid": identity.call_sid,
            "CallStatus": "ringing",
            "Direction": "inbound",
            "From": caller_number,
            "To": _TO_NUMBER,
            "Called": _TO_NUMBER,
            "Caller": caller_number,
        }
        headers = {}
        if self.signer is not None:
            signed_url = public_request_url(o.public_url or o.base_url, o.voice_path)
            headers[SIGNATURE_HEADER] = self.signer.compute_signature(signed_url, form)
        url = o.base_url.rstrip("/") + o.voice_path
        async with http.post(url, data=form, headers=headers) as response:
            body = await response.content.read(MAX_TWIML_BYTES + 1)
            if response.status != 200:
                raise TransportError(f"voice webhook answered HTTP {response.status}")
        return parse_voice_answer(body)

    async def open_stream(self, answer: StreamAnswer) -> MediaSocket:
        o = self.options
        url = rebase_stream_url(answer.url, o.base_url) if o.rebase_stream_url else answer.url
        headers = {}
        if self.signer is not None:
            # Twilio signs the upgrade over the wss:// URL as written in the TwiML, no params.
            headers[SIGNATURE_HEADER] = self.signer.compute_signature(answer.url, {})
        return await MediaSocket.connect(url, headers=headers, max_size=_MAX_APP_MESSAGE_BYTES)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
