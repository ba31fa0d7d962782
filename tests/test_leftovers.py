"""Instances that outlive their router: pid files, the watchdog, the sweep of a restarted router (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.test_scheduler_local import (  # noqa: F401 - make_scheduler is a fixture
    MakeScheduler,
    group_members,
    groups_end,
    make_scheduler,
    make_spec,
    pid_of,
    state_of,
)
from waiter.scheduler import leftovers
from waiter.scheduler.leftovers import InstanceRecord

SLEEPER = "exec sleep 1000"


@pytest.fixture
def strangers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started by a test in sessions of their own, killed at the end whatever happened."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def spawn(strangers: list[subprocess.Popen[bytes]], cmd: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(["bash", "-c", cmd], start_new_session=True)
    strangers.append(process)
    return process


def leave_record(work_dir: Path, name: str, record: InstanceRecord) -> Path:
    sandbox = work_dir / "svc-left" / name
    sandbox.mkdir(parents=True)
    leftovers.write_record(sandbox, record)
    return sandbox


def dead_owner() -> tuple[int, float]:
    """A (pid, start time) pair of a router that is gone."""
    process = subprocess.Popen(["true"])
    started = leftovers.start_time(process.pid) or time.time()
    process.wait()
    return process.pid, started


async def test_instances_leave_pid_files_that_go_with_them(make_scheduler: MakeScheduler) -> None:
    scheduler = await make_scheduler()
    await scheduler.create_service(make_spec(SLEEPER), 1)
    (instance,) = state_of(scheduler).active
    sandbox = Path(instance.log_directory or "")
    (found_sandbox, record), *others = leftovers.read_records(scheduler.settings.work_dir)
    assert others == [] and found_sandbox == sandbox
    assert record.pgid == pid_of(instance) and record.instance_id == instance.id
    assert record.owner_pid == os.getpid() and leftovers.is_alive(record.pgid, record.started)
    await scheduler.kill_instance("svc-test", instance.id)
    assert not (sandbox / leftovers.PID_FILE).exists()


async def test_start_stops_instances_of_a_dead_router_and_its_children(
    make_scheduler: MakeScheduler, tmp_path: Path, strangers: list[subprocess.Popen[bytes]]
) -> None:
    work_dir = tmp_path / "work"
    # bash with a background child: the child must go too, though it is not the recorded leader.
    left = spawn(strangers, "sleep 1000 & touch started; wait")
    while leftovers.start_time(left.pid) is None or len(group_members(left.pid)) < 2:
        time.sleep(0.01)
    started = leftovers.start_time(left.pid)
    assert started is not None
    sandbox = leave_record(work_dir, "svc-left.1", InstanceRecord("svc-left.1", left.pid, started, *dead_owner(), 0.5))
    await make_scheduler()
    assert left.poll() is not None
    await groups_end(left.pid)
    assert not (sandbox / leftovers.PID_FILE).exists()


async def test_start_never_signals_a_recycled_pid_or_a_live_routers_instance(
    make_scheduler: MakeScheduler, tmp_path: Path, strangers: list[subprocess.Popen[bytes]]
) -> None:
    work_dir = tmp_path / "work"
    recycled = spawn(strangers, "sleep 1000")
    alive_owner = spawn(strangers, "sleep 1000")
    owned = spawn(strangers, "sleep 1000")
    for process in (recycled, alive_owner, owned):
        while leftovers.start_time(process.pid) is None:
            time.sleep(0.01)
    recycled_started = leftovers.start_time(recycled.pid)
    owner_started = leftovers.start_time(alive_owner.pid)
    owned_started = leftovers.start_time(owned.pid)
    assert recycled_started is not None and owner_started is not None and owned_started is not None
    # The pid file says the instance started a minute before the process now holding its pid.
    leave_record(work_dir, "a", InstanceRecord("a", recycled.pid, recycled_started - 60, *dead_owner(), 0.5))
    leave_record(work_dir, "b", InstanceRecord("b", owned.pid, owned_started, alive_owner.pid, owner_started, 0.5))
    await make_scheduler()
    assert recycled.poll() is None and owned.poll() is None


async def test_watchdog_stops_the_instances_when_their_router_is_killed(
    tmp_path: Path, strangers: list[subprocess.Popen[bytes]]
) -> None:
    """A router stand-in (a child python) records an instance and starts the watchdog, then dies by SIGKILL."""
    work_dir = tmp_path / "work"
    script = (
        "import subprocess, sys, time\n"
        "from pathlib import Path\n"
        "from waiter.scheduler import leftovers\n"
        f"work = Path({str(work_dir)!r})\n"
        "dog = leftovers.start_watchdog(work)\n"
        "me = leftovers.start_time(__import__('os').getpid())\n"
        "child = subprocess.Popen(['sleep', '1000'], start_new_session=True)\n"
        "time.sleep(0.05)\n"
        "sandbox = work / 'svc' / 'svc.1'\n"
        "sandbox.mkdir(parents=True)\n"
        "rec = leftovers.InstanceRecord('svc.1', child.pid, leftovers.start_time(child.pid), "
        "__import__('os').getpid(), me, 0.5)\n"
        "leftovers.write_record(sandbox, rec)\n"
        "print(child.pid, dog.pid, flush=True)\n"
        "time.sleep(1000)\n"
    )
    router = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True)
    strangers.append(router)  # type: ignore[arg-type]
    assert router.stdout is not None
    with router.stdout:
        instance_pid, watchdog_pid = map(int, router.stdout.readline().split())
    assert psutil.pid_exists(instance_pid)
    router.kill()
    router.wait()
    deadline = time.monotonic() + 10
    while group_members(instance_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert group_members(instance_pid) == []
    psutil.Process(watchdog_pid).wait(5)  # and the watchdog itself is gone
    assert leftovers.read_records(work_dir) == []
