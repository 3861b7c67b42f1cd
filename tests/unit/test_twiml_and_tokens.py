"""The TwiML our voice webhook returns, and the single-use stream tokens it carries."""

from __future__ import annotations

import pickle
import xml.etree.ElementTree as ET
from collections.abc import Callable

import pytest

from services.errors import ConfigError, MediaStreamProtocolError, UserError
from services.telephony.stream_tokens import RedeemedToken, StreamTokenError, StreamTokens
from services.telephony.twiml import busy_twiml, connect_stream_twiml
from tests.virtual_time import FakeClock

STREAM_URL = "wss://voice.example.com/twilio/media"
CALL_SID = "CAe3f3ca4bf8f4fd33fe008db432345ef2"
OTHER_CALL_SID = "CA00000000000000000000000000000000"
SECRET = b"0123456789abcdef0123456789abcdef"

# --- TwiML ----------------------------------------------------------------------------------


def test_connect_stream_document() -> None:
    twiml = connect_stream_twiml(STREAM_URL, {"token": "v1.abc.123.n.m"})
    assert twiml == (
        '<?xml version="1.0" encoding="UTF-8"?>'
        "<Response><Connect>"
        f'<Stream url="{STREAM_URL}"><Parameter name="token" value="v1.abc.123.n.m" /></Stream>'
        "</Connect></Response>"
    )


def test_connect_stream_without_parameters() -> None:
    root = ET.fromstring(connect_stream_twiml(STREAM_URL))
    stream = root.find("./Connect/Stream")
    assert stream is not None
    assert stream.get("url") == STREAM_URL
    assert list(stream) == []


def test_parameters_are_xml_escaped() -> None:
    nasty = {'a"b': '<x>&"y"\n', "tenant": "acme"}
    twiml = connect_stream_twiml(STREAM_URL, nasty)
    assert "<x>" not in twiml
    root = ET.fromstring(twiml)
    parsed = {p.get("name"): p.get("value") for p in root.iterfind("./Connect/Stream/Parameter")}
    assert parsed == nasty


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://voice.example.com/twilio/media", "wss://"),
        ("/twilio/media", "wss://"),
        ("wss://voice.example.com/twilio/media?token=abc", "query"),
        ("wss://voice.example.com/twilio/media#frag", "query or fragment"),
    ],
)
def test_stream_url_must_be_absolute_wss_without_query(url: str, problem: str) -> None:
    with pytest.raises(UserError, match=problem):
        connect_stream_twiml(url, {})


def test_parameter_length_limit() -> None:
    connect_stream_twiml(STREAM_URL, {"token": "x" * (499 - len("token"))})
    with pytest.raises(UserError, match="under 500 characters"):
        connect_stream_twiml(STREAM_URL, {"token": "x" * (500 - len("token"))})


def test_busy_document_says_then_hangs_up() -> None:
    twiml = busy_twiml("All lines are busy & we're sorry <3")
    assert twiml.startswith('<?xml version="1.0" encoding="UTF-8"?><Response><Say>')
    assert "&amp;" in twiml and "&lt;3" in twiml
    root = ET.fromstring(twiml)
    assert [child.tag for child in root] == ["Say", "Hangup"]
    assert root[0].text == "All lines are busy & we're sorry <3"
    assert len(root[1]) == 0 and not root[1].text


# --- stream tokens --------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tokens(clock: FakeClock) -> StreamTokens:
    return StreamTokens(SECRET, ttl_s=30.0, clock=clock)


def rejection(tokens: StreamTokens, token: str, call_sid: str = CALL_SID) -> StreamTokenError:
    with pytest.raises(StreamTokenError) as caught:
        tokens.redeem(token, call_sid)
    return caught.value


def test_issue_then_redeem(tokens: StreamTokens) -> None:
    token = tokens.issue(CALL_SID)
    assert token.isascii() and len(token) < 200
    tokens.redeem(token, CALL_SID)


def test_redeem_returns_what_a_cluster_ledger_needs(tokens: StreamTokens, clock: FakeClock) -> None:
    issued_at_ms = clock.now * 1000
    token = tokens.issue(CALL_SID)
    clock.now += 5.0
    redeemed = tokens.redeem(token, CALL_SID)
    # The nonce is the signed fourth part; the expiry is the issue time plus the ttl, not the
    # redeem time, so a ledger forgets the token exactly when every ingress refuses it anyway.
    assert redeemed == RedeemedToken(token.split(".")[3], int(issued_at_ms + 30_000))
    assert len(redeemed.nonce) == 22  # 16 random bytes, base64url without padding
    other = tokens.redeem(tokens.issue(CALL_SID), CALL_SID)
    assert other.nonce != redeemed.nonce


def test_the_same_token_redeemed_by_another_process_gives_the_same_nonce(
    tokens: StreamTokens, clock: FakeClock
) -> None:
    # Another ingress (same secret, its own memory) accepts a replay; the identical nonce is
    # what lets a shared ledger catch it.
    sibling = StreamTokens(SECRET, ttl_s=30.0, clock=clock)
    token = tokens.issue(CALL_SID)
    assert tokens.redeem(token, CALL_SID) == sibling.redeem(token, CALL_SID)


def test_tokens_are_unique(tokens: StreamTokens) -> None:
    assert tokens.issue(CALL_SID) != tokens.issue(CALL_SID)


def test_replay_is_refused(tokens: StreamTokens) -> None:
    token = tokens.issue(CALL_SID)
    tokens.redeem(token, CALL_SID)
    error = rejection(tokens, token)
    assert error.reason == "replayed"
    assert "already used" in str(error)


def test_wrong_call_is_refused_and_does_not_burn_the_token(tokens: StreamTokens) -> None:
    token = tokens.issue(CALL_SID)
    error = rejection(tokens, token, OTHER_CALL_SID)
    assert error.reason == "wrong_call"
    assert "another call" in str(error)
    tokens.redeem(token, CALL_SID)


def test_expired_token_is_refused(tokens: StreamTokens, clock: FakeClock) -> None:
    token = tokens.issue(CALL_SID)
    clock.now += 29.999
    tokens.redeem(token, CALL_SID)
    late = tokens.issue(CALL_SID)
    clock.now += 30.0
    error = rejection(tokens, late)
    assert error.reason == "expired"
    assert "expired" in str(error)


def test_token_signed_with_another_secret_is_forged(tokens: StreamTokens, clock: FakeClock) -> None:
    other = StreamTokens(b"another-secret-of-32-bytes-long!", ttl_s=30.0, clock=clock)
    assert rejection(tokens, other.issue(CALL_SID)).reason == "forged"


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"), id="signature"),
        pytest.param(lambda t: t.replace(".", ".9", 2).replace(".9", ".", 1), id="expiry"),
        pytest.param(lambda t: t.split(".", 2)[0] + ".Q0Ex." + t.split(".", 2)[2], id="call"),
    ],
)
def test_tampered_token_is_forged(tokens: StreamTokens, tamper: Callable[[str], str]) -> None:
    token = tokens.issue(CALL_SID)
    forged = tamper(token)
    assert forged != token
    assert rejection(tokens, forged).reason == "forged"


@pytest.mark.parametrize(
    "token", ["", "garbage", "v1.a.b.c.d", "v2.Q0E.1.bm9uY2U.sig", "v1.Q0E.1.n", "....."]
)
def test_malformed_token(tokens: StreamTokens, token: str) -> None:
    assert rejection(tokens, token).reason == "malformed"


def test_used_tokens_are_forgotten_after_expiry(tokens: StreamTokens, clock: FakeClock) -> None:
    for _ in range(100):
        tokens.redeem(tokens.issue(CALL_SID), CALL_SID)
    assert tokens.remembered == 100
    clock.now += 31
    tokens.redeem(tokens.issue(CALL_SID), CALL_SID)
    assert tokens.remembered == 1


def test_token_errors_are_media_stream_protocol_errors_that_pickle(tokens: StreamTokens) -> None:
    error = rejection(tokens, "garbage")
    assert isinstance(error, MediaStreamProtocolError)
    clone = pickle.loads(pickle.dumps(error))
    assert isinstance(clone, StreamTokenError)
    assert (clone.reason, str(clone)) == ("malformed", str(error))


def test_secret_never_in_repr(tokens: StreamTokens) -> None:
    assert SECRET.decode() not in repr(tokens)
    assert "ttl_s=30.0" in repr(tokens)


@pytest.mark.parametrize(
    ("secret", "ttl_s", "problem"),
    [(b"short", 30.0, "at least 16 bytes"), (SECRET, 0.0, "positive"), (SECRET, -1, "positive")],
)
def test_bad_settings(secret: bytes, ttl_s: float, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        StreamTokens(secret, ttl_s=ttl_s)


def test_issue_needs_a_call_sid(tokens: StreamTokens) -> None:
    with pytest.raises(UserError):
        tokens.issue("")


def test_a_token_that_is_not_ascii_is_malformed_not_a_crash(tokens: StreamTokens) -> None:
    good = tokens.issue("CA1")
    for bad in (good[:-2] + "\ud800x", good[:-2] + "é!"):
        with pytest.raises(StreamTokenError) as refused:
            tokens.redeem(bad, "CA1")
        assert refused.value.reason == "malformed"
