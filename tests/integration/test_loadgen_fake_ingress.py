"""Simulated Twilio callers against a minimal Twilio-facing peer on loopback.

The peer answers the voice webhook with ``<Connect><Stream>`` TwiML carrying a single-use stream
token (busy TwiML when full), parses the media stream with the real :class:`TwilioSerializer`,
checks the start message, the token and the pacing fields, echoes every media frame back followed
by a mark, and sends a ``clear`` whenever loud audio starts. With an auth token it also checks
``X-Twilio-Signature`` on the webhook and on the WebSocket upgrade.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import WSMsgType, web

from services.loadgen.audio import frame_rms
from services.loadgen.cli import add_loadtest_parser
from services.loadgen.options import LoadOptions
from services.loadgen.runner import run_load
from services.telephony.media_streams import (
    MarkReceived,
    MediaReceived,
    StreamStarted,
    StreamStopped,
    TwilioSerializer,
)
from services.telephony.stream_tokens import StreamTokenError, StreamTokens
from services.telephony.twilio_signature import (
    SIGNATURE_HEADER,
    is_valid_twilio_signature,
    public_request_url,
)
from services.telephony.twiml import busy_twiml, connect_stream_twiml
from tests.conftest import TIMEOUT_FACTOR

pytestmark = pytest.mark.integration

PUBLIC_URL = "https://voice.example.com"
STREAM_URL = "wss://voice.example.com/twilio/media"
LOUD_RMS = 2000.0  # the tone is ~6500; silence with a tag is under 100


class FakeIngress:
    def __init__(
        self, capacity: int, auth_token: str = "", *, hang_up_after: int = 0, fail_post: int = -1
    ) -> None:
        self.capacity, self.auth_token = capacity, auth_token
        self.hang_up_after = hang_up_after  # close the socket after this many frames (0: never)
        self.fail_post, self.posts = fail_post, 0  # answer HTTP 500 to this POST (0-based)
        self.tokens = StreamTokens(secrets.token_bytes(32), ttl_s=30)
        self.active = self.stops = self.clears_sent = 0
        self.marks_sent = self.marks_echoed = 0
        self.problems: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/twilio/voice", self.voice)
        app.router.add_get("/twilio/media", self.media)
        return app

    def check_signature(self, url: str, params: dict[str, str], request: web.Request) -> None:
        signature = request.headers.get(SIGNATURE_HEADER)
        if self.auth_token and not is_valid_twilio_signature(
            url, params, signature, self.auth_token
        ):
            self.problems.append(f"bad signature for {url}")

    async def voice(self, request: web.Request) -> web.Response:
        form = {key: str(value) for key, value in (await request.post()).items()}
        self.posts += 1
        if self.posts - 1 == self.fail_post:
            return web.Response(status=500)
        self.check_signature(public_request_url(PUBLIC_URL, "/twilio/voice"), form, request)
        if not (
            re.fullmatch("CA[0-9a-f]{32}", form.get("CallSid", ""))
            and re.fullmatch("AC[0-9a-f]{32}", form.get("AccountSid", ""))
            and form.get("CallStatus") == "ringing"
            and form.get("Direction") == "inbound"
            and form.get("From")
            and form.get("To")
        ):
            self.problems.append(f"webhook form {form}")
        if self.active >= self.capacity:
            return web.Response(text=busy_twiml("All lines are busy."), content_type="text/xml")
        self.active += 1
        params = {"token": self.tokens.issue(form["CallSid"]), "tenant": "acme"}
        return web.Response(text=connect_stream_twiml(STREAM_URL, params), content_type="text/xml")

    async def media(self, request: web.Request) -> web.WebSocketResponse:
        self.check_signature(STREAM_URL, {}, request)
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        try:
            await self.stream(socket)
        finally:
            self.active -= 1
        return socket

    async def stream(self, socket: web.WebSocketResponse) -> None:
        serializer, chunks, loud = TwilioSerializer(), 0, False
        async for message in socket:
            assert message.type is WSMsgType.TEXT
            event = serializer.parse(message.data)
            sid = serializer.stream_id or ""
            if isinstance(event, StreamStarted):
                self.check_start(event)
            elif isinstance(event, MediaReceived):
                chunks += 1
                if (event.chunk, event.timestamp_ms, len(event.payload)) != (
                    chunks, 20 * (chunks - 1), 160
                ):  # fmt: skip
                    self.problems.append(f"media {event.chunk}/{event.timestamp_ms}")
                was_loud, loud = loud, frame_rms(event.payload) > LOUD_RMS
                if loud and not was_loud:
                    self.clears_sent += 1
                    await socket.send_str(serializer.encode_clear(sid))
                await socket.send_str(serializer.encode_media(sid, event.payload))
                self.marks_sent += 1
                await socket.send_str(serializer.encode_mark(sid, f"m{chunks}"))
                if chunks == self.hang_up_after:
                    await socket.close()  # a clean close: the call is over (reference §1.1)
                    return
            elif isinstance(event, MarkReceived):
                self.marks_echoed += 1
            elif isinstance(event, StreamStopped):
                self.stops += 1

    def check_start(self, start: StreamStarted) -> None:
        try:
            self.tokens.redeem(start.custom_parameters.get("token", ""), start.call_id)
        except StreamTokenError as exc:
            self.problems.append(f"token: {exc.reason}")
        media_format = (start.encoding, start.sample_rate, start.channels, start.tracks)
        if media_format != ("audio/x-mulaw", 8000, 1, ("inbound",)):
            self.problems.append(f"start format {media_format}")
        if start.custom_parameters.get("tenant") != "acme":
            self.problems.append("custom parameters lost")


async def serve(ingress: FakeIngress) -> AsyncIterator[str]:
    runner = web.AppRunner(ingress.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def ingress() -> AsyncIterator[tuple[FakeIngress, str]]:
    fake = FakeIngress(capacity=5)
    async for url in serve(fake):
        yield fake, url


async def test_callers_measure_echo_marks_and_barge_in(ingress: tuple[FakeIngress, str]) -> None:
    fake, url = ingress
    options = LoadOptions(
        base_url=url, calls=6, ramp_s=0.25, duration_s=1.6, barge_in_rate=0.5,
        opening_ms=200, barge_in_ms=200, drain_s=1.0, timeout_s=5 * TIMEOUT_FACTOR,
    )  # fmt: skip
    progress = io.StringIO()
    report = await run_load(options, progress=progress)
    data = json.loads(report.to_json())

    assert fake.problems == []
    assert data["calls"] | {"errors": {}} == {
        "requested": 6, "completed": 5, "rejected": 1, "failed": 0, "hung_up_by_ingress": 0,
        "errors": {},
    }, data["calls"]  # fmt: skip
    assert fake.stops == 5 and fake.active == 0
    completed = [c for c in report.calls if c.outcome == "completed"]
    for call in completed:
        assert (call.frames_sent, call.echoed, call.lost, call.flushed) == (80, 80, 0, 0)
        assert (call.reordered, call.duplicates, call.unknown_tags) == (0, 0, 0)
        assert call.marks_received == call.marks_echoed == 80
        assert 0 < call.twiml_ms < call.ws_open_ms < call.first_audio_ms
    assert fake.marks_echoed == fake.marks_sent == 400
    latency = data["echo_latency_ms"]
    assert latency["count"] == 400 and 0 < latency["min"]
    assert latency["p50"] < 20 * TIMEOUT_FACTOR
    assert sum(data["echo_latency_histogram"]["counts"]) == 400

    barging = [c for c in completed if options.barges_in(c.index)]
    barge = data["barge_in"]
    assert barge["planned"] == barge["started"] == barge["cleared"] == len(barging) > 0
    assert barge["missed"] == 0 and barge["stale_ms"]["max"] == 0
    assert 0 < barge["clear_latency_ms"]["max"] < 50 * TIMEOUT_FACTOR
    for call in completed:  # one clear for the opening words, one more for a barge-in
        assert call.clears_received == 1 + (call in barging)
    assert fake.clears_sent == data["clears_received"]
    assert "calls active" in progress.getvalue()


async def test_the_cli_signs_requests_and_writes_json_and_png(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    token = "test-auth-token-0123456789"
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", token)
    monkeypatch.setenv("CALLRAY_PUBLIC_URL", PUBLIC_URL)
    fake = FakeIngress(capacity=10, auth_token=token)
    async for url in serve(fake):
        parser = argparse.ArgumentParser(prog="callray")
        add_loadtest_parser(parser.add_subparsers(dest="command"))
        out, png = tmp_path / "report.json", tmp_path / "latency.png"
        args = parser.parse_args(
            ["loadtest", "--url", url, "--calls", "2", "--ramp", "0.1", "--duration", "0.5",
             "--out", str(out), "--png", str(png)]
        )  # fmt: skip
        code = await asyncio.to_thread(args.run, args)
    assert code == 0 and fake.problems == []
    data = json.loads(out.read_text())
    assert data["calls"]["completed"] == 2 and data["options"]["auth_token"] is True
    assert data["frames"]["echoed"] == data["frames"]["sent"] == 50
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_a_hang_up_ends_the_call_and_a_webhook_error_fails_it() -> None:
    fake = FakeIngress(capacity=5, hang_up_after=10, fail_post=1)
    async for url in serve(fake):
        options = LoadOptions(base_url=url, calls=2, ramp_s=0.2, duration_s=1.0)
        report = await run_load(options)
    hung_up, failed = report.calls
    assert (hung_up.outcome, hung_up.ended_by, hung_up.echoed) == ("completed", "ingress", 10)
    assert hung_up.frames_sent < 20  # it stopped sending well before the 50 frames of 1 s
    assert (failed.outcome, failed.error) == (
        "failed", "TransportError: voice webhook answered HTTP 500"
    )  # fmt: skip
    assert fake.problems == [] and fake.stops == 0
