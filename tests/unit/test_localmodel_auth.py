"""Who may use the local model: bearers, browser subprotocols, ephemeral keys and their expiry."""

from __future__ import annotations

from services.localmodel.auth import Grant, KeyRing, bearer_candidates


def test_a_request_offers_its_bearer_and_any_key_subprotocol() -> None:
    assert bearer_candidates("Bearer k1") == ["k1"]
    assert bearer_candidates("bearer  k1 ") == ["k1"]
    assert bearer_candidates("Basic abc") == []
    offered = ["realtime, openai-insecure-api-key.k2", "openai-insecure-api-key.k3"]
    assert bearer_candidates("", offered) == ["k2", "k3"]


def test_without_an_api_key_anyone_may_connect() -> None:
    keys = KeyRing("")
    assert keys.grant([], 0.0) == Grant(root=True)
    assert keys.grant(["anything"], 0.0) == Grant(root=True)


def test_with_an_api_key_only_it_or_a_live_ephemeral_key_may() -> None:
    keys = KeyRing("sekret")
    assert keys.grant([], 0.0) is None
    assert keys.grant(["wrong", "sekret"], 0.0) == Grant(root=True)
    session = {"type": "realtime", "instructions": "x"}
    ek = keys.mint(10, 100.0, session)
    assert ek.startswith("ek_") and ek != keys.mint(10, 100.0)
    assert keys.grant([ek], 109.9) == Grant(root=False, session=session)
    assert keys.grant([ek], 110.0) is None  # expired: no new sessions
