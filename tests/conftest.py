"""Fixtures: a real router (in this process, on a real port) running real backend processes."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from waiter.app import ROUTER, build_app
from waiter.router import Router
from waiter.settings import Settings, load_settings

BACKEND = Path(__file__).parent / "backends" / "app.py"
BACKEND_CMD = f"exec {sys.executable} {BACKEND}"


def backend_token(name: str, **fields: Any) -> dict[str, Any]:
    """A token running the test backend; ``fields`` override or add service parameters."""
    token: dict[str, Any] = {
        "token": name,
        "name": name,
        "cmd": BACKEND_CMD,
        "version": "1",
        "cpus": 0.1,
        "mem": 256,
        "health-check-url": "/status",
        "grace-period-secs": 30,
    }
    token.update(fields)
    return token


def on_the_fly_headers(**extra: str) -> dict[str, str]:
    headers = {
        "x-waiter-cmd": BACKEND_CMD,
        "x-waiter-cpus": "0.1",
        "x-waiter-mem": "256",
        "x-waiter-version": "1",
        "x-waiter-name": "fly",
    }
    headers.update(extra)
    return headers


@dataclass
class RunningRouter:
    server: TestServer
    client: aiohttp.ClientSession
    settings: Settings
    tokens_dir: Path

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def router(self) -> Router:
        return self.server.app[ROUTER]

    async def get_json(self, path: str, **kwargs: Any) -> Any:
        async with self.client.get(self.url + path, **kwargs) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def service_id(self, headers: dict[str, str]) -> str:
        async with self.client.get(self.url + "/service-id", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.text()

    async def instances(self, service_id: str) -> dict[str, Any]:
        body = await self.get_json(f"/apps/{service_id}")
        return body["instances"]  # type: ignore[no-any-return]


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if await predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def make_router(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[RunningRouter]]]:
    started: list[RunningRouter] = []

    async def make(tokens: list[dict[str, Any]] | None = None, **config: Any) -> RunningRouter:
        index = len(started)
        tokens_dir = tmp_path / f"tokens{index}"
        tokens_dir.mkdir()
        for token in tokens or []:
            (tokens_dir / f"{token['token']}.yaml").write_text(yaml.safe_dump(token))
        data: dict[str, Any] = {
            "tokens-dir": str(tokens_dir),
            "drain-timeout-secs": 5,
            "scheduler": {"kind": "local", "local": {"work-dir": str(tmp_path / f"scheduler{index}")}},
            "health-check": {"startup-interval-ms": 50, "timeout-ms": 1000},
        }
        data.update(config)
        config_file = tmp_path / f"router{index}.yaml"
        config_file.write_text(yaml.safe_dump(data))
        settings = load_settings(config_file)
        app: web.Application = build_app(settings)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        client = aiohttp.ClientSession()
        running = RunningRouter(server, client, settings, tokens_dir)
        started.append(running)
        return running

    yield make
    for running in reversed(started):
        await running.client.close()
        await running.server.close()
