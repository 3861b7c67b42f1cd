"""Digest authentication: the RFC 2617 and RFC 7616 vectors, our challenge and verification on a
virtual clock (expiry → stale, wrong password, replayed nc, tampered nonce), robust parsing of
the Authorization header, and the client answering our own challenges for every algorithm."""

from __future__ import annotations

import base64
import hashlib
import itertools

import pytest

from services.errors import ConfigError, SipError
from services.telephony.sip.digest import (
    DigestAuthority,
    answer,
    choose_challenge,
    compute_response,
    parse_auth_params,
)

SECRET = b"0123456789abcdef-replica-secret"
USERS = {"trunk": "s3cret", "alice": "wonder land"}
T0 = 1_800_000_000.0


def _counter_random() -> object:
    counter = itertools.count()
    return lambda n: next(counter).to_bytes(n, "big")


def _authority(**kwargs: object) -> DigestAuthority:
    args: dict[str, object] = {"random_bytes": _counter_random()}
    args.update(kwargs)
    return DigestAuthority("callray.test", SECRET, USERS, **args)  # type: ignore[arg-type]


def _login(
    authority: DigestAuthority,
    now: float,
    *,
    algorithm_index: int = 0,
    user: str = "trunk",
    password: str = "s3cret",
    nc: int = 1,
    challenge: str | None = None,
) -> str:
    value = challenge or authority.challenge(now)[algorithm_index]
    return answer(value, "INVITE", "sip:agent@10.0.0.1", user, password, "c0ffee", nc)


# ---------------------------------------------------------------------------- RFC vectors


def test_rfc_2617_section_3_5_example() -> None:
    challenge = (
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    value = answer(challenge, "GET", "/dir/index.html", "Mufasa", "Circle Of Life", "0a4f113b", 1)
    scheme, params = parse_auth_params(value)
    assert scheme == "Digest"
    assert params == {
        "username": "Mufasa",
        "realm": "testrealm@host.com",
        "nonce": "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        "uri": "/dir/index.html",
        "response": "6629fae49393a05397450978507c4ef1",
        "algorithm": "MD5",
        "cnonce": "0a4f113b",
        "qop": "auth",
        "nc": "00000001",
        "opaque": "5ccc069c403ebaf9f0171e9517f40e41",
    }


@pytest.mark.parametrize(
    ("algorithm", "response"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc_7616_section_3_9_1_examples(algorithm: str, response: str) -> None:
    challenge = (
        'Digest\r\n realm="http-auth@example.org",\r\n qop="auth, auth-int",\r\n'
        f' algorithm={algorithm},\r\n nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",\r\n'
        ' opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
    value = answer(challenge, "GET", "/dir/index.html", "Mufasa", "Circle of Life", cnonce, 1)
    params = parse_auth_params(value)[1]
    assert params["response"] == response
    assert params["algorithm"] == algorithm and params["qop"] == "auth"
    assert params["opaque"] == "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"


def test_rfc_2069_form_when_the_challenge_has_no_qop() -> None:
    challenge = 'Digest realm="pbx", nonce="abc123"'
    value = answer(challenge, "REGISTER", "sip:pbx.example.com", "100", "pw", "ignored", 1)
    params = parse_auth_params(value)[1]
    assert not {"qop", "nc", "cnonce"} & params.keys()

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1, ha2 = md5("100:pbx:pw"), md5("REGISTER:sip:pbx.example.com")
    assert params["response"] == md5(f"{ha1}:abc123:{ha2}")


def test_sess_variants_hash_the_nonces_into_ha1() -> None:
    def sha(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    ha1 = sha(f"{sha('u:r:p')}:n:c")
    expected = sha(f"{ha1}:n:00000001:c:auth:{sha('BYE:sip:x')}")
    got = compute_response(
        algorithm="sha-256-SESS",
        username="u",
        realm="r",
        password="p",
        nonce="n",
        method="BYE",
        uri="sip:x",
        qop="auth",
        nc="00000001",
        cnonce="c",
    )
    assert got == expected


# --------------------------------------------------------------------------------- server


def test_challenge_offers_sha256_first_with_one_fresh_nonce() -> None:
    authority = _authority()
    sha, md5 = authority.challenge(T0)
    sha_params, md5_params = parse_auth_params(sha)[1], parse_auth_params(md5)[1]
    assert sha_params["algorithm"] == "SHA-256" and md5_params["algorithm"] == "MD5"
    assert sha_params["nonce"] == md5_params["nonce"]
    assert sha_params["realm"] == "callray.test" and sha_params["qop"] == "auth"
    assert "stale" not in sha_params
    assert parse_auth_params(authority.challenge(T0, stale=True)[0])[1]["stale"] == "true"
    assert authority.challenge(T0)[0] != sha  # a new nonce each time, even in the same ms


@pytest.mark.parametrize(
    "algorithms", [("SHA-256",), ("MD5",), ("SHA-256-sess",), ("MD5-sess",)], ids=str
)
def test_round_trip_with_each_algorithm(algorithms: tuple[str, ...]) -> None:
    authority = _authority(algorithms=algorithms)
    verdict = authority.verify("INVITE", _login(authority, T0), T0 + 1)
    assert verdict.ok and verdict.username == "trunk"


def test_round_trip_with_a_lookup_function_and_an_odd_username() -> None:
    authority = DigestAuthority(
        "callray.test", SECRET, lambda user: "pw" if user == 'we"ird\\user' else None
    )
    value = _login(authority, T0, user='we"ird\\user', password="pw")
    assert authority.verify("INVITE", value, T0).username == 'we"ird\\user'


def test_another_replica_with_the_same_secret_verifies_the_nonce() -> None:
    value = _login(_authority(), T0)
    assert _authority(random_bytes=lambda n: b"\xff" * n).verify("INVITE", value, T0 + 5).ok


def test_an_expired_nonce_with_the_right_password_is_stale() -> None:
    authority = _authority(nonce_ttl_s=300)
    challenge = authority.challenge(T0)[0]
    fresh = _login(authority, T0, challenge=challenge, nc=1)
    assert authority.verify("INVITE", fresh, T0 + 299.9).ok
    late = _login(authority, T0, challenge=challenge, nc=2)
    stale = authority.verify("INVITE", late, T0 + 300.1)
    assert (stale.kind, stale.username) == ("stale", "trunk")


def test_an_expired_nonce_with_the_wrong_password_is_bad_not_stale() -> None:
    authority = _authority()
    value = _login(authority, T0, password="guess")
    assert authority.verify("INVITE", value, T0 + 1000).kind == "bad"


@pytest.mark.parametrize(
    ("user", "password", "reason"),
    [("trunk", "wrong", "wrong response"), ("mallory", "s3cret", "unknown user")],
)
def test_wrong_credentials_are_bad(user: str, password: str, reason: str) -> None:
    authority = _authority()
    verdict = authority.verify("INVITE", _login(authority, T0, user=user, password=password), T0)
    assert (verdict.kind, verdict.reason, verdict.username) == ("bad", reason, None)


def test_the_response_is_bound_to_the_method() -> None:
    authority = _authority()
    assert authority.verify("BYE", _login(authority, T0), T0).reason == "wrong response"


def test_a_replayed_nonce_count_is_refused_and_a_higher_one_taken() -> None:
    authority = _authority()
    challenge = authority.challenge(T0)[0]
    first = _login(authority, T0, challenge=challenge, nc=1)
    assert authority.verify("INVITE", first, T0).ok
    replay = authority.verify("INVITE", first, T0 + 1)
    assert (replay.kind, replay.reason) == ("bad", "nonce count replayed")
    assert authority.verify("INVITE", _login(authority, T0, challenge=challenge, nc=3), T0 + 2).ok
    lower = _login(authority, T0, challenge=challenge, nc=2)
    assert authority.verify("INVITE", lower, T0 + 3).reason == "nonce count replayed"


def test_a_forged_request_does_not_burn_the_nonce_count() -> None:
    authority = _authority()
    challenge = authority.challenge(T0)[0]
    forged = _login(authority, T0, challenge=challenge, password="guess", nc=5)
    assert authority.verify("INVITE", forged, T0).kind == "bad"
    assert authority.verify("INVITE", _login(authority, T0, challenge=challenge, nc=1), T0).ok


def test_tampered_and_foreign_nonces_are_refused() -> None:
    authority = _authority()
    challenge = authority.challenge(T0)[0]
    nonce = parse_auth_params(challenge)[1]["nonce"]
    flipped = nonce[:5] + ("A" if nonce[5] != "A" else "B") + nonce[6:]
    other_secret = DigestAuthority("callray.test", b"another-secret-16b", USERS).challenge(T0)[0]
    other_realm = DigestAuthority("other", SECRET, USERS).challenge(T0)[0]
    other_nonce = parse_auth_params(other_realm)[1]["nonce"]
    for forged in (
        challenge.replace(nonce, flipped),
        challenge.replace(nonce, nonce[:-1]),
        challenge.replace(nonce, "dcd98b7102dd2f0e8b11d0f600bfb0c093"),
        other_secret,
        challenge.replace(nonce, other_nonce),
    ):
        verdict = authority.verify("INVITE", _login(authority, T0, challenge=forged), T0)
        assert (verdict.kind, verdict.reason) == ("bad", "nonce not ours")


def test_a_second_spelling_of_our_nonce_is_refused() -> None:
    # 32 bytes take 43 base64 characters; the last one carries 2 spare bits that a lenient
    # decoder ignores. A second spelling of one nonce would get a second nc counter.
    authority = _authority()
    challenge = authority.challenge(T0)[0]
    nonce = parse_auth_params(challenge)[1]["nonce"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    respelled = nonce[:-1] + alphabet[alphabet.index(nonce[-1]) ^ 1]
    assert base64.urlsafe_b64decode(respelled + "=") == base64.urlsafe_b64decode(nonce + "=")
    forged = _login(authority, T0, challenge=challenge.replace(nonce, respelled))
    assert authority.verify("INVITE", forged, T0).reason == "nonce not ours"


def test_a_nonce_from_the_future_is_refused() -> None:
    value = _login(_authority(), T0 + 120)
    assert _authority().verify("INVITE", value, T0).reason == "nonce from the future"
    assert _authority().verify("INVITE", value, T0 + 100).ok  # within the replicas' skew


def test_the_nonce_table_is_bounded_and_eviction_never_lets_a_replay_through() -> None:
    authority = _authority(max_nonces=2)
    first = _login(authority, T0)
    assert authority.verify("INVITE", first, T0).ok
    for n in range(1, 4):  # three more nonces push the first one out
        assert authority.verify("INVITE", _login(authority, T0 + n), T0 + n).ok
    assert len(authority._seen) == 2
    replay = authority.verify("INVITE", first, T0 + 5)
    assert replay.kind == "stale"  # a re-challenge, not an accepted replay
    assert authority.verify("INVITE", _login(authority, T0 + 6), T0 + 6).ok


def _credentials(**override: str | None) -> str:
    params = {
        "username": '"trunk"',
        "realm": '"callray.test"',
        "nonce": '"@NONCE@"',
        "uri": '"sip:agent@10.0.0.1"',
        "response": '"@RESPONSE@"',
        "algorithm": "SHA-256",
        "qop": "auth",
        "nc": "00000001",
        "cnonce": '"c0ffee"',
    }
    for key, value in override.items():
        if value is None:
            params.pop(key)
        else:
            params[key] = value
    return "Digest " + ", ".join(f"{k}={v}" for k, v in params.items())


def _signed(authority: DigestAuthority, text: str, now: float = T0) -> str:
    """``text`` with @NONCE@ and @RESPONSE@ filled in correctly for the user trunk."""
    nonce = parse_auth_params(authority.challenge(now)[0])[1]["nonce"]
    params = parse_auth_params(text.replace("@NONCE@", nonce))[1]
    response = compute_response(
        algorithm=params.get("algorithm", "MD5"),
        username=params["username"],
        realm=params["realm"],
        password=USERS["trunk"],
        nonce=nonce,
        method="INVITE",
        uri=params["uri"],
        qop="auth",
        nc=params["nc"],
        cnonce=params["cnonce"],
    )
    return text.replace("@NONCE@", nonce).replace("@RESPONSE@", response)


def test_the_header_parser_takes_any_order_case_escapes_and_commas_in_quotes() -> None:
    authority = _authority()
    text = (
        'digest  NC=00000001 ,QOP=auth,  CNonce="a,b\\"c" , Algorithm=sha-256,'
        '\r\n uri = "sip:agent@10.0.0.1;x=\\"1,2\\"", nonce="@NONCE@",RESPONSE="@RESPONSE@",'
        ' realm="callray.test", UserName="trunk", unknown-param=ignored'
    )
    signed = _signed(authority, text)
    assert parse_auth_params(signed)[1]["cnonce"] == 'a,b"c'
    assert authority.verify("INVITE", signed, T0).ok


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('Basic dXNlcjpwYXNz"', "malformed credentials"),
        ("Basic dXNlcjpwYXNz", "malformed credentials"),
        ('Basic realm="x"', "not Digest credentials"),
        ("", "malformed credentials"),
        (_credentials(uri='"unterminated'), "malformed credentials"),
        (_credentials() + ", nc=00000002", "malformed credentials"),  # repeated
        (_credentials() + " garbage", "malformed credentials"),
        (_credentials() + ", x=" + "y" * 5000, "malformed credentials"),
        (_credentials(response=None), "missing digest parameter"),
        (_credentials(realm='"elsewhere"'), "wrong realm"),
        (_credentials(algorithm="SHA-512-256"), "algorithm not offered"),
        (_credentials(qop=None), "qop=auth required"),  # the RFC 2069 form
        (_credentials(qop="auth-int"), "qop=auth required"),
        (_credentials(nc="1"), "bad nc or cnonce"),
        (_credentials(cnonce=None), "bad nc or cnonce"),
        (_credentials(nonce='"short"'), "nonce not ours"),
    ],
)
def test_bad_credentials_are_refused_with_a_reason(text: str, reason: str) -> None:
    authority = _authority()
    verdict = authority.verify("INVITE", text, T0)
    assert (verdict.kind, verdict.reason) == ("bad", reason)


def test_an_algorithm_we_did_not_offer_is_refused() -> None:
    authority = _authority(algorithms=("SHA-256",))
    md5 = _signed(authority, _credentials(algorithm="MD5"))
    assert authority.verify("INVITE", md5, T0).reason == "algorithm not offered"
    absent = _signed(authority, _credentials(algorithm=None))  # absent means MD5
    assert authority.verify("INVITE", absent, T0).reason == "algorithm not offered"


def test_the_uri_is_checked_against_the_request_uri_when_given() -> None:
    authority = _authority()
    value = _login(authority, T0)
    assert authority.verify("INVITE", value, T0, request_uri="sip:other@10.0.0.1").kind == "bad"
    assert authority.verify("INVITE", value, T0, request_uri="sip:agent@10.0.0.1").ok


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"secret": b"short"}, "at least 16 bytes"),
        ({"algorithms": ("SHA-512-256",)}, "digest algorithms"),
        ({"algorithms": ()}, "digest algorithms"),
        ({"realm": 'a"b'}, "realm"),
        ({"nonce_ttl_s": 0}, "positive"),
        ({"max_nonces": 0}, "positive"),
    ],
)
def test_bad_configuration_is_a_config_error(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"realm": "r", "secret": SECRET, "credentials": USERS}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        DigestAuthority(**args)  # type: ignore[arg-type]


def test_secrets_do_not_show_in_repr() -> None:
    assert "s3cret" not in repr(_authority()) and "replica-secret" not in repr(_authority())


# --------------------------------------------------------------------------------- client


def test_choose_challenge_takes_the_first_supported_one() -> None:
    sha512 = 'Digest realm="r", nonce="1", algorithm=SHA-512-256, qop="auth"'
    sha256 = 'Digest realm="r", nonce="1", algorithm=SHA-256, qop="auth"'
    md5 = 'Digest realm="r", nonce="1", qop="auth"'
    assert choose_challenge([sha512, 'Basic realm="r"', sha256, md5]) == sha256
    assert choose_challenge(['garbage "', md5]) == md5
    with pytest.raises(SipError) as caught:
        choose_challenge([sha512])
    assert caught.value.status == 0


@pytest.mark.parametrize(
    ("challenge", "nc", "message"),
    [
        ('Digest realm="r", nonce="n", qop="auth-int"', 1, "auth-int"),
        ('Digest realm="r", nonce="n", algorithm=SHA-512-256', 1, "unsupported"),
        ('Digest realm="r", nonce="n", algorithm=MD5-sess', 1, "without qop"),
        ('Basic realm="r"', 1, "not a Digest"),
        ('Digest realm="r"', 1, "without realm or nonce"),
        ('Digest realm="r', 1, "malformed"),
        ('Digest realm="r", nonce="n", qop="auth"', 0, "nc must be"),
    ],
)
def test_challenges_we_cannot_answer(challenge: str, nc: int, message: str) -> None:
    with pytest.raises(SipError, match=message) as caught:
        answer(challenge, "REGISTER", "sip:pbx", "100", "pw", "cn", nc)
    assert caught.value.status == 0


def test_the_client_counts_requests_on_one_nonce() -> None:
    authority = _authority()
    challenge = authority.challenge(T0)[1]  # MD5
    for nc in (1, 2, 3):
        value = _login(authority, T0, challenge=challenge, nc=nc)
        assert parse_auth_params(value)[1]["nc"] == f"{nc:08x}"
        assert authority.verify("INVITE", value, T0 + nc).ok
