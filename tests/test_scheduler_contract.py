"""The scheduler protocol (``waiter.scheduler.base.Scheduler``), tested the same way against every back-end: local
processes, the emulated clusters, and the in-process fake the router tests use (``tests.fakes``).

Each test builds its scheduler from router settings (``create_scheduler``), exactly as the router does, with the
``cluster`` fixture's ``scheduler`` section (the fake: ``Cluster.scheduler``). Nothing here knows which back-end it
talks to or how instances run: what the tests see is the protocol's typed results, the change notifications and
an instance answering HTTP where it says it is. That the back-ends' instances are processes (their environment,
their end) is tested in ``test_scheduler_processes.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests.conftest import FAKE, SCHEDULER_KINDS, MakeScheduler
from tests.support import eventually
from waiter.scheduler.base import Instance, InstanceFlag, KillOutcome, Scheduler, SchedulerError, ServiceSpec

pytestmark = pytest.mark.schedulers(*SCHEDULER_KINDS, FAKE)

SID = "waiter-service-contract-1"
# A pod of the Kubernetes emulator listens on its own loopback address, POD_IP. (The fake serves its backend.)
SERVER = f'exec {sys.executable} -m http.server "$PORT0" --bind "${{POD_IP:-127.0.0.1}}"'


def spec(cmd: str = SERVER, **overrides: Any) -> ServiceSpec:
    values: dict[str, Any] = {"cpus": 0.1, "mem": 128.0, "run_as_user": "contract-user", **overrides}
    return ServiceSpec(service_id=SID, cmd=cmd, **values)


def state_of(scheduler: Scheduler, service_id: str = SID) -> Any:
    state = scheduler.service_state(service_id)
    assert state is not None, f"service {service_id} is unknown"
    return state


def running(scheduler: Scheduler, count: int) -> Callable[[], bool]:
    def check() -> bool:
        state = scheduler.service_state(SID)
        return state is not None and len(state.active) >= count

    return check


async def answers(instance: Instance) -> bool:
    try:
        async with aiohttp.ClientSession() as session, session.get(f"http://{instance.host}:{instance.port}/") as resp:
            return resp.status == 200
    except aiohttp.ClientConnectionError:
        return False


async def not_answering(instance: Instance) -> bool:
    return not await answers(instance)


async def test_create_runs_a_reachable_instance(make_scheduler: MakeScheduler) -> None:
    scheduler, changes = await make_scheduler()
    created = await scheduler.create_service(spec(env={"GREETING": "hello"}, concurrency_level=3, token="tok"), 1)
    assert created is True
    assert state_of(scheduler).requested == 1
    await changes.until(running(scheduler, 1))

    (instance,) = state_of(scheduler).active
    assert instance.service_id == SID
    assert instance.id.startswith(f"{SID}.") and instance.id.count(".") == 1
    assert not instance.ended and instance.started_at > 0
    await eventually(lambda: answers(instance))
    assert SID in changes.calls


async def test_create_is_idempotent_and_scale_up_launches(make_scheduler: MakeScheduler) -> None:
    scheduler, changes = await make_scheduler()
    assert await scheduler.create_service(spec(), 1) is True
    assert await scheduler.create_service(spec(cmd="exit 9"), 3) is False
    assert scheduler.service_ids() == [SID]
    assert state_of(scheduler).requested == 1

    await scheduler.scale_service(SID, 3)
    assert state_of(scheduler).requested == 3
    await changes.until(running(scheduler, 3))
    active = state_of(scheduler).active
    assert len({(i.host, i.port) for i in active}) == 3
    assert [i.started_at for i in active] == sorted(i.started_at for i in active)  # oldest first


async def test_scale_down_kills_nothing(make_scheduler: MakeScheduler) -> None:
    scheduler, changes = await make_scheduler()
    await scheduler.create_service(spec(), 2)
    await changes.until(running(scheduler, 2))
    before = [i.id for i in state_of(scheduler).active]

    await scheduler.scale_service(SID, 1)  # instances go through kills, never through a lower count
    assert [i.id for i in state_of(scheduler).active] == before
    for instance in state_of(scheduler).active:
        await eventually(lambda instance=instance: answers(instance))  # type: ignore[misc]


async def test_crash_is_recorded_as_failed_and_replaced(make_scheduler: MakeScheduler) -> None:
    scheduler, changes = await make_scheduler()
    await scheduler.create_service(spec(cmd="exit 3"), 1)
    await changes.until(lambda: len(state_of(scheduler).failed) >= 2, timeout=20)

    state = state_of(scheduler)
    first, second = state.failed[:2]
    assert first.id != second.id
    for crashed in (first, second):
        assert crashed.exit_code == 3 and crashed.failed and not crashed.killed
        assert crashed.message and "3" in crashed.message
    assert state.requested == 1


async def test_kill_without_replace_lowers_requested(make_scheduler: MakeScheduler) -> None:
    scheduler, changes = await make_scheduler()
    await scheduler.create_service(spec(), 2)
    await changes.until(running(scheduler, 2))
    victim, survivor = state_of(scheduler).active
    await eventually(lambda: answers(victim))

    result = await scheduler.kill_instance(SID, victim.id, message="Killed to scale down")
    assert result.outcome is KillOutcome.KILLED and result.success, result.message
    state = state_of(scheduler)
    assert state.requested == 1
    assert [i.id for i in state.active] == [survivor.id]
    ended = next(i for i in state.killed if i.id == victim.id)
    assert (ended.killed, ended.failed, ended.message) == (True, False, "Killed to scale down")
    await eventually(lambda: not_answering(victim), "the killed instance to stop answering")

    again = await scheduler.kill_instance(SID, victim.id)
    assert again.outcome is KillOutcome.ALREADY_KILLED
    assert state_of(scheduler).requested == 1


@pytest.mark.parametrize("when", ["at-once", "once-answering"])
async def test_kill_with_replace_starts_another_and_records_why(make_scheduler: MakeScheduler, when: str) -> None:
    scheduler, changes = await make_scheduler()
    await scheduler.create_service(spec(), 1)
    await changes.until(running(scheduler, 1))
    (victim,) = state_of(scheduler).active
    if when == "once-answering":
        await eventually(lambda: answers(victim))
    # else killed the moment it appears: it may not run yet (a Mesos task staging or starting, a pod pending)
    flags = frozenset({InstanceFlag.NEVER_PASSED_HEALTH_CHECKS.value})

    result = await scheduler.kill_instance(
        SID, victim.id, replace=True, message="Exceeded grace period", flags=flags, failed=True
    )
    assert result.success, result.message
    assert state_of(scheduler).requested == 1
    ended = next(i for i in state_of(scheduler).failed if i.id == victim.id)
    assert (ended.message, ended.flags, ended.failed, ended.killed) == ("Exceeded grace period", flags, True, False)
    await changes.until(lambda: any(i.id != victim.id for i in state_of(scheduler).active))
    (replacement,) = state_of(scheduler).active
    assert replacement.id != victim.id
    await eventually(lambda: answers(replacement), "the replacement to answer")


@pytest.mark.parametrize(
    ("service_id", "instance_id"),
    [("waiter-service-missing", "waiter-service-missing.1-2"), (SID, f"{SID}.1-2")],
    ids=["unknown-service", "unknown-instance"],
)
async def test_kill_unknown_instance(
    make_scheduler: MakeScheduler, service_id: str, instance_id: str
) -> None:
    scheduler, changes = await make_scheduler()
    await scheduler.create_service(spec(), 1)
    await changes.until(running(scheduler, 1))
    result = await scheduler.kill_instance(service_id, instance_id)
    assert result.outcome is KillOutcome.NO_SUCH_INSTANCE and not result.success
    assert instance_id in result.message
    assert len(state_of(scheduler).active) == 1


async def test_delete_service_stops_every_instance_and_forgets_it(make_scheduler: MakeScheduler) -> None:
    scheduler, changes = await make_scheduler()
    await scheduler.create_service(spec(), 2)
    await changes.until(running(scheduler, 2))

    changes.calls.clear()
    assert await scheduler.delete_service(SID) is True
    assert scheduler.service_state(SID) is None and scheduler.service_ids() == []
    await changes.until(lambda: SID in changes.calls)
    assert await scheduler.delete_service(SID) is False


async def test_scale_unknown_service_is_an_error(make_scheduler: MakeScheduler) -> None:
    scheduler, _ = await make_scheduler()
    with pytest.raises(SchedulerError, match="waiter-service-missing"):
        await scheduler.scale_service("waiter-service-missing", 2)
    assert scheduler.service_ids() == []


async def test_a_second_scheduler_sees_what_the_first_started(make_scheduler: MakeScheduler) -> None:
    """Local (and fake) instances belong to their scheduler, Mesos tasks to their scheduler's framework (the v1
    scheduler API shows a framework only its own tasks); Marathon's apps and Kubernetes' ReplicaSets are shared by
    every router's scheduler."""
    first, changes = await make_scheduler()
    await first.create_service(spec(), 1)
    await changes.until(running(first, 1))
    second, second_changes = await make_scheduler()
    if first.kind in ("local", "mesos", "fake"):
        assert second.service_ids() == []
        return
    await second_changes.until(lambda: second.service_ids() == [SID])
    await second_changes.until(running(second, 1))
    assert [i.id for i in state_of(second).active] == [i.id for i in state_of(first).active]
    assert await second.create_service(spec(), 1) is False
