"""1,000 tool calls over 3 executor actors, one SIGKILLed mid-run: none lost, effects once."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.cluster import Cluster, start_cluster
from services.config import ModelSettings, RuntimeSettings, Secret
from services.realtime.tools import ToolCall, ToolContext
from services.redis_client import connect as connect_redis
from services.toolbus.runner import RedisToolRunner
from tests.integration.toolbus_tools import RUNS_KEY, SIDE_EFFECTS_KEY, record
from tests.ray.scrape import scrape

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.slow]

CALLS = 1000


@pytest.fixture
def executors(ray_session: None, redis_url: str, model_url: str) -> Iterator[Cluster]:
    settings = RuntimeSettings(
        hosts=1, executors=3, executor_concurrency=16, agent="tests.ray.agents:AGENTS"
    )
    cluster = start_cluster(
        settings,
        redis_url=redis_url,
        model=ModelSettings(Secret(""), None, "gpt-realtime"),
        model_url=model_url,
    )
    yield cluster
    cluster.stop()


async def test_thousand_calls_survive_a_killed_executor(
    executors: Cluster, redis_url: str, metrics_dir: Path
) -> None:
    client = connect_redis(redis_url)
    await client.delete(RUNS_KEY, SIDE_EFFECTS_KEY)
    runner = RedisToolRunner(client, host_id="kill-test", default_timeout=120.0)
    await runner.start()
    done = 0
    killed = asyncio.Event()
    window = asyncio.Semaphore(200)

    async def one(n: int) -> tuple[int, str, str]:
        nonlocal done
        async with window:
            ctx = ToolContext(ToolCall(f"kill-{n}", "record", f'{{"n": {n}}}'), "Recorder")
            result = await runner.run(record, ctx)
        done += 1
        if done == 300 and not killed.is_set():
            killed.set()
            os.kill(executors.executor_pids[0], signal.SIGKILL)
        return n, result.outcome, result.output

    try:
        results = await asyncio.gather(*(one(n) for n in range(CALLS)))
    finally:
        await runner.stop()
    assert killed.is_set()
    assert all(outcome == "ok" for _, outcome, _ in results), [r for r in results if r[1] != "ok"][
        :5
    ]
    assert all(output == str(2 * n) for n, _, output in results)
    assert int(await client.get(SIDE_EFFECTS_KEY) or 0) == CALLS
    runs = int(await client.get(RUNS_KEY) or 0)
    assert runs >= CALLS  # entries the dead executor held were run again by the others
    await client.aclose()
    del executors.executors[0]  # dead: nothing to stop

    samples = await asyncio.to_thread(scrape, metrics_dir)
    assert samples.get("callray_tool_reclaims_total", 0) > 0
