"""Fixtures: a real router (in this process, on a real port) running real backend processes."""

from __future__ import annotations

import gc
import inspect
import random
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.browser import browser  # noqa: F401 - the one headless-browser fixture, for every module
from tests.emulators.runner import running_emulator
from tests.fakes import FakeScheduler
from tests.redis_server import redis_server  # noqa: F401 - the one Redis server fixture, for every module
from tests.support import Changes
from waiter.router import Router
from waiter.scheduler import create_scheduler
from waiter.scheduler.base import Scheduler
from waiter.scheduler.mesos_failover import FileFrameworkIds
from waiter.server import RouterServer
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
    """A router started in this process: the front door at ``url``, the aiohttp app behind it."""

    server: RouterServer
    client: aiohttp.ClientSession
    tokens_dir: Path

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def settings(self) -> Settings:
        return self.server.settings

    @property
    def router(self) -> Router:
        return self.server.router

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


# Every scheduler back-end that runs processes. Tests marked ``@pytest.mark.schedulers()`` (the end-to-end tests)
# run once per back-end; ``@pytest.mark.schedulers("local")`` pins one. Unmarked tests run on the local back-end.
# FAKE (tests.fakes.FakeScheduler, instances served in the test's process) is for tests where processes add nothing.
SCHEDULER_KINDS = ("local", "marathon", "mesos", "kubernetes")
FAKE = "fake"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "schedulers(*kinds): run once per scheduler back-end named (all of SCHEDULER_KINDS if none)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("schedulers")
    if marker is not None and "scheduler_kind" in metafunc.fixturenames:
        kinds = list(marker.args or SCHEDULER_KINDS)
        metafunc.parametrize("scheduler_kind", kinds, indirect=True, ids=kinds)


@pytest.fixture
def scheduler_kind(request: pytest.FixtureRequest) -> str:
    """The scheduler back-end a test runs on (see SCHEDULER_KINDS)."""
    return str(getattr(request, "param", "local"))


@dataclass
class Cluster:
    """Where a test's instances run: the router config's ``scheduler`` section, and the emulator's URL if any."""

    kind: str
    config: dict[str, Any]
    url: str | None = None
    work_dir: Path | None = None  # where the emulator keeps its tasks' sandboxes

    def scheduler(self, settings: Settings, router_index: int = 0) -> Scheduler | None:
        """The scheduler a router of this cluster runs when it is not one the settings can name (the fake)."""
        if self.kind != FAKE:
            return None
        assert self.work_dir is not None
        # Crashes are replaced after a tenth of the local back-off: tests wait for the pattern, not the pace.
        work_dir = self.work_dir / f"router{router_index}"
        return FakeScheduler(work_dir, cluster_name=settings.cluster_name, restart_backoff_base_secs=0.05)

    def scheduler_config(self, router_index: int = 0) -> dict[str, Any]:
        if self.kind in ("local", FAKE):  # each router runs its own instances
            work_dir = Path(self.config["local"]["work-dir"]) / f"router{router_index}"
            return {**self.config, "local": {**self.config["local"], "work-dir": str(work_dir)}}
        return self.config  # routers share the cluster


def task_port_range() -> str:
    """A random slice of ports for an emulator's tasks, so parallel runs on this machine rarely meet."""
    low = random.randrange(21000, 31000)
    return f"{low}-{low + 199}"


@pytest.fixture
async def cluster(scheduler_kind: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    """The back-end of ``scheduler_kind``; an emulated cluster runs as a child process for the test's duration."""
    work_dir = tmp_path / "cluster"
    if scheduler_kind in ("local", FAKE):  # the fake's routers are configured as local ones (see Cluster.scheduler)
        yield Cluster(scheduler_kind, {"kind": "local", "local": {"work-dir": str(work_dir)}}, work_dir=work_dir)
    elif scheduler_kind == "marathon":
        # Health kills and health-gated deployments are on by default, as in Marathon; instance-era task ids and
        # core dumps too.
        args = ("--work-dir", str(work_dir), "--port-range", task_port_range(), "--behaviour", "instance-ids=true",
                "--behaviour", "core-dumps=true")
        async with running_emulator("marathon", *args) as url:
            marathon = {"url": url, "sync-interval-ms": 100, "retry-backoff-ms": 20, "agent-work-dir": str(work_dir)}
            yield Cluster("marathon", {"kind": "marathon", "marathon": marathon}, url, work_dir)
    elif scheduler_kind == "mesos":
        # Every real-master behaviour the emulator has is on: two agents, part of each reserved for the
        # framework's role (offers mix reserved and unreserved resources), core dumps, exact Content-Type, ...
        args = ("--work-dir", str(work_dir), "--port-range", task_port_range(), "--allocation-secs", "0.05",
                "--heartbeat-secs", "1", "--update-retry-secs", "1", "--agents", "2", "--reserve", "waiter:0.5:512",
                "--behaviour", "core-dumps=true")
        async with running_emulator("mesos", *args) as url:
            mesos = {"master": url.removeprefix("http://"), "request-timeout-ms": 2000, "agent-work-dir": str(work_dir),
                     "role": "waiter"}
            yield Cluster("mesos", {"kind": "mesos", "mesos": mesos}, url, work_dir)
    elif scheduler_kind == "kubernetes":
        async with running_emulator("kubernetes", "--work-dir", str(work_dir), "--crash-backoff-secs", "0.2") as url:
            kubernetes = {"api-url": url, "namespace": "waiter", "retry-backoff-ms": 20, "request-timeout-ms": 5000}
            yield Cluster("kubernetes", {"kind": "kubernetes", "kubernetes": kubernetes}, url, work_dir)
    else:
        raise ValueError(f"scheduler_kind {scheduler_kind!r} has no cluster fixture; known: {SCHEDULER_KINDS}, {FAKE}")


@pytest.fixture
async def make_router(tmp_path: Path, cluster: Cluster) -> AsyncIterator[Callable[..., Awaitable[RunningRouter]]]:
    started: list[RunningRouter] = []

    async def make(tokens: list[dict[str, Any]] | None = None, **config: Any) -> RunningRouter:
        index = len(started)
        tokens_dir = tmp_path / f"tokens{index}"
        tokens_dir.mkdir()
        for token in tokens or []:
            (tokens_dir / f"{token['token']}.yaml").write_text(yaml.safe_dump(token))
        data: dict[str, Any] = {
            "tokens-dir": str(tokens_dir),
            "port": 0,
            "drain-timeout-secs": 5,
            "scheduler": cluster.scheduler_config(index),
            "health-check": {"startup-interval-ms": 50, "timeout-ms": 1000},
        }
        data.update(config)
        data["scheduler"] = scheduler = dict(data["scheduler"])  # the cluster's config is shared: not changed here
        kind = scheduler.get("kind", "local")
        if kind in ("local", "mesos"):
            # instances' sandboxes (a Mesos router's framework id) go under the test's temp dir even when a test
            # brings its own scheduler config
            section = scheduler[kind] = dict(scheduler.get(kind, {}))
            section.setdefault("work-dir", str(tmp_path / f"work{index}"))
        config_file = tmp_path / f"router{index}.yaml"
        config_file.write_text(yaml.safe_dump(data))
        settings = load_settings(config_file)
        server = RouterServer(settings, scheduler=cluster.scheduler(settings, index))
        await server.start()
        client = aiohttp.ClientSession()
        running = RunningRouter(server, client, tokens_dir)
        started.append(running)
        return running

    yield make
    for running in reversed(started):
        await running.client.close()
        await running.server.stop()


MakeScheduler = Callable[..., Awaitable[tuple[Scheduler, Changes]]]


@pytest.fixture
async def make_scheduler(cluster: Cluster, tmp_path: Path) -> AsyncIterator[MakeScheduler]:
    """Schedulers of ``cluster``'s back-end built from router settings, as a router builds its own; each notes its
    changes. Closed after the test."""
    made: list[Scheduler] = []

    async def make(*, kept_identity: bool = False) -> tuple[Scheduler, Changes]:
        """``kept_identity``: the scheduler of a router that keeps its identity across restarts (as the composition
        root does: a Mesos framework id in a file every such scheduler of the test shares)."""
        overrides: dict[str, Any] = {"scheduler": cluster.scheduler_config(len(made)), "cluster-name": "contract"}
        settings = load_settings(None, overrides)
        framework_ids = FileFrameworkIds(tmp_path / "mesos-framework-id") if kept_identity else None
        scheduler = cluster.scheduler(settings, len(made)) or create_scheduler(settings, framework_ids=framework_ids)
        changes = Changes(scheduler)
        await scheduler.start()
        made.append(scheduler)
        return scheduler, changes

    yield make
    for scheduler in made:
        await scheduler.close()


# -- the suite writes only under temp dirs ---------------------------------------------------------------------------

_CHECKOUT = Path(__file__).resolve().parent.parent
_TOOL_LEFTOVERS = (".venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".egg-info", ".coverage")


def _checkout_status() -> set[str] | None:
    """What git sees in the checkout besides tool caches, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--ignored"], cwd=_CHECKOUT, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return {line for line in out.stdout.splitlines() if not any(part in line for part in _TOOL_LEFTOVERS)}


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_STATUS_KEY] = _checkout_status()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(_STATUS_KEY, None)
    after = _checkout_status()
    if before is None or after is None or session.config.option.collectonly:
        return
    added = sorted(after - before)
    if added:
        session.config.get_terminal_writer().line()
        session.config.get_terminal_writer().line(
            "the test suite wrote into the checkout (tests must write only under temp dirs): " + ", ".join(added),
            red=True,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_STATUS_KEY = pytest.StashKey[set[str] | None]()


# -- garbage of a test is collected with that test ------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _collect_garbage_of_this_test(request: pytest.FixtureRequest) -> Any:
    """Collect the test's cyclic garbage at its own teardown.

    Otherwise the collector runs at a random later moment, and a socket some library left in a reference cycle
    (seen: redis-py connections of an event loop that is already closed) warns inside whichever test is running
    then, failing it for another test's leftovers. Those late warnings carry nothing to act on (their loop is gone),
    so they are dropped here; leaks the test itself can see still fail it.
    """
    yield
    if not inspect.iscoroutinefunction(getattr(request.node, "function", None)):
        return  # only tests with an event loop leave sockets behind; the pure tables stay fast
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
