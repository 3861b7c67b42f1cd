"""The local model's webhook signer and sender: signatures ``openai``'s own ``webhooks.unwrap``
accepts, the body OpenAI's SIP connector sends, retries with one id, duplicates on demand."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from aiohttp import web

from services.config import Secret
from services.errors import ConfigError
from services.localmodel.webhook_sender import (
    WebhookSender,
    incoming_event,
    sign,
    signed_headers,
    without_authorization,
)
from tests.virtual_time import FakeClock

SECRET = "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seQ=="  # base64 of "secret-key-for-tests-only"
CLIENT = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")
HEADERS = [
    ("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1"),
    ("From", "<sip:+14155550100@carrier.example>;tag=a"),
    ("Authorization", 'Digest username="trunk", response="deadbeef"'),
    ("To", "<sip:+18005550100@example.com>"),
    ("Proxy-Authorization", 'Digest username="p"'),
    ("Record-Route", "<sip:p1.example;lr>"),
    ("record-route", "<sip:p2.example;lr>"),
    ("authorization", "lowercase too"),
]


def test_the_signature_is_what_openai_unwrap_accepts() -> None:
    body = incoming_event("rtc_123", HEADERS[:2], event_id="evt_1", created_at=int(time.time()))
    headers = signed_headers(SECRET, "wh_1", int(time.time()), body)
    event = CLIENT.webhooks.unwrap(body, headers, secret=SECRET)
    assert event.type == "realtime.call.incoming"
    assert event.data.call_id == "rtc_123"
    assert [(h.name, h.value) for h in event.data.sip_headers] == HEADERS[:2]


def test_a_wrong_secret_a_changed_body_or_an_old_timestamp_fail_unwrap() -> None:
    now = int(time.time())
    body = incoming_event("rtc_1", [], event_id="evt_1", created_at=now)
    other = "whsec_" + "b3RoZXItc2VjcmV0"
    for secret, sent, ts in [
        (other, body, now),
        (SECRET, body.replace(b"rtc_1", b"rtc_2"), now),
        (SECRET, body, now - 301),
    ]:
        headers = signed_headers(secret, "wh_1", ts, body)
        with pytest.raises(openai.InvalidWebhookSignatureError):
            CLIENT.webhooks.unwrap(sent, headers, secret=SECRET)


def test_sign_is_hmac_sha256_of_id_timestamp_body_with_the_decoded_secret() -> None:
    # Standard Webhooks' published example (standard-webhooks/libraries, the spec's test vector).
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected


def test_sip_headers_lose_authorization_and_keep_order_and_repeats() -> None:
    assert without_authorization(HEADERS) == [
        HEADERS[0],
        HEADERS[1],
        HEADERS[3],
        HEADERS[5],
        HEADERS[6],
    ]
    body = json.loads(incoming_event("rtc_9", HEADERS[:2], event_id="evt_9", created_at=5))
    assert body == {
        "object": "event",
        "id": "evt_9",
        "type": "realtime.call.incoming",
        "created_at": 5,
        "data": {
            "call_id": "rtc_9",
            "sip_headers": [{"name": n, "value": v} for n, v in HEADERS[:2]],
        },
    }


def test_a_malformed_secret_fails_when_the_sender_is_made() -> None:
    with pytest.raises(ConfigError):
        WebhookSender("http://127.0.0.1:9/", Secret("whsec_not base64!"))
    with pytest.raises(ConfigError):
        WebhookSender("http://127.0.0.1:9/", Secret(""))


class Receiver:
    """A webhook endpoint on 127.0.0.1 that answers the statuses it is given, in order."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recv = Receiver([])
    app = web.Application()
    app.router.add_post("/hook", recv.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    recv.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield recv
    await runner.cleanup()


async def _until(predicate: Any) -> None:
    async with asyncio.timeout(5):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_failed_deliveries_are_retried_after_1_2_4_s_with_the_same_id(
    receiver: Receiver,
) -> None:
    receiver.statuses = [500, 503, 404, 500]
    clock = FakeClock()
    sender = WebhookSender(receiver.url, Secret(SECRET), timers=clock, clock=time.time)
    try:
        task = asyncio.ensure_future(sender.send_incoming("rtc_7", HEADERS[:2]))
        await _until(lambda: len(receiver.received) == 1)
        for delay, attempts in [(1.0, 2), (2.0, 3), (4.0, 4)]:
            clock.advance(delay - 0.01)
            await asyncio.sleep(0.05)
            assert len(receiver.received) == attempts - 1  # not before its time
            clock.advance(0.01)
            await _until(lambda n=attempts: len(receiver.received) == n)
        assert await task is False
    finally:
        await sender.close()
    ids = {headers["webhook-id"] for headers, _ in receiver.received}
    assert len(ids) == 1 and ids.pop().startswith("wh_")
    bodies = {body for _, body in receiver.received}
    assert len(bodies) == 1  # the same event each time
    for headers, body in receiver.received:  # each attempt signed as it went out
        assert CLIENT.webhooks.unwrap(body, headers, secret=SECRET).type == (
            "realtime.call.incoming"
        )


async def test_a_2xx_ends_the_retries_and_duplicates_share_one_id(receiver: Receiver) -> None:
    receiver.statuses = [200, 200, 200]
    sender = WebhookSender(receiver.url, Secret(SECRET), duplicates=3)
    try:
        assert await sender.send_incoming("rtc_8", []) is True
    finally:
        await sender.close()
    assert len(receiver.received) == 3
    assert len({headers["webhook-id"] for headers, _ in receiver.received}) == 1


async def test_an_unreachable_receiver_is_retried_then_given_up() -> None:
    sender = WebhookSender("http://127.0.0.1:9/hook", Secret(SECRET), retry_delays_s=(0.0, 0.0))
    try:
        assert await sender.send_incoming("rtc_x", []) is False
    finally:
        await sender.close()
    assert sender.attempts == 3
