"""What the back-ends that run processes (local, Marathon, Mesos, Kubernetes) owe their instances beyond the
scheduler protocol (``test_scheduler_contract.py``): each instance is a process with Waiter's environment, a scale
down leaves the processes running, a kill or a delete ends them, and a cluster's processes outlive a restarted
scheduler.

Instances write their pid and environment into the test's directory; facts outside the scheduler are polled with a
deadline.
"""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from tests.conftest import MakeScheduler
from tests.support import eventually
from tests.test_scheduler_contract import SERVER, SID, answers, running, spec, state_of
from waiter.scheduler.base import Instance, KeepsRecords

pytestmark = pytest.mark.schedulers()


def recording(out: Path, cmd: str = SERVER) -> str:
    """``cmd`` after writing the instance's environment and pid; exec in ``cmd`` keeps the pid for the server."""
    file = f'"{out}/$WAITER_INSTANCE_ID'
    environment = f'env > {file}.env.tmp" && mv {file}.env.tmp" {file}.env"'
    pid = f'echo $$ > {file}.tmp" && mv {file}.tmp" {file}.pid"'
    return f"{environment}; {pid}; {cmd}"


async def pid_of(out: Path, instance: Instance) -> int:
    path = out / f"{instance.id}.pid"
    await eventually(path.exists, f"the pid file of {instance.id}")
    return int(path.read_text())


def alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


async def test_instances_are_processes_with_waiters_environment_that_kills_and_deletes_end(
    make_scheduler: MakeScheduler, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    scheduler, changes = await make_scheduler()
    env = {"GREETING": "hello world", "WAITER_CLUSTER": "spoofed"}
    await scheduler.create_service(spec(recording(out), env=env, concurrency_level=3, token="tok"), 2)
    await changes.until(running(scheduler, 2))
    first, second = state_of(scheduler).active
    pids = {i.id: await pid_of(out, i) for i in (first, second)}

    written = (out / f"{first.id}.env").read_text()  # before the pid file
    variables = dict(line.split("=", 1) for line in written.splitlines() if "=" in line)
    assert variables["WAITER_INSTANCE_ID"] == first.id
    assert variables["PORT0"] == str(first.port)
    assert variables["GREETING"] == "hello world"
    assert variables["WAITER_CLUSTER"] == "contract"
    assert variables["WAITER_SERVICE_ID"] == SID
    assert (variables["WAITER_CPUS"], variables["WAITER_MEM_MB"]) == ("0.1", "128")
    assert variables["WAITER_CONCURRENCY_LEVEL"] == "3"
    assert (variables["WAITER_USERNAME"], variables["WAITER_TOKEN"]) == ("waiter", "tok")
    assert variables["USER"] == variables["LOGNAME"] == "contract-user"
    assert variables["WAITER_SANDBOX"]

    await scheduler.scale_service(SID, 1)  # a lower count kills nothing
    assert all(alive(pid) for pid in pids.values())

    assert (await scheduler.kill_instance(SID, first.id)).success
    await eventually(lambda: not alive(pids[first.id]), "the killed instance's process to end")
    assert alive(pids[second.id])

    assert await scheduler.delete_service(SID) is True
    await eventually(lambda: not alive(pids[second.id]), "the deleted service's process to end")


@pytest.mark.schedulers("marathon", "mesos", "kubernetes")
async def test_a_restarted_scheduler_finds_its_instances_running(make_scheduler: MakeScheduler, tmp_path: Path) -> None:
    """A cluster keeps running what a stopped router's scheduler started (Mesos: for the framework's failover
    timeout); the restarted scheduler knows the service again, with the same instance (the same process) and its
    record, and creating the service again launches nothing."""
    out = tmp_path / "out"
    out.mkdir()
    first, changes = await make_scheduler(kept_identity=True)
    service = spec(recording(out), record='{"service-id": "contract"}')
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
