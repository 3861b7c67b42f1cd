"""The Twilio bridge's ``start`` handling, without sockets: a verified token travels in the
``OpenCall`` action for the gateway to claim cluster-wide; a refused one produces no action, so it
never reaches the ledger."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from services.gateway.twilio_bridge import OpenCall, TwilioBridge
from services.telephony.stream_tokens import RedeemedToken, StreamTokenError, StreamTokens
from tests.virtual_time import FakeClock

SECRET = b"0123456789abcdef0123456789abcdef"
CALL_SID = "CAe3f3ca4bf8f4fd33fe008db432345ef2"
OTHER_CALL_SID = "CA00000000000000000000000000000000"
ACCOUNT_SID = "ACc40bbbe5755558e367f6827a91c689ac"
STREAM_SID = "MZ9073a0d707f1305fec1c3c07da702b81"


def start_frame(token: str, call_sid: str = CALL_SID) -> str:
    return json.dumps(
        {
            "event": "start",
            "streamSid": STREAM_SID,
            "start": {
                "streamSid": STREAM_SID,
                "accountSid": ACCOUNT_SID,
                "callSid": call_sid,
                "tracks": ["inbound"],
                "customParameters": {"token": token, "tenant": "acme"},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tokens(clock: FakeClock) -> StreamTokens:
    return StreamTokens(SECRET, ttl_s=30.0, clock=clock)


def test_a_valid_start_carries_the_redeemed_token(tokens: StreamTokens) -> None:
    token = tokens.issue(CALL_SID)
    actions = TwilioBridge(tokens).receive(start_frame(token))
    assert actions == [
        OpenCall(
            CALL_SID,
            STREAM_SID,
            {"tenant": "acme", "account_sid": ACCOUNT_SID},
            RedeemedToken(token.split(".")[3], int(token.split(".")[2])),
        )
    ]


def test_without_tokens_there_is_nothing_to_claim() -> None:
    (action,) = TwilioBridge(None).receive(start_frame("anything"))
    assert isinstance(action, OpenCall) and action.token is None


def _forged(tokens: StreamTokens, clock: FakeClock) -> tuple[str, str]:
    token = tokens.issue(CALL_SID)
    return token[:-1] + ("A" if token[-1] != "A" else "B"), CALL_SID


def _expired(tokens: StreamTokens, clock: FakeClock) -> tuple[str, str]:
    token = tokens.issue(CALL_SID)
    clock.now += 30.0
    return token, CALL_SID


def _other_secret(tokens: StreamTokens, clock: FakeClock) -> tuple[str, str]:
    other = StreamTokens(b"another-secret-of-32-bytes-long!", ttl_s=30.0, clock=clock)
    return other.issue(CALL_SID), CALL_SID


def _wrong_call(tokens: StreamTokens, clock: FakeClock) -> tuple[str, str]:
    return tokens.issue(OTHER_CALL_SID), CALL_SID


def _replayed(tokens: StreamTokens, clock: FakeClock) -> tuple[str, str]:
    token = tokens.issue(CALL_SID)
    tokens.redeem(token, CALL_SID)
    return token, CALL_SID


def _missing(tokens: StreamTokens, clock: FakeClock) -> tuple[str, str]:
    return "", CALL_SID


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(_forged, "forged", id="forged"),
        pytest.param(_other_secret, "forged", id="other-secret"),
        pytest.param(_expired, "expired", id="expired"),
        pytest.param(_wrong_call, "wrong_call", id="wrong-call"),
        pytest.param(_replayed, "replayed", id="replayed-here"),
        pytest.param(_missing, "malformed", id="missing"),
    ],
)
def test_a_refused_token_yields_no_open_call(
    tokens: StreamTokens,
    clock: FakeClock,
    make: Callable[[StreamTokens, FakeClock], tuple[str, str]],
    reason: str,
) -> None:
    token, call_sid = make(tokens, clock)
    bridge = TwilioBridge(tokens)
    with pytest.raises(StreamTokenError) as caught:
        bridge.receive(start_frame(token, call_sid))
    assert caught.value.reason == reason
    # No action came back, so the gateway has nothing to claim; the stream stays unbound.
    assert bridge.call_id is None and bridge.stream_id is None
