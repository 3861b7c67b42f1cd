"""X-Twilio-Signature checks, with signatures computed by the twilio package itself (TW-SEC)."""

from __future__ import annotations

import pytest
from twilio.request_validator import RequestValidator

from services.errors import ConfigError
from services.telephony.twilio_signature import is_valid_twilio_signature, public_request_url

AUTH_TOKEN = "12345678901234567890123456789012"
PUBLIC_URL = "https://voice.example.com"
VOICE_URL = "https://voice.example.com/twilio/voice?tenant=acme"
VOICE_PARAMS = {
    "CallSid": "CAe3f3ca4bf8f4fd33fe008db432345ef2",
    "AccountSid": "ACc40bbbe5755558e367f6827a91c689ac",
    "From": "+14155550100",
    "To": "+14155550199",
    "CallStatus": "ringing",
    "Direction": "inbound",
}


def twilio_sign(url: str, params: dict[str, str]) -> str:
    signature: str = RequestValidator(AUTH_TOKEN).compute_signature(url, params)
    return signature


def test_webhook_signature_validates() -> None:
    signature = twilio_sign(VOICE_URL, VOICE_PARAMS)
    assert is_valid_twilio_signature(VOICE_URL, VOICE_PARAMS, signature, AUTH_TOKEN)


def test_websocket_upgrade_signature_validates() -> None:
    # Twilio signs the upgrade over the wss:// URL from the TwiML, with no params (reference §1.6).
    url = public_request_url(PUBLIC_URL, "/twilio/media", websocket=True)
    assert url == "wss://voice.example.com/twilio/media"
    assert is_valid_twilio_signature(url, {}, twilio_sign(url, {}), AUTH_TOKEN)


def test_url_with_explicit_default_port_validates() -> None:
    # Twilio sometimes signs with ":443", sometimes without; the validator accepts both.
    signature = twilio_sign("https://voice.example.com:443/twilio/voice?tenant=acme", VOICE_PARAMS)
    assert is_valid_twilio_signature(VOICE_URL, VOICE_PARAMS, signature, AUTH_TOKEN)


def test_forged_signature_fails() -> None:
    forged = RequestValidator("not-the-auth-token").compute_signature(VOICE_URL, VOICE_PARAMS)
    assert not is_valid_twilio_signature(VOICE_URL, VOICE_PARAMS, forged, AUTH_TOKEN)


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example.com/twilio/voice?tenant=acme",
        "https://voice.example.com/twilio/other?tenant=acme",
        "https://voice.example.com/twilio/voice?tenant=other",
        "http://voice.example.com/twilio/voice?tenant=acme",
    ],
)
def test_wrong_url_fails(url: str) -> None:
    signature = twilio_sign(VOICE_URL, VOICE_PARAMS)
    assert not is_valid_twilio_signature(url, VOICE_PARAMS, signature, AUTH_TOKEN)


def test_tampered_params_fail() -> None:
    signature = twilio_sign(VOICE_URL, VOICE_PARAMS)
    tampered = {**VOICE_PARAMS, "From": "+14155550111"}
    assert not is_valid_twilio_signature(VOICE_URL, tampered, signature, AUTH_TOKEN)


@pytest.mark.parametrize("signature", [None, ""])
def test_missing_signature_fails(signature: str | None) -> None:
    assert not is_valid_twilio_signature(VOICE_URL, VOICE_PARAMS, signature, AUTH_TOKEN)


def test_empty_auth_token_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="auth token"):
        is_valid_twilio_signature(VOICE_URL, VOICE_PARAMS, "sig", "")


@pytest.mark.parametrize(
    ("base", "path", "query", "websocket", "expected"),
    [
        (PUBLIC_URL, "/twilio/voice", "", False, "https://voice.example.com/twilio/voice"),
        (
            PUBLIC_URL + "/",
            "/twilio/voice",
            "a=1&b=%20",
            False,
            "https://voice.example.com/twilio/voice?a=1&b=%20",
        ),
        (
            "https://example.com/callray",
            "/twilio/media",
            "",
            True,
            "wss://example.com/callray/twilio/media",
        ),
        ("http://localhost:8080", "twilio/media", "", True, "ws://localhost:8080/twilio/media"),
    ],
)
def test_public_request_url(
    base: str, path: str, query: str, websocket: bool, expected: str
) -> None:
    assert public_request_url(base, path, query, websocket=websocket) == expected


@pytest.mark.parametrize(
    "base",
    ["voice.example.com", "ftp://voice.example.com", "https://x.example.com/?a=1", "https:///"],
)
def test_public_url_must_be_absolute_http(base: str) -> None:
    with pytest.raises(ConfigError, match="public URL"):
        public_request_url(base, "/twilio/voice")
