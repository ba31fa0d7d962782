"""The local scheduler against real processes in a temporary directory, plus table tests of its pure parts."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from tests.support import Changes, eventually
from waiter.scheduler import leftovers
from waiter.scheduler.base import (
    Instance,
    InstanceFlag,
    KillOutcome,
    Scheduler,
    SchedulerError,
    ServiceSpec,
    ServiceState,
)
from waiter.scheduler.book import ServiceBook, check_spec, exit_message, restart_delay
from waiter.scheduler.environment import format_number
from waiter.scheduler.leftovers import InstanceRecord
from waiter.scheduler.local import LocalScheduler, LocalSettings, ended_instance
from waiter.scheduler.ports import PortAllocator, port_is_bindable
from waiter.scheduler.processes import trees_rss_bytes
from waiter.scheduler.sandboxes import EndedSandbox, to_remove

HTTP_SERVER = 'exec python3 -m http.server "$PORT0" --bind 127.0.0.1'
SLEEPER = "exec sleep 1000"
# Ignoring TERM in bash is inherited by sleep, so only SIGKILL ends this one; "ready" says the trap is set.
TERM_IGNORER = "trap '' TERM; touch ready; sleep 1000"
MEMORY = InstanceFlag.MEMORY_LIMIT_EXCEEDED.value


def make_spec(cmd: str, service_id: str = "svc-test", **overrides: Any) -> ServiceSpec:
    values: dict[str, Any] = {"cpus": 0.5, "mem": 256.0, **overrides}
    return ServiceSpec(service_id=service_id, cmd=cmd, **values)


async def file_exists(path: Path) -> None:
    await eventually(path.exists)


def state_of(scheduler: LocalScheduler, service_id: str = "svc-test") -> ServiceState:
    state = scheduler.service_state(service_id)
    assert state is not None, f"service {service_id} is unknown"
    return state


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    members = []
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(process.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


async def groups_end(*pgids: int) -> None:
    """SIGKILLed members leave the process table a moment after the leader is reaped: wait for that, briefly."""
    await eventually(lambda: not any(group_members(pgid) for pgid in pgids), timeout=5.0)


def pid_of(instance: Instance) -> int:
    pid = instance.extras["shell-scheduler/pid"]
    assert isinstance(pid, int)
    return pid


MakeScheduler = Callable[..., Awaitable[LocalScheduler]]


@pytest.fixture
async def make_scheduler(tmp_path: Path) -> AsyncIterator[MakeScheduler]:
    made: list[LocalScheduler] = []
    # A random slice of the range keeps parallel test runs on this machine from racing for the same ports.
    low = random.randrange(20000, 29000)

    async def make(**overrides: Any) -> LocalScheduler:
        values: dict[str, Any] = {
            "work_dir": tmp_path / "work",
            "port_range": (low, low + 200),
            "memory_check_interval_secs": 0.05,
            "min_kill_grace_secs": 0.3,
            "restart_backoff_base_secs": 0.2,
            **overrides,
        }
        scheduler = LocalScheduler(LocalSettings(**values))
        await scheduler.start()
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        await scheduler.close()


# -- real processes --


async def test_launches_a_reachable_http_backend_with_logs(make_scheduler: MakeScheduler) -> None:
    scheduler = await make_scheduler()
    assert isinstance(scheduler, Scheduler)
    cmd = f"echo started; echo warming up >&2; {HTTP_SERVER}"
    assert await scheduler.create_service(make_spec(cmd), 1) is True

    state = state_of(scheduler)
    assert (state.requested, len(state.active)) == (1, 1)
    instance = state.active[0]
    low, high = scheduler.settings.port_range
    assert instance.host == "127.0.0.1" and low <= instance.port <= high
    assert instance.id.startswith("svc-test.") and instance.id.count(".") == 1
    sandbox = scheduler.settings.work_dir / "svc-test" / instance.id
    assert instance.log_directory == str(sandbox)
    assert instance.extras["shell-scheduler/working-directory"] == str(sandbox)
    assert psutil.pid_exists(pid_of(instance))
    assert (sandbox.parent / "run-service.sh").read_text() == f"#!/bin/bash\n\n{cmd}\n"

    async with aiohttp.ClientSession() as session:

        async def answers() -> bool:
            try:
                async with session.get(f"http://127.0.0.1:{instance.port}/") as response:
                    return response.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await eventually(answers)

    await eventually(lambda: "GET / " in (sandbox / "stderr").read_text())
    assert (sandbox / "stdout").read_text() == "started\n"
    assert (sandbox / "stderr").read_text().startswith("warming up\n")


async def test_environment_of_an_instance(make_scheduler: MakeScheduler) -> None:
    scheduler = await make_scheduler(cluster_name="test-cluster")
    spec = make_spec(
        "env > env.tmp && pwd > pwd.txt && mv env.tmp env.txt; " + SLEEPER,
        ports=2,
        cpus=1.0,
        mem=512.0,
        concurrency_level=3,
        run_as_user="alice",
        token="my-token",
        env={"GREETING": "hello world", "HOME": "/elsewhere", "WAITER_CLUSTER": "spoofed"},
    )
    await scheduler.create_service(spec, 1)
    instance = state_of(scheduler).active[0]
    sandbox = Path(str(instance.log_directory))
    await file_exists(sandbox / "env.txt")
    env = dict(line.split("=", 1) for line in (sandbox / "env.txt").read_text().splitlines() if "=" in line)

    assert env["GREETING"] == "hello world"
    assert env["HOME"] == str(scheduler.settings.work_dir)
    assert env["LOGNAME"] == env["USER"] == "alice"
    assert env["WAITER_CLUSTER"] == "test-cluster"
    assert env["WAITER_CONCURRENCY_LEVEL"] == "3"
    assert (env["WAITER_CPUS"], env["WAITER_MEM_MB"]) == ("1", "512")
    assert env["WAITER_SERVICE_ID"] == "svc-test"
    assert env["WAITER_USERNAME"] == "waiter"
    assert env["WAITER_TOKEN"] == "my-token"
    assert env["WAITER_INSTANCE_ID"] == instance.id
    assert env["WAITER_SANDBOX"] == env["MESOS_SANDBOX"] == str(sandbox)
    assert (env["PORT0"], env["PORT1"]) == (str(instance.port), str(instance.extra_ports[0]))
    assert "PORT2" not in env
    assert env["PATH"] == os.environ["PATH"]
    assert (sandbox / "pwd.txt").read_text().strip() == str(sandbox)


async def test_scale_launches_at_once_and_create_is_idempotent(make_scheduler: MakeScheduler) -> None:
    scheduler = await make_scheduler()
    assert await scheduler.create_service(make_spec(SLEEPER), 1) is True
    assert await scheduler.create_service(make_spec("exit 9"), 3) is False
    state = state_of(scheduler)
    assert (state.requested, len(state.active)) == (1, 1)
    assert scheduler.service_ids() == ["svc-test"]

    await scheduler.scale_service("svc-test", 3)
    state = state_of(scheduler)
    assert (state.requested, len(state.active)) == (3, 3)
    assert len({i.port for i in state.active}) == 3
    assert [i.started_at for i in state.active] == sorted(i.started_at for i in state.active)

    await scheduler.scale_service("svc-test", 1)  # scaling down kills nothing
    state = state_of(scheduler)
    assert (state.requested, len(state.active)) == (1, 3)


async def test_crash_is_recorded_and_replaced_after_a_growing_backoff(make_scheduler: MakeScheduler) -> None:
    scheduler = await make_scheduler(restart_backoff_base_secs=0.2)
    changes = Changes(scheduler)
    await scheduler.create_service(make_spec("exit 3", restart_backoff_factor=2.0), 1)
    await changes.until(lambda: len(state_of(scheduler).failed) >= 3)

    state = state_of(scheduler)
    first, second, third = state.failed[:3]
    assert len({first.id, second.id, third.id}) == 3
    for crashed in (first, second, third):
        assert (crashed.exit_code, crashed.message) == (3, "Exited with code 3")
        assert crashed.failed and not crashed.killed
    assert state.requested == 1
    assert second.started_at - first.started_at >= 0.19
    assert third.started_at - second.started_at >= 0.39


async def test_clean_exit_calls_listeners_and_is_replaced(make_scheduler: MakeScheduler) -> None:
    scheduler = await make_scheduler()
    changes = Changes(scheduler)
    cmd = "while [ ! -e stop ]; do sleep 0.02; done; exit 0"
    await scheduler.create_service(make_spec(cmd), 1)
    first = state_of(scheduler).active[0]
    await changes.until(lambda: "svc-test" in changes.calls)  # launch announced

    changes.calls.clear()
    (Path(str(first.log_directory)) / "stop").touch()
    await changes.until(lambda: bool(state_of(scheduler).killed))
    assert changes.calls  # the exit was announced
    ended = state_of(scheduler).killed[0]
    assert (ended.id, ended.exit_code, ended.message) == (first.id, 0, "Exited with code 0")
    assert not ended.failed and not ended.killed
    await changes.until(lambda: any(i.id != first.id for i in state_of(scheduler).active))


async def test_children_of_an_exited_leader_are_killed(make_scheduler: MakeScheduler) -> None:
    scheduler = await make_scheduler()
    changes = Changes(scheduler)
    await scheduler.create_service(make_spec("sleep 1000 & touch ready; wait -n; exit 5"), 1)
    leader = state_of(scheduler).active[0]
    await file_exists(Path(str(leader.log_directory)) / "ready")
    await eventually(lambda: len(group_members(pid_of(leader))) >= 2)  # bash and the background sleep

    os.kill(pid_of(leader), signal.SIGKILL)  # the leader dies by itself as far as the scheduler knows
    await changes.until(lambda: bool(state_of(scheduler).failed))
    assert state_of(scheduler).failed[0].message == "Killed by signal SIGKILL"
    await groups_end(pid_of(leader))


async def test_kill_without_replace_lowers_requested(make_scheduler: MakeScheduler) -> None:
    scheduler = await make_scheduler()
    await scheduler.create_service(make_spec(SLEEPER), 2)
    victim, survivor = state_of(scheduler).active

    result = await scheduler.kill_instance("svc-test", victim.id)
    assert result.outcome is KillOutcome.KILLED and result.success
    state = state_of(scheduler)
    assert state.requested == 1
    assert [i.id for i in state.active] == [survivor.id]
    ended = state.killed[0]
    assert (ended.id, ended.killed, ended.failed) == (victim.id, True, False)
    assert (ended.message, ended.exit_code) == ("Killed by request", -signal.SIGTERM)
    await groups_end(pid_of(victim))

    again = await scheduler.kill_instance("svc-test", victim.id)
    assert again.outcome is KillOutcome.ALREADY_KILLED
    assert state_of(scheduler).requested == 1


async def test_kill_with_replace_starts_a_new_instance(make_scheduler: MakeScheduler) -> None:
    scheduler = await make_scheduler()
    await scheduler.create_service(make_spec(SLEEPER), 1)
    victim = state_of(scheduler).active[0]
    flags = frozenset({InstanceFlag.NEVER_PASSED_HEALTH_CHECKS.value})

    result = await scheduler.kill_instance(
        "svc-test", victim.id, replace=True, message="Exceeded grace period", flags=flags, failed=True
    )
    assert result.success
    state = state_of(scheduler)
    assert state.requested == 1
    assert len(state.active) == 1 and state.active[0].id != victim.id
    ended = state.failed[0]
    assert (ended.id, ended.message, ended.flags) == (victim.id, "Exceeded grace period", flags)
    assert ended.failed and not ended.killed


@pytest.mark.parametrize(
    ("service_id", "instance_id"),
    [("svc-missing", "svc-missing.1-2"), ("svc-test", "svc-test.1-2")],
    ids=["unknown-service", "unknown-instance"],
)
async def test_kill_unknown_instance(make_scheduler: MakeScheduler, service_id: str, instance_id: str) -> None:
    scheduler = await make_scheduler()
    await scheduler.create_service(make_spec(SLEEPER), 1)
    result = await scheduler.kill_instance(service_id, instance_id)
    assert result.outcome is KillOutcome.NO_SUCH_INSTANCE and not result.success
    assert instance_id in result.message


async def test_term_ignoring_process_is_sigkilled_after_the_grace(make_scheduler: MakeScheduler) -> None:
    scheduler = await make_scheduler(min_kill_grace_secs=0.3)
    await scheduler.create_service(make_spec(TERM_IGNORER), 1)
    victim = state_of(scheduler).active[0]
    await file_exists(Path(str(victim.log_directory)) / "ready")

    started = time.monotonic()
    await scheduler.kill_instance("svc-test", victim.id)
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 3.0
    assert state_of(scheduler).killed[0].exit_code == -signal.SIGKILL


async def test_force_kill_is_immediate(make_scheduler: MakeScheduler) -> None:
    scheduler = await make_scheduler(min_kill_grace_secs=0.3)
    await scheduler.create_service(make_spec(TERM_IGNORER, termination_grace_period_secs=30), 1)
    victim = state_of(scheduler).active[0]
    await file_exists(Path(str(victim.log_directory)) / "ready")

    started = time.monotonic()
    await scheduler.kill_instance("svc-test", victim.id, force=True)
    assert time.monotonic() - started < 2.0
    assert state_of(scheduler).killed[0].exit_code == -signal.SIGKILL


async def test_memory_hog_is_killed_flagged_and_replaced(make_scheduler: MakeScheduler) -> None:
    scheduler = await make_scheduler(memory_check_interval_secs=0.05)
    changes = Changes(scheduler)
    hog = "exec python3 -c \"import time; data = b'x' * (200 << 20); time.sleep(1000)\""
    await scheduler.create_service(make_spec(hog, mem=50.0), 1)
    await changes.until(lambda: bool(state_of(scheduler).failed))

    ended = state_of(scheduler).failed[0]
    assert ended.failed and ended.flags == frozenset({MEMORY})
    assert ended.exit_code == -signal.SIGKILL
    assert ended.message is not None and ended.message.startswith("Exceeded allocated memory usage (")
    assert ended.message.endswith(" MiB > 50 MiB)")
    await changes.until(lambda: any(i.id != ended.id for i in state_of(scheduler).active))


async def test_port_in_use_on_the_host_is_skipped(make_scheduler: MakeScheduler) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        scheduler = await make_scheduler(port_range=(busy, busy + 20))
        await scheduler.create_service(make_spec(SLEEPER, ports=2), 1)
        instance = state_of(scheduler).active[0]
        assert busy not in (instance.port, *instance.extra_ports)
        assert busy < instance.port <= busy + 20


async def test_close_leaves_no_process_or_task_behind(make_scheduler: MakeScheduler) -> None:
    scheduler = await make_scheduler(min_kill_grace_secs=0.3)
    await scheduler.create_service(make_spec(f"sleep 1000 & {HTTP_SERVER}"), 1)
    await scheduler.create_service(make_spec(TERM_IGNORER, service_id="svc-stubborn"), 1)
    await scheduler.create_service(make_spec("exit 1", service_id="svc-crasher"), 1)
    leaders = [pid_of(state_of(scheduler, sid).active[0]) for sid in ("svc-test", "svc-stubborn")]
    stubborn = state_of(scheduler, "svc-stubborn").active[0]
    await file_exists(Path(str(stubborn.log_directory)) / "ready")

    await eventually(lambda: len(group_members(leaders[0])) >= 2)  # the background sleep and the http server

    await scheduler.close()
    assert asyncio.all_tasks() == {asyncio.current_task()}
    await groups_end(*leaders)
    with pytest.raises(SchedulerError, match="shutting down"):
        await scheduler.create_service(make_spec(SLEEPER, service_id="svc-late"), 1)


async def test_delete_service_kills_every_instance_and_forgets_it(make_scheduler: MakeScheduler) -> None:
    scheduler = await make_scheduler()
    changes = Changes(scheduler)
    await scheduler.create_service(make_spec(f"sleep 1000 & {SLEEPER}"), 2)
    leaders = [pid_of(i) for i in state_of(scheduler).active]

    await eventually(lambda: all(len(group_members(leader)) >= 2 for leader in leaders))
    changes.calls.clear()
    assert await scheduler.delete_service("svc-test") is True
    assert scheduler.service_state("svc-test") is None and scheduler.service_ids() == []
    await groups_end(*leaders)
    await changes.until(lambda: "svc-test" in changes.calls)
    assert await scheduler.delete_service("svc-test") is False


async def test_relative_work_dir_is_made_absolute(
    make_scheduler: MakeScheduler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    scheduler = await make_scheduler(work_dir=Path("relative"))
    assert scheduler.settings.work_dir == tmp_path / "relative"
    await scheduler.create_service(make_spec("touch ran; " + SLEEPER), 1)
    await file_exists(tmp_path / "relative" / "svc-test" / state_of(scheduler).active[0].id / "ran")


async def test_scale_unknown_service_is_an_error(make_scheduler: MakeScheduler) -> None:
    scheduler = await make_scheduler()
    with pytest.raises(SchedulerError, match="svc-missing"):
        await scheduler.scale_service("svc-missing", 2)


async def test_no_free_port_is_shown_on_the_service(make_scheduler: MakeScheduler) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        scheduler = await make_scheduler(port_range=(busy, busy))
        assert await scheduler.create_service(make_spec(SLEEPER), 1) is True
        state = state_of(scheduler)
        assert state.active == ()
        assert state.error is not None and f"[{busy}, {busy}]" in state.error


# -- pure parts --


@pytest.mark.parametrize(
    ("failures", "base", "factor", "expected"),
    [
        (1, 0.5, 2.0, 0.5),
        (2, 0.5, 2.0, 1.0),
        (4, 0.5, 2.0, 4.0),
        (3, 0.5, 1.0, 0.5),
        (0, 0.5, 2.0, 0.5),
        (20, 0.5, 2.0, 60.0),
        (5000, 0.5, 2.0, 60.0),
    ],
    ids=["first", "second", "fourth", "factor-one", "zero-as-first", "capped", "overflow-capped"],
)
def test_restart_delay(failures: int, base: float, factor: float, expected: float) -> None:
    assert restart_delay(failures, base, factor) == expected


@pytest.mark.parametrize(
    ("exit_code", "expected"),
    [
        (0, "Exited with code 0"),
        (3, "Exited with code 3"),
        (-9, "Killed by signal SIGKILL"),
        (-15, "Killed by signal SIGTERM"),
        (-200, "Killed by signal 200"),
    ],
    ids=["clean", "error", "sigkill", "sigterm", "unknown-signal"],
)
def test_exit_message(exit_code: int, expected: str) -> None:
    assert exit_message(exit_code) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1.0, "1"), (0.5, "0.5"), (1536, "1536"), (0.1, "0.1")],
    ids=["whole", "half", "int", "tenth"],
)
def test_format_number(value: float, expected: str) -> None:
    assert format_number(value) == expected


@pytest.mark.parametrize(
    ("spec", "instances", "field"),
    [
        (make_spec("true", service_id="../escape"), 1, "service-id"),
        (make_spec("true", service_id="svc.dotted"), 1, "service-id"),
        (make_spec("  "), 1, "cmd"),
        (make_spec("true", ports=0), 1, "ports"),
        (make_spec("true", mem=0.0), 1, "mem"),
        (make_spec("true"), -1, "instances"),
    ],
    ids=["path", "dot", "empty-cmd", "no-ports", "no-mem", "negative-instances"],
)
def test_check_spec_refuses(spec: ServiceSpec, instances: int, field: str) -> None:
    with pytest.raises(SchedulerError, match=field):
        check_spec(spec, instances)


def _instance(number: int) -> Instance:
    return Instance(id=f"svc-test.{number}", service_id="svc-test", host="h", port=1, started_at=0.0)


@pytest.mark.parametrize(
    ("lifetimes", "expected"),
    [([1.0], 1), ([1.0, 1.0, 1.0], 3), ([1.0, 1.0, 11.0], 1), ([11.0, 1.0], 2)],
    ids=["first", "consecutive", "long-lived-resets", "after-reset"],
)
def test_service_book_counts_consecutive_crashes(lifetimes: list[float], expected: int) -> None:
    book = ServiceBook(make_spec("true"), 1, 10)
    assert [book.note_crash(lifetime) for lifetime in lifetimes][-1] == expected


def test_service_book_keeps_the_newest_ended_and_excludes_stopping() -> None:
    book = ServiceBook(make_spec("true"), 3, max_ended=2)
    for number in range(4):
        book.add(_instance(number))
    book.stopping.add("svc-test.3")
    assert book.missing() == 0
    book.stopping.add("svc-test.2")
    assert book.missing() == 1
    for number in range(3):
        book.end(ended_instance(_instance(number), 0, None))
    state = book.snapshot()
    assert [i.id for i in state.killed] == ["svc-test.1", "svc-test.2"]
    assert [i.id for i in state.active] == ["svc-test.3"]
    assert book.find_ended("svc-test.0") is None and book.find_ended("svc-test.2") is not None


# -- ports --


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Step = tuple[str, Any]


@pytest.mark.parametrize(
    ("steps", "busy", "expected"),
    [
        ([("alloc", 2)], set(), (100, 101)),
        ([("alloc", 2), ("alloc", 1)], set(), (102,)),
        ([("alloc", 1)], {100, 101}, (102,)),
        ([("alloc", 1), ("release", (100,)), ("advance", 119.0), ("alloc", 1)], set(), (101,)),
        ([("alloc", 1), ("release", (100,)), ("advance", 120.0), ("alloc", 1)], set(), (100,)),
        ([("alloc", 1), ("release-now", (100,)), ("alloc", 1)], set(), (100,)),
        ([("alloc", 1)], {101, 103}, (100,)),
        ([("alloc", 3)], {101, 103}, (100, 102, 104)),
        # The range is full but for released ports: they are reused at once, the longest released first.
        ([("alloc", 11), ("release", (105,)), ("advance", 1.0), ("release", (103,)), ("alloc", 1)], set(), (105,)),
        (
            [("alloc", 11), ("release", (105, 103)), ("advance", 1.0), ("release", (104,)), ("alloc", 2)],
            set(),
            (103, 105),
        ),
        ([("alloc", 10), ("release", (100,)), ("alloc", 1)], set(), (110,)),  # a fresh port still goes first
    ],
    ids=[
        "first-free",
        "held-by-instance",
        "bound-on-host",
        "on-hold",
        "hold-expired",
        "released-without-hold",
        "lowest-first",
        "gaps",
        "held-reused-when-full",
        "held-longest-first",
        "fresh-before-held",
    ],
)
def test_port_allocator(steps: list[Step], busy: set[int], expected: tuple[int, ...]) -> None:
    clock = FakeClock()
    allocator = PortAllocator((100, 110), 120.0, clock=clock, probe=lambda port: port not in busy)
    result: tuple[int, ...] = ()
    for action, argument in steps:
        if action == "alloc":
            result = allocator.allocate(argument)
        elif action == "release":
            allocator.release(argument)
        elif action == "release-now":
            allocator.release(argument, hold=False)
        else:
            clock.now += argument
    assert result == expected


@pytest.mark.parametrize(
    ("held", "busy", "count"),
    [((), {100, 101, 102}, 1), ((100,), {102}, 2), ((), set(), 4)],
    ids=["all-bound", "held-and-bound", "range-too-small"],
)
def test_port_allocator_exhaustion(held: tuple[int, ...], busy: set[int], count: int) -> None:
    allocator = PortAllocator((100, 102), 120.0, clock=FakeClock(), probe=lambda port: port not in busy)
    if held:
        allocator.allocate(len(held))
    reserved_before = allocator.reserved()
    with pytest.raises(SchedulerError, match=r"port-range \[100, 102\]: an instance needs"):
        allocator.allocate(count)
    assert allocator.reserved() == reserved_before  # nothing was taken by the failed call


@pytest.mark.parametrize(
    ("port_range", "hold"),
    [((0, 10), 1.0), ((20, 10), 1.0), ((10, 70000), 1.0), ((10, 20), -1.0)],
    ids=["zero", "reversed", "too-high", "negative-hold"],
)
def test_port_allocator_refuses_bad_settings(port_range: tuple[int, int], hold: float) -> None:
    with pytest.raises(ValueError, match=r"port-range|port-hold-secs"):
        PortAllocator(port_range, hold)


def test_a_released_port_is_unlocked_machine_wide_at_once(tmp_path: Path) -> None:
    """The lock only keeps two routers from sharing a live port; a released one is another router's to take."""
    mine = PortAllocator((100, 101), 120.0, clock=FakeClock(), probe=lambda port: True, lock_dir=tmp_path)
    theirs = PortAllocator((100, 101), 120.0, clock=FakeClock(), probe=lambda port: True, lock_dir=tmp_path)
    assert mine.allocate(1) == (100,)
    assert theirs.allocate(1) == (101,)  # 100 is live and locked by the other allocator
    with pytest.raises(SchedulerError):
        theirs.allocate(1)
    mine.release((100,))
    assert theirs.allocate(1) == (100,)
    mine.close()
    theirs.close()


def test_port_is_bindable_sees_a_listening_socket() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert port_is_bindable("127.0.0.1", port) is False
    assert port_is_bindable("127.0.0.1", port) is True


# -- instances that outlive their router (waiter.scheduler.leftovers) --


@pytest.fixture
def strangers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started by a test in sessions of their own, killed at the end whatever happened."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def spawn(strangers: list[subprocess.Popen[bytes]], cmd: str, cwd: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(["bash", "-c", cmd], start_new_session=True, cwd=cwd)
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
    left = spawn(strangers, "sleep 1000 & touch started; wait", tmp_path)
    await eventually(lambda: len(group_members(left.pid)) == 2, "bash and its background child")
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
    recycled = spawn(strangers, "sleep 1000", tmp_path)
    alive_owner = spawn(strangers, "sleep 1000", tmp_path)
    owned = spawn(strangers, "sleep 1000", tmp_path)
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
    await eventually(lambda: group_members(instance_pid) == [], "the watchdog to stop the instance")
    psutil.Process(watchdog_pid).wait(5)  # and the watchdog itself is gone
    assert leftovers.read_records(work_dir) == []


# -- sandboxes of ended instances (waiter.scheduler.sandboxes) --


def _ended(*ages: float) -> list[EndedSandbox]:
    return [EndedSandbox(Path(f"s{index}"), 1000.0 - age) for index, age in enumerate(ages)]


@pytest.mark.parametrize(
    ("ages", "retention", "kept", "exists", "expected"),
    [
        ((10, 20, 30), 15, 0, True, ["s1", "s2"]),
        ((10, 20, 30), 15, 2, True, ["s2"]),  # the newest two stay however old
        ((10, 20, 30), 15, 5, True, []),
        ((10, 20, 30), 15, 2, False, ["s1", "s2"]),  # a deleted service keeps none beyond the retention
        ((10, 20, 30), 100, 0, False, []),
        ((30, 10, 20), 0, 1, True, ["s2", "s0"]),  # newest first, whatever the order found
    ],
    ids=["retention", "kept", "all-kept", "deleted-service", "young", "order"],
)
def test_sandboxes_to_remove(
    ages: tuple[float, ...], retention: float, kept: int, exists: bool, expected: list[str]
) -> None:
    assert [str(p) for p in to_remove(_ended(*ages), 1000.0, retention, kept, exists)] == expected


async def test_sandboxes_of_ended_instances_are_swept(make_scheduler: MakeScheduler, tmp_path: Path) -> None:
    # Swept at start and then hourly: the test sweeps by itself.
    scheduler = await make_scheduler(sandbox_retention_secs=0, sandboxes_kept=1, sandbox_sweep_interval_secs=3600)
    work_dir = scheduler.settings.work_dir
    stranger = work_dir / "not-a-service" / "x"
    stranger.mkdir(parents=True)
    await scheduler.create_service(make_spec(SLEEPER), 1)
    for _ in range(3):
        (instance,) = state_of(scheduler).active
        await scheduler.kill_instance("svc-test", instance.id, replace=True, force=True)
    (running,) = state_of(scheduler).active
    newest_ended = state_of(scheduler).killed[-1]
    service_dir = work_dir / "svc-test"
    assert len([p for p in service_dir.iterdir() if p.is_dir()]) == 4
    assert await scheduler.sweep_sandboxes() == 2
    left = {p.name for p in service_dir.iterdir() if p.is_dir()}
    assert left == {running.id, newest_ended.id}
    await scheduler.delete_service("svc-test")
    assert await scheduler.sweep_sandboxes() == 2
    assert not service_dir.exists()
    assert stranger.is_dir()  # what the router did not make is not its to remove


async def test_tree_memory_is_read_for_every_instance_from_one_reading_of_the_process_table() -> None:
    # Two process trees (a shell and its two children each): each leader's size is its tree's, and a leader that
    # is gone has none.
    trees = [subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"], start_new_session=True) for _ in range(2)]
    try:
        await eventually(lambda: all(len(psutil.Process(p.pid).children()) == 2 for p in trees), timeout=10.0)
        members = {p.pid: [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)] for p in trees}
        sizes = trees_rss_bytes([*members, 2**22 + 1])  # above pid_max's default: nobody
        assert set(sizes) == set(members)
        for leader, processes in members.items():
            expected = sum(process.memory_info().rss for process in processes)
            assert abs(sizes[leader] - expected) < 1024 * 1024, (sizes[leader], expected)  # sleeping: steady sizes
            assert sizes[leader] > psutil.Process(leader).memory_info().rss  # the children count too
    finally:
        for p in trees:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
