"""WebRTC settings read once from the environment: the ICE port range and its refusals."""

from __future__ import annotations

import pytest

from services.config import load_webrtc_settings
from services.errors import ConfigError


def test_the_port_range_is_read_as_first_and_last() -> None:
    assert load_webrtc_settings({}).port_range is None
    assert load_webrtc_settings({"CALLRAY_WEBRTC_PORT_RANGE": "40000-40999"}).port_range == (
        40000,
        40999,
    )
    assert load_webrtc_settings({"CALLRAY_WEBRTC_PORT_RANGE": " 5000-5000 "}).port_range == (
        5000,
        5000,
    )


@pytest.mark.parametrize("value", ["40000", "40999-40000", "80-90", "40000-70000", "a-b", "-5"])
def test_a_port_range_it_cannot_use_is_refused_at_start(value: str) -> None:
    with pytest.raises(ConfigError, match="CALLRAY_WEBRTC_PORT_RANGE"):
        load_webrtc_settings({"CALLRAY_WEBRTC_PORT_RANGE": value})
