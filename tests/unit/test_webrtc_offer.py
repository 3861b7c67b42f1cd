"""The offer check that runs before aiortc sees an offer: each row of the bad-input table is
refused with its reason; candidates we will not try are dropped."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.errors import SdpError
from services.webrtc.offer import MAX_CANDIDATES, CandidatePolicy, check_offer

OFFER = (Path(__file__).parent / "data" / "chromium_offer.sdp").read_text()
LOOPBACK = CandidatePolicy(allow_loopback=True)


def test_a_browser_offer_passes_with_the_candidates_we_try() -> None:
    checked = check_offer(OFFER, LOOPBACK)
    assert checked.has_data_channel
    kept = [ln for ln in checked.sdp.split("\r\n") if ln.startswith("a=candidate:")]
    assert [ln.split()[4] for ln in kept] == ["127.0.0.1", "10.0.0.7"]
    assert checked.dropped_candidates == 3  # multicast, link-local, mDNS
    assert checked.sdp.endswith("\r\n") and "\n\n" not in checked.sdp


def test_loopback_and_private_candidates_follow_the_policy() -> None:
    strict = check_offer(OFFER, CandidatePolicy(allow_loopback=False, allow_private=False))
    assert "a=candidate:" not in strict.sdp and strict.dropped_candidates == 5


def test_candidates_past_the_cap_are_dropped() -> None:
    many = "".join(
        f"a=candidate:{n} 1 udp 1 10.0.{n // 250}.{n % 250 + 1} {5000 + n} typ host\r\n"
        for n in range(100)
    )
    checked = check_offer(OFFER.replace("a=ice-ufrag:Kv3Q\n", many + "a=ice-ufrag:Kv3Q\n", 1))
    kept = [ln for ln in checked.sdp.split("\r\n") if ln.startswith("a=candidate:")]
    assert len(kept) == MAX_CANDIDATES


def _without(prefix: str) -> str:
    return "\n".join(ln for ln in OFFER.split("\n") if not ln.startswith(prefix))


@pytest.mark.parametrize(
    ("offer", "reason"),
    [
        ("", "empty offer"),
        ("hello world", "not an SDP offer"),
        ("v=0\nthis is not sdp\n", "malformed SDP line"),
        (_without("m=audio").replace("a=mid:0\n", ""), "exactly one audio section"),
        (OFFER.replace("UDP/TLS/RTP/SAVPF", "RTP/AVP"), "must be UDP/TLS/RTP/SAVPF"),
        (_without("a=fingerprint"), "no a=fingerprint"),
        (_without("a=ice-ufrag"), "no a=ice-ufrag"),
        (_without("a=ice-pwd"), "no a=ice-pwd"),
        (_without("a=rtpmap:111"), "Opus is not offered"),
        (OFFER.replace("m=audio 9 ", "m=audio 0 "), "port 0"),
        (OFFER.replace("a=sendrecv", "a=recvonly"), "does not send"),
        (OFFER + "m=video 9 UDP/TLS/RTP/SAVPF 96\na=rtpmap:96 VP8/90000\n", "video offered"),
        (
            OFFER + "m=audio 9 UDP/TLS/RTP/SAVPF 111\na=rtpmap:111 opus/48000/2\n",
            "exactly one audio section, this has 2",
        ),
        (
            OFFER.replace("UDP/DTLS/SCTP webrtc-datachannel", "RTP/AVP 5"),
            "data channel section is not DTLS/SCTP",
        ),
    ],
)
def test_an_offer_we_do_not_take_is_refused_with_its_reason(offer: str, reason: str) -> None:
    with pytest.raises(SdpError, match=reason):
        check_offer(offer)
