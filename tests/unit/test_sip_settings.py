"""SIP settings read once from the environment: the defaults `callray up` gets, and refusals."""

from __future__ import annotations

import pytest

from services.config import GatewaySettings, load_sip_settings
from services.errors import ConfigError


def test_callray_up_listens_on_5060_unless_off_and_a_bare_gateway_does_not() -> None:
    assert GatewaySettings().sip.port is None  # a gateway built in code takes no UDP port
    assert load_sip_settings({}).port == 5060
    assert load_sip_settings({"CALLRAY_SIP_PORT": "off"}).port is None
    assert load_sip_settings({"CALLRAY_SIP_PORT": "0"}).port == 0


def test_the_registrar_trunk_networks_and_transfer_targets() -> None:
    sip = load_sip_settings(
        {
            "CALLRAY_SIP_REGISTRAR": "10.0.0.5",
            "CALLRAY_SIP_REGISTER_USER": "7001",
            "CALLRAY_SIP_REGISTER_PASSWORD": "pw",
            "CALLRAY_SIP_ALLOW_SOURCES": "10.0.0.0/8, 192.0.2.7",
            "CALLRAY_SIP_TRANSFER_TARGETS": "Billing=sip:billing@10.0.0.5,sales=tel:+14155550123",
            "CALLRAY_RTP_PORTS": "40000-40999",
        }
    )
    assert sip.registrar == ("10.0.0.5", 5060) and sip.register_user == "7001"
    assert "pw" not in repr(sip)  # a secret never shows
    assert sip.allow_sources == ("10.0.0.0/8", "192.0.2.7")
    assert dict(sip.transfer_targets) == {
        "billing": "sip:billing@10.0.0.5",
        "sales": "tel:+14155550123",
    }
    assert sip.rtp_ports == (40000, 40999)
    assert load_sip_settings({"CALLRAY_SIP_REGISTRAR": "10.0.0.5:5070"}).registrar == (
        "10.0.0.5",
        5070,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CALLRAY_SIP_REGISTRAR", "pbx.example.com"),
        ("CALLRAY_SIP_REGISTRAR", "10.0.0.5:99999"),
        ("CALLRAY_SIP_ALLOW_SOURCES", "not-a-network"),
        ("CALLRAY_SIP_TRANSFER_TARGETS", "billing=https://example.com"),
        ("CALLRAY_SIP_AUTH_USERS", "nopassword"),
        ("CALLRAY_SIP_PORT", "-1"),
    ],
)
def test_settings_it_cannot_use_are_refused_at_start(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_sip_settings({name: value})
