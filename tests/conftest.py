from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.wire import WireValidator

# Real-time waits in tests scale by this one factor (slow CI machines set it higher).
TIMEOUT_FACTOR = float(os.environ.get("CALLRAY_TEST_TIMEOUT_FACTOR", "1"))


@pytest.fixture
def wire() -> Iterator[WireValidator]:
    """Validates every event passed to it; the test fails at teardown on the first invalid one."""
    validator = WireValidator()
    yield validator
    validator.check()
