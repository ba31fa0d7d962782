"""The scheduler protocol, tested the same way against every back-end (local processes, emulated clusters).

Each test builds its scheduler from router settings (``create_scheduler``), exactly as the router does, with the
``cluster`` fixture's ``scheduler`` section. Nothing here knows which back-end it talks to: instances are real
processes that write their pid and environment into the test's directory, and every wait is on the scheduler's
own change notifications (or, for facts outside it, a poll with a deadline).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from tests.conftest import Cluster
from tests.support import Changes, eventually
from waiter.scheduler import create_scheduler
from waiter.scheduler.base import (
    Instance,
    InstanceFlag,
    KeepsRecords,
    KillOutcome,
    Scheduler,
    SchedulerError,
    ServiceSpec,
)
from waiter.scheduler.mesos_failover import FileFrameworkIds
from waiter.settings import load_settings

pytestmark = pytest.mark.schedulers()

SID = "waiter-service-contract-1"
# $$ is the shell that runs the command; exec keeps that pid for the server, so the pid file names the instance.
# A pod of the Kubernetes emulator listens on its own loopback address, POD_IP.
SERVER = f'exec {sys.executable} -m http.server "$PORT0" --bind "${{POD_IP:-127.0.0.1}}"'


MakeScheduler = Callable[..., Awaitable[tuple[Scheduler, Changes]]]


@pytest.fixture
async def make_scheduler(cluster: Cluster, tmp_path: Path) -> AsyncIterator[MakeScheduler]:
    made: list[Scheduler] = []

    async def make(*, kept_identity: bool = False) -> tuple[Scheduler, Changes]:
        """``kept_identity``: the scheduler of a router that keeps its identity across restarts (as the composition
        root does: a Mesos framework id in a file every such scheduler of the test shares)."""
        overrides: dict[str, Any] = {"scheduler": cluster.scheduler_config(len(made)), "cluster-name": "contract"}
        framework_ids = FileFrameworkIds(tmp_path / "mesos-framework-id") if kept_identity else None
        scheduler = create_scheduler(load_settings(None, overrides), framework_ids=framework_ids)
        changes = Changes(scheduler)
        await scheduler.start()
        made.append(scheduler)
        return scheduler, changes

    yield make
    for scheduler in made:
        await scheduler.close()


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """Where instances write what the tests check (their pid, their environment)."""
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


def spec(out: Path, cmd: str = SERVER, **overrides: Any) -> ServiceSpec:
    record = f'echo $$ > "{out}/$WAITER_INSTANCE_ID.pid"; env > "{out}/env.tmp" && mv "{out}/env.tmp" "{out}/env"'
    values: dict[str, Any] = {"cpus": 0.1, "mem": 128.0, "run_as_user": "contract-user", **overrides}
    return ServiceSpec(service_id=SID, cmd=f"{record}; {cmd}", **values)


def state_of(scheduler: Scheduler, service_id: str = SID) -> Any:
    state = scheduler.service_state(service_id)
    assert state is not None, f"service {service_id} is unknown"
    return state


def running(scheduler: Scheduler, count: int) -> Callable[[], bool]:
    def check() -> bool:
        state = scheduler.service_state(SID)
        return state is not None and len(state.active) >= count

    return check


async def pid_of(out: Path, instance: Instance) -> int:
    path = out / f"{instance.id}.pid"

    async def written() -> bool:
        return path.exists() and path.read_text().strip() != ""

    await eventually(written)
    return int(path.read_text())


def alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


async def gone(pid: int) -> None:
    async def ended() -> bool:
        return not alive(pid)

    await eventually(ended)


async def answers(instance: Instance) -> bool:
    try:
        async with aiohttp.ClientSession() as session, session.get(f"http://{instance.host}:{instance.port}/") as resp:
            return resp.status == 200
    except aiohttp.ClientConnectionError:
        return False


async def test_create_runs_a_reachable_instance_with_its_environment(make_scheduler: MakeScheduler, out: Path) -> None:
    scheduler, changes = await make_scheduler()
    env = {"GREETING": "hello world", "WAITER_CLUSTER": "spoofed"}
    created = await scheduler.create_service(spec(out, env=env, concurrency_level=3, token="tok"), 1)
    assert created is True
    assert state_of(scheduler).requested == 1
    await changes.until(running(scheduler, 1))

    (instance,) = state_of(scheduler).active
    assert instance.service_id == SID
    assert instance.id.startswith(f"{SID}.") and instance.id.count(".") == 1
    assert not instance.ended and instance.started_at > 0
    await eventually(lambda: answers(instance))
    variables = dict(line.split("=", 1) for line in (out / "env").read_text().splitlines() if "=" in line)
    assert variables["PORT0"] == str(instance.port)
    assert variables["GREETING"] == "hello world"
    assert variables["WAITER_CLUSTER"] == "contract"
    assert variables["WAITER_SERVICE_ID"] == SID
    assert variables["WAITER_INSTANCE_ID"] == instance.id
    assert (variables["WAITER_CPUS"], variables["WAITER_MEM_MB"]) == ("0.1", "128")
    assert variables["WAITER_CONCURRENCY_LEVEL"] == "3"
    assert (variables["WAITER_USERNAME"], variables["WAITER_TOKEN"]) == ("waiter", "tok")
    assert variables["USER"] == variables["LOGNAME"] == "contract-user"
    assert variables["WAITER_SANDBOX"]
    assert SID in changes.calls


async def test_create_is_idempotent_and_scale_up_launches(make_scheduler: MakeScheduler, out: Path) -> None:
    scheduler, changes = await make_scheduler()
    assert await scheduler.create_service(spec(out), 1) is True
    assert await scheduler.create_service(spec(out, cmd="exit 9"), 3) is False
    assert scheduler.service_ids() == [SID]
    assert state_of(scheduler).requested == 1

    await scheduler.scale_service(SID, 3)
    assert state_of(scheduler).requested == 3
    await changes.until(running(scheduler, 3))
    active = state_of(scheduler).active
    assert len({(i.host, i.port) for i in active}) == 3
    assert [i.started_at for i in active] == sorted(i.started_at for i in active)  # oldest first


async def test_scale_down_kills_nothing(make_scheduler: MakeScheduler, out: Path) -> None:
    scheduler, changes = await make_scheduler()
    await scheduler.create_service(spec(out), 2)
    await changes.until(running(scheduler, 2))
    pids = [await pid_of(out, i) for i in state_of(scheduler).active]

    await scheduler.scale_service(SID, 1)  # instances go through kills, never through a lower count
    assert len(state_of(scheduler).active) == 2
    assert all(alive(pid) for pid in pids)
    for instance in state_of(scheduler).active:
        await eventually(lambda instance=instance: answers(instance))  # type: ignore[misc]


async def test_crash_is_recorded_as_failed_and_replaced(make_scheduler: MakeScheduler, out: Path) -> None:
    scheduler, changes = await make_scheduler()
    await scheduler.create_service(spec(out, cmd="exit 3"), 1)
    await changes.until(lambda: len(state_of(scheduler).failed) >= 2, timeout=20)

    state = state_of(scheduler)
    first, second = state.failed[:2]
    assert first.id != second.id
    for crashed in (first, second):
        assert crashed.exit_code == 3 and crashed.failed and not crashed.killed
        assert crashed.message and "3" in crashed.message
    assert state.requested == 1


async def test_kill_without_replace_lowers_requested(make_scheduler: MakeScheduler, out: Path) -> None:
    scheduler, changes = await make_scheduler()
    await scheduler.create_service(spec(out), 2)
    await changes.until(running(scheduler, 2))
    victim, survivor = state_of(scheduler).active
    victim_pid = await pid_of(out, victim)

    result = await scheduler.kill_instance(SID, victim.id, message="Killed to scale down")
    assert result.outcome is KillOutcome.KILLED and result.success, result.message
    state = state_of(scheduler)
    assert state.requested == 1
    assert [i.id for i in state.active] == [survivor.id]
    ended = next(i for i in state.killed if i.id == victim.id)
    assert (ended.killed, ended.failed, ended.message) == (True, False, "Killed to scale down")
    await gone(victim_pid)

    again = await scheduler.kill_instance(SID, victim.id)
    assert again.outcome is KillOutcome.ALREADY_KILLED
    assert state_of(scheduler).requested == 1


async def test_kill_with_replace_starts_another_and_records_why(make_scheduler: MakeScheduler, out: Path) -> None:
    scheduler, changes = await make_scheduler()
    await scheduler.create_service(spec(out), 1)
    await changes.until(running(scheduler, 1))
    (victim,) = state_of(scheduler).active
    victim_pid = await pid_of(out, victim)
    flags = frozenset({InstanceFlag.NEVER_PASSED_HEALTH_CHECKS.value})

    result = await scheduler.kill_instance(
        SID, victim.id, replace=True, message="Exceeded grace period", flags=flags, failed=True
    )
    assert result.success, result.message
    assert state_of(scheduler).requested == 1
    ended = next(i for i in state_of(scheduler).failed if i.id == victim.id)
    assert (ended.message, ended.flags, ended.failed, ended.killed) == ("Exceeded grace period", flags, True, False)
    await changes.until(lambda: any(i.id != victim.id for i in state_of(scheduler).active))
    assert victim.id not in [i.id for i in state_of(scheduler).active]
    await gone(victim_pid)


@pytest.mark.parametrize(
    ("service_id", "instance_id"),
    [("waiter-service-missing", "waiter-service-missing.1-2"), (SID, f"{SID}.1-2")],
    ids=["unknown-service", "unknown-instance"],
)
async def test_kill_unknown_instance(
    make_scheduler: MakeScheduler, out: Path, service_id: str, instance_id: str
) -> None:
    scheduler, changes = await make_scheduler()
    await scheduler.create_service(spec(out), 1)
    await changes.until(running(scheduler, 1))
    result = await scheduler.kill_instance(service_id, instance_id)
    assert result.outcome is KillOutcome.NO_SUCH_INSTANCE and not result.success
    assert instance_id in result.message
    assert len(state_of(scheduler).active) == 1


async def test_delete_service_stops_every_instance_and_forgets_it(make_scheduler: MakeScheduler, out: Path) -> None:
    scheduler, changes = await make_scheduler()
    await scheduler.create_service(spec(out), 2)
    await changes.until(running(scheduler, 2))
    pids = [await pid_of(out, i) for i in state_of(scheduler).active]

    changes.calls.clear()
    assert await scheduler.delete_service(SID) is True
    assert scheduler.service_state(SID) is None and scheduler.service_ids() == []
    for pid in pids:
        await gone(pid)
    await changes.until(lambda: SID in changes.calls)
    assert await scheduler.delete_service(SID) is False


async def test_scale_unknown_service_is_an_error(make_scheduler: MakeScheduler) -> None:
    scheduler, _ = await make_scheduler()
    with pytest.raises(SchedulerError, match="waiter-service-missing"):
        await scheduler.scale_service("waiter-service-missing", 2)
    assert scheduler.service_ids() == []


async def test_a_second_scheduler_sees_what_the_first_started(make_scheduler: MakeScheduler, out: Path) -> None:
    """Local instances belong to their scheduler, Mesos tasks to their scheduler's framework (the v1 scheduler API
    shows a framework only its own tasks); Marathon's apps are shared by every router's scheduler."""
    first, changes = await make_scheduler()
    await first.create_service(spec(out), 1)
    await changes.until(running(first, 1))
    second, second_changes = await make_scheduler()
    if first.kind in ("local", "mesos"):
        assert second.service_ids() == []
        return
    await second_changes.until(lambda: second.service_ids() == [SID])
    await second_changes.until(running(second, 1))
    assert [i.id for i in state_of(second).active] == [i.id for i in state_of(first).active]
    assert await second.create_service(spec(out), 1) is False


@pytest.mark.schedulers("marathon", "mesos", "kubernetes")
async def test_a_restarted_scheduler_finds_its_instances_running(make_scheduler: MakeScheduler, out: Path) -> None:
    """A cluster keeps running what a stopped router's scheduler started (Mesos: for the framework's failover
    timeout); the restarted scheduler knows the service again, with the same instance (the same process) and its
    record, and creating the service again launches nothing."""
    first, changes = await make_scheduler(kept_identity=True)
    service = spec(out, record='{"service-id": "contract"}')
    await first.create_service(service, 1)
    await changes.until(running(first, 1))
    (instance,) = state_of(first).active
    pid = await pid_of(out, instance)
    await first.close()

    second, second_changes = await make_scheduler(kept_identity=True)
    await second_changes.until(lambda: second.service_state(SID) is not None and running(second, 1)(), timeout=20)
    assert [i.id for i in state_of(second).active] == [instance.id]
    assert alive(pid)
    await eventually(lambda: answers(instance))
    assert isinstance(second, KeepsRecords) and second.service_record(SID) == service.record
    assert await second.create_service(service, 1) is False
    assert [i.id for i in state_of(second).active] == [instance.id] and alive(pid)
