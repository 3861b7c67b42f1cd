"""The media path's message-count settings: read once from the environment, checked."""

from __future__ import annotations

import pytest

from services.config import MediaSettings, load_media_settings, load_settings
from services.errors import ConfigError


def test_defaults_and_overrides() -> None:
    assert load_media_settings({}) == MediaSettings()
    media = load_media_settings(
        {
            "CALLRAY_APPEND_MS": "60",
            "CALLRAY_MEDIA_CHUNK_MS": "200",
            "CALLRAY_MARK_MS": "100",
            "CALLRAY_CHANNEL_INTERVAL_MS": "0.5",
        }
    )
    assert media == MediaSettings(append_ms=60, chunk_ms=200, mark_ms=100, channel_interval_ms=0.5)
    assert load_settings({"CALLRAY_APPEND_MS": "40"}).runtime.media.append_ms == 40


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("CALLRAY_APPEND_MS", "30", "multiple of 20"),
        ("CALLRAY_APPEND_MS", "220", "up to 200"),
        ("CALLRAY_APPEND_MS", "0", "at least 20"),
        ("CALLRAY_MEDIA_CHUNK_MS", "lots", "must be an integer"),
        ("CALLRAY_CHANNEL_INTERVAL_MS", "-1", "0 to 100"),
        ("CALLRAY_CHANNEL_INTERVAL_MS", "soon", "must be a number"),
    ],
)
def test_bad_values_name_the_setting(name: str, value: str, why: str) -> None:
    with pytest.raises(ConfigError, match=name) as info:
        load_media_settings({name: value})
    assert why in str(info.value)
