"""The composition root unwinds exactly what it opened when a start fails half-way."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import backend_token
from waiter.scheduler.base import SchedulerError
from waiter.scheduler.local import LocalScheduler, LocalSettings
from waiter.server import RouterServer
from waiter.settings import load_settings


class UnreachableCluster(LocalScheduler):
    """A scheduler whose cluster cannot be reached: ``start`` fails after the router opened everything before it."""

    async def start(self) -> None:
        raise SchedulerError("the cluster at http://127.0.0.1:1 cannot be reached")


async def test_a_scheduler_that_fails_to_start_leaves_no_task_connection_or_watcher(tmp_path: Path) -> None:
    tokens_dir = tmp_path / "tokens"
    tokens_dir.mkdir()
    (tokens_dir / "echo.yaml").write_text(yaml.safe_dump(backend_token("echo")))
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump({"tokens-dir": str(tokens_dir), "port": 0}))
    settings = load_settings(config)
    scheduler = UnreachableCluster(LocalSettings(work_dir=tmp_path / "work"))
    process = psutil.Process()
    await asyncio.sleep(0)  # let anything a previous test scheduled settle before taking the baseline
    tasks_before = {t for t in asyncio.all_tasks() if not t.done()}
    fds_before = process.num_fds()

    server = RouterServer(settings, scheduler=scheduler)
    with pytest.raises(SchedulerError, match="cannot be reached"):
        await server.start()

    left = {t for t in asyncio.all_tasks() if not t.done()} - tasks_before
    assert not left, f"tasks left running after a failed start: {sorted(t.get_name() for t in left)}"
    # the token store's file watcher, the upstream pool, the aiohttp session and the listening socket are closed
    assert process.num_fds() <= fds_before
