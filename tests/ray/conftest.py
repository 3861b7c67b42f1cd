"""A real local Ray cluster, a real redis-server and our local model in a child process.

Ray picks the machine's interface address unless only loopback exists, so `scripts/test.sh`
runs the suite inside a loopback-only network namespace when it can.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def metrics_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("metrics")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from services.embedded.redis_server import EmbeddedRedis

    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def model_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from services.embedded.model_process import ModelProcess

    model = ModelProcess(log=tmp_path_factory.mktemp("model") / "model.log")
    yield model.start()
    model.stop()


@pytest.fixture(scope="session")
def ray_session(metrics_dir: Path, redis_url: str) -> Iterator[None]:
    from actors import _ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    _ray.init(
        address=None,
        num_cpus=2,
        env_vars={
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "RAY_AUTH_MODE": "disabled",
            # Test agents live in the tests package, importable from the repository root.
            "PYTHONPATH": str(ROOT),
            "CALLRAY_TEST_REDIS_URL": redis_url,
        },
    )
    yield
    _ray.shutdown()
