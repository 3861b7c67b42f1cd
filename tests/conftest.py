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


def free_port() -> int:
    """A port free on 127.0.0.1 now (for a child process to bind)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
