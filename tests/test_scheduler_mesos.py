"""The Mesos scheduler against the Mesos master emulator (real processes), plus table tests of its pure parts."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from tests.emulators.runner import running_emulator
from tests.support import Changes, eventually
from waiter.lifecycle import deployment_error
from waiter.messages import MESSAGES
from waiter.scheduler import create_scheduler
from waiter.scheduler.base import Instance, KillOutcome, ServiceSpec, ServiceState
from waiter.scheduler.exits import exit_code_of
from waiter.scheduler.mesos import MesosScheduler
from waiter.scheduler.mesos_failover import FileFrameworkIds, FrameworkIdStore, Reconciliation
from waiter.scheduler.mesos_instances import adopt, launch
from waiter.scheduler.mesos_proto import (
    Need,
    Offer,
    Pool,
    RecordIOError,
    RecordIOParser,
    TaskPhase,
    TaskStatus,
    encode_record,
    leader_from_location,
    offers_of,
    port_ranges,
    shortfall,
    take,
    task_outcome,
    usable_role,
)
from waiter.scheduler.mesos_tasks import MesosSettings
from waiter.settings import SettingsError, load_settings

HTTP_SERVER = 'exec python3 -m http.server "$PORT0" --bind 127.0.0.1'
SLEEPER = "exec sleep 1000"


# -- the scheduler against the emulator --


class Emulator:
    """A running Mesos master emulator: its address and its emulator-only controls."""

    def __init__(self, url: str, session: aiohttp.ClientSession, work_dir: Path) -> None:
        self.url = url
        self.address = url.removeprefix("http://")
        self.session = session
        self.work_dir = work_dir

    async def state(self) -> dict[str, Any]:
        async with self.session.get(f"{self.url}/emulator/state") as response:
            return await response.json()  # type: ignore[no-any-return]

    async def control(self, path: str, body: dict[str, Any] | None = None) -> None:
        async with self.session.post(f"{self.url}/emulator/{path}", json=body or {}) as response:
            assert response.status == 200, await response.text()

    async def framework(self) -> dict[str, Any]:
        (framework,) = (await self.state())["frameworks"]
        return framework  # type: ignore[no-any-return]


StartEmulator = Callable[..., Awaitable[Emulator]]
MakeScheduler = Callable[..., Awaitable[MesosScheduler]]


def port_range() -> str:
    low = random.randrange(21000, 31000)
    return f"{low}-{low + 99}"


@pytest.fixture
async def start_emulator(tmp_path: Path) -> AsyncIterator[StartEmulator]:
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        started: list[Emulator] = []

        async def start(*args: str) -> Emulator:
            work_dir = tmp_path / f"mesos{len(started)}"
            defaults = [
                "--work-dir",
                str(work_dir),
                "--port-range",
                port_range(),
                "--allocation-secs",
                "0.05",
                "--heartbeat-secs",
                "1",
                "--update-retry-secs",
                "1",
            ]
            url = await stack.enter_async_context(running_emulator("mesos", *defaults, *args))
            started.append(Emulator(url, session, work_dir))
            return started[-1]

        yield start


@pytest.fixture
async def make_scheduler() -> AsyncIterator[MakeScheduler]:
    made: list[MesosScheduler] = []

    async def make(
        emulator: Emulator, framework_ids: FrameworkIdStore | None = None, **overrides: Any
    ) -> MesosScheduler:
        values: dict[str, Any] = {
            "master": emulator.address,
            "agent_work_dir": str(emulator.work_dir),
            "request_timeout_secs": 2.0,
            "tick_secs": 0.05,
            "min_kill_grace_secs": 0.3,
            "restart_backoff_base_secs": 0.1,
            "reconnect_max_secs": 0.2,
            **overrides,
        }
        scheduler = MesosScheduler(MesosSettings(**values), framework_ids)
        made.append(scheduler)
        await scheduler.start()
        async with asyncio.timeout(10):
            await scheduler.client.connected.wait()
        return scheduler

    yield make
    for scheduler in made:
        await scheduler.close()


def make_spec(cmd: str = SLEEPER, service_id: str = "svc-test", **overrides: Any) -> ServiceSpec:
    values: dict[str, Any] = {"cpus": 0.5, "mem": 128.0, **overrides}
    return ServiceSpec(service_id=service_id, cmd=cmd, **values)


def state_of(scheduler: MesosScheduler, service_id: str = "svc-test") -> ServiceState:
    state = scheduler.service_state(service_id)
    assert state is not None, f"service {service_id} is unknown"
    return state


def running(scheduler: MesosScheduler, count: int, service_id: str = "svc-test") -> Callable[[], bool]:
    def check() -> bool:
        active = state_of(scheduler, service_id).active
        return len(active) == count and all(i.extras["mesos/task-state"] == "TASK_RUNNING" for i in active)

    return check


async def answers(host: str, port: int) -> bool:
    try:
        async with aiohttp.ClientSession() as session, session.get(f"http://{host}:{port}/") as response:
            return response.status == 200
    except aiohttp.ClientConnectionError:
        return False


async def test_launches_a_task_with_its_environment_ports_and_sandbox(
    start_emulator: StartEmulator, make_scheduler: MakeScheduler
) -> None:
    emulator = await start_emulator()
    scheduler = await make_scheduler(emulator, cluster_name="test-cluster")
    changes = Changes(scheduler)
    cmd = "env > env.tmp && mv env.tmp env.txt; " + SLEEPER
    spec = make_spec(cmd, ports=2, cpus=1.0, mem=256.0, run_as_user="alice", token="tok", env={"GREETING": "hi there"})
    assert await scheduler.create_service(spec, 1) is True
    assert await scheduler.create_service(spec, 3) is False
    await changes.until(running(scheduler, 1))

    (instance,) = state_of(scheduler).active
    assert instance.id.startswith("svc-test.") and instance.id.count(".") == 1
    low, high = (int(p) for p in (await emulator.state())["agent"]["ports"])
    assert low <= instance.port <= high and len(instance.extra_ports) == 1
    sandbox = Path(str(instance.log_directory))
    assert sandbox.is_relative_to(emulator.work_dir)

    async def env_written() -> bool:
        return (sandbox / "env.txt").exists()

    await eventually(env_written)
    env = dict(line.split("=", 1) for line in (sandbox / "env.txt").read_text().splitlines() if "=" in line)
    assert env["GREETING"] == "hi there"
    assert (env["PORT0"], env["PORT1"]) == (str(instance.port), str(instance.extra_ports[0]))
    assert (env["USER"], env["HOME"]) == ("alice", "/home/alice")
    assert (env["WAITER_CPUS"], env["WAITER_MEM_MB"], env["WAITER_CLUSTER"]) == ("1", "256", "test-cluster")
    assert (env["WAITER_SERVICE_ID"], env["WAITER_TOKEN"]) == ("svc-test", "tok")
    assert env["WAITER_INSTANCE_ID"] == instance.id
    assert env["WAITER_SANDBOX"] == str(sandbox)
    assert Path(env["MESOS_SANDBOX"]).parent == sandbox.parent  # runs/<run id>, which runs/latest links to
    (task,) = (await emulator.state())["tasks"]
    assert (task["id"], task["ports"]) == (instance.id, [instance.port, *instance.extra_ports])
    assert task["user"] == "alice"  # the user Mesos runs it as is the one USER and HOME name


async def test_without_run_as_user_the_task_runs_as_the_framework_user_and_says_so(
    start_emulator: StartEmulator, make_scheduler: MakeScheduler
) -> None:
    emulator = await start_emulator()
    scheduler = await make_scheduler(emulator, user="svc-runner")
    changes = Changes(scheduler)
    await scheduler.create_service(make_spec("env > env.tmp && mv env.tmp env.txt; " + SLEEPER), 1)
    await changes.until(running(scheduler, 1))
    (instance,) = state_of(scheduler).active
    sandbox = Path(str(instance.log_directory))
    await eventually(lambda: (sandbox / "env.txt").exists())
    env = dict(line.split("=", 1) for line in (sandbox / "env.txt").read_text().splitlines() if "=" in line)
    (task,) = (await emulator.state())["tasks"]
    assert task["user"] == env["USER"] == env["LOGNAME"] == "svc-runner"
    assert env["HOME"] == "/home/svc-runner"


async def test_launches_from_role_reserved_offers_of_several_agents_as_the_master_validates(
    start_emulator: StartEmulator, make_scheduler: MakeScheduler
) -> None:
    # Two agents of 2 cpus, 1 of each reserved for "web": six instances of 0.5 cpus need reserved and unreserved
    # cpus of both agents. The master refuses any task whose resources are not in the offer field by field.
    emulator = await start_emulator("--agents", "2", "--cpus", "2", "--mem", "2048", "--reserve", "web:1:512")
    scheduler = await make_scheduler(emulator, role="web")
    changes = Changes(scheduler)
    await scheduler.create_service(make_spec(cpus=0.5, mem=128.0), 6)
    await changes.until(running(scheduler, 6))
    state = await emulator.state()
    assert state_of(scheduler).failed == ()
    assert {t["agent_id"] for t in state["tasks"]} == {a["id"] for a in state["agents"]}
    used = {role for t in state["tasks"] for role in t["resources_by_role"]}
    assert used == {"web", "*"}
    reserved_cpus = sum(t["resources_by_role"].get("web", [0, 0])[0] for t in state["tasks"])
    assert reserved_cpus == pytest.approx(2.0)  # reserved first: all of both agents' reservations are used
    assert (await emulator.framework())["roles"] == ["web"]


async def test_the_master_refuses_resources_summed_across_roles(start_emulator: StartEmulator) -> None:
    """What the scheduler used to send: cpus without the reservation they came from. TASK_ERROR, as validation.cpp."""
    emulator = await start_emulator("--cpus", "2", "--reserve", "web:1:512")
    url = f"{emulator.url}/api/v1/scheduler"
    info = {"user": "u", "name": "n", "roles": ["web"], "capabilities": [{"type": "MULTI_ROLE"}]}
    subscribe = {"type": "SUBSCRIBE", "subscribe": {"framework_info": info}}
    async with aiohttp.ClientSession() as session, session.post(url, json=subscribe) as stream:
        stream_id = stream.headers["Mesos-Stream-Id"]
        parser = RecordIOParser()
        events: list[dict[str, Any]] = []

        async def next_event(kind: str) -> dict[str, Any]:
            while True:
                while events:
                    event = events.pop(0)
                    if event["type"] == kind:
                        return event
                events.extend(json.loads(r) for r in parser.feed(await stream.content.readany()))

        framework = (await next_event("SUBSCRIBED"))["subscribed"]["framework_id"]
        (offer,) = (await next_event("OFFERS"))["offers"]["offers"]
        assert {r.get("role") for r in offer["resources"] if r["name"] == "cpus"} == {"web", "*"}
        summed = [
            {"name": "cpus", "type": "SCALAR", "scalar": {"value": 1.5}, "allocation_info": {"role": "web"}},
            {"name": "mem", "type": "SCALAR", "scalar": {"value": 64}, "allocation_info": {"role": "web"}},
        ]
        task = {
            "name": "t",
            "task_id": {"value": "t1"},
            "agent_id": offer["agent_id"],
            "resources": summed,
            "command": {"value": "sleep 100"},
        }
        accept = {
            "type": "ACCEPT",
            "framework_id": framework,
            "accept": {
                "offer_ids": [offer["id"]],
                "operations": [{"type": "LAUNCH", "launch": {"task_infos": [task]}}],
            },
        }
        headers = {"Content-Type": "application/json", "Mesos-Stream-Id": stream_id}
        async with session.post(url, data=json.dumps(accept), headers=headers) as response:
            assert response.status == 202
        status = (await next_event("UPDATE"))["update"]["status"]
    assert (status["state"], status["reason"]) == ("TASK_ERROR", "REASON_TASK_INVALID")
    assert status["message"].startswith("Task uses more resources cpus(allocated: web):1.5")
    assert (await emulator.state())["tasks"] == []


async def test_an_out_of_memory_task_is_a_memory_deployment_error(
    start_emulator: StartEmulator, make_scheduler: MakeScheduler
) -> None:
    emulator = await start_emulator()
    scheduler = await make_scheduler(emulator, restart_backoff_base_secs=0.01)
    changes = Changes(scheduler)
    await scheduler.create_service(make_spec(), 1)
    for round_ in range(2):
        await changes.until(lambda r=round_: running(scheduler, 1)() and len(state_of(scheduler).failed) == r)
        (victim,) = state_of(scheduler).active
        await emulator.control(f"tasks/{victim.id}/oom")
    await changes.until(lambda: len(state_of(scheduler).failed) == 2)
    failed = state_of(scheduler).failed
    assert all(i.flags == {"memory-limit-exceeded"} for i in failed)
    assert failed[0].message == "Memory limit exceeded: Requested: 128MB Maximum Used: 128MB"  # no statistics
    assert deployment_error(failed, 0.0) == MESSAGES["not-enough-memory"]


async def test_the_exit_code_survives_core_dumped(start_emulator: StartEmulator, make_scheduler: MakeScheduler) -> None:
    emulator = await start_emulator("--behaviour", "core-dumps=true")
    scheduler = await make_scheduler(emulator)
    changes = Changes(scheduler)
    await scheduler.create_service(make_spec(), 1)
    await changes.until(running(scheduler, 1))
    (victim,) = state_of(scheduler).active
    await emulator.control(f"tasks/{victim.id}/kill", {"signal": "SEGV"})
    await changes.until(lambda: bool(state_of(scheduler).failed))
    (ended,) = state_of(scheduler).failed
    assert (ended.exit_code, ended.message) == (-11, "Killed by signal SIGSEGV")


async def test_every_other_event_is_handled_and_a_removed_agent_is_replaced(
    start_emulator: StartEmulator, make_scheduler: MakeScheduler
) -> None:
    emulator = await start_emulator("--agents", "2")
    scheduler = await make_scheduler(emulator)
    changes = Changes(scheduler)
    await scheduler.create_service(make_spec(), 1)
    await changes.until(running(scheduler, 1))
    (first,) = state_of(scheduler).active
    await emulator.control("events", {"type": "INVERSE_OFFERS"})

    async def inverse_offer_accepted() -> bool:
        return list((await emulator.framework())["inverse_answers"].values()) == ["accepted"]

    await eventually(inverse_offer_accepted)  # maintenance agreed: instances are replaceable
    for kind in ("RESCIND_INVERSE_OFFER", "MESSAGE", "UPDATE_OPERATION_STATUS"):
        await emulator.control("events", {"type": kind})
    await scheduler.scale_service("svc-test", 2)  # still works on the same subscription after all of them
    await changes.until(running(scheduler, 2))
    (extra,) = [i for i in state_of(scheduler).active if i.id != first.id]
    assert (await scheduler.kill_instance("svc-test", extra.id)).success
    framework = await emulator.framework()
    assert framework["subscriptions"] == 1 and framework["connected"]  # nothing above broke the subscription
    assert [i.id for i in state_of(scheduler).active] == [first.id]

    index = [a["id"] for a in (await emulator.state())["agents"]].index(first.extras["mesos/agent-id"])
    await emulator.control(f"agents/{index}/remove")  # TASK_LOST for its task, then FAILURE
    await changes.until(lambda: bool(state_of(scheduler).failed) and running(scheduler, 1)())
    (replacement,) = state_of(scheduler).active
    assert replacement.extras["mesos/agent-id"] != first.extras["mesos/agent-id"]
    assert state_of(scheduler).failed[0].id == first.id


async def test_a_task_lost_and_back_running_is_killed_as_surplus(
    start_emulator: StartEmulator, make_scheduler: MakeScheduler
) -> None:
    emulator = await start_emulator()
    scheduler = await make_scheduler(emulator)
    changes = Changes(scheduler)
    await scheduler.create_service(make_spec(), 1)
    await changes.until(running(scheduler, 1))
    (lost,) = state_of(scheduler).active
    await emulator.control(f"tasks/{lost.id}/lose", {"come-back-after-ms": 300})
    await changes.until(lambda: bool(state_of(scheduler).failed) and running(scheduler, 1)())

    async def killed_when_back() -> bool:
        state = await emulator.state()
        tasks = {t["id"]: t["state"] for t in state["tasks"]}
        kills = state["frameworks"][0]["calls"].get("KILL", 0)
        return bool(kills >= 1 and tasks.get(lost.id) in (None, "TASK_KILLED"))

    await eventually(killed_when_back)
    assert [i.id for i in state_of(scheduler).active] != [lost.id] and len(state_of(scheduler).active) == 1


async def test_a_new_master_recovering_then_silent_on_reconciliation_is_asked_again(
    start_emulator: StartEmulator, make_scheduler: MakeScheduler
) -> None:
    emulator = await start_emulator("--behaviour", "reregister-after-secs=1.0")
    scheduler = await make_scheduler(emulator, reconcile_retry_secs=0.3)
    changes = Changes(scheduler)
    await scheduler.create_service(make_spec(), 1)
    await changes.until(running(scheduler, 1))
    (instance,) = state_of(scheduler).active
    await emulator.control("behaviours", {"recovering": True})
    await emulator.control("master-failover")
    await eventually(lambda: not scheduler.client.connected.is_set())
    refused = (await emulator.state())["unavailable"]
    await eventually(lambda: _unavailable_more_than(emulator, refused))  # SUBSCRIBE met 503 and is retried
    reconciles = (await emulator.framework())["calls"]["RECONCILE"]  # before it can subscribe again
    await emulator.control("behaviours", {"recovering": False})

    async def asked_again() -> bool:
        return bool((await emulator.framework())["calls"]["RECONCILE"] >= reconciles + 3)

    await eventually(asked_again)  # explicit + implicit after subscribing, then explicit again for no answer
    assert [i.id for i in state_of(scheduler).active] == [instance.id]
    await eventually(
        lambda: scheduler.reconciliation.unanswered == {}, what="the agent re-registered and every task answered"
    )


async def _unavailable_more_than(emulator: Emulator, count: int) -> bool:
    return bool((await emulator.state())["unavailable"] > count)


async def test_a_scheduler_whose_framework_failed_over_steps_aside(
    start_emulator: StartEmulator, make_scheduler: MakeScheduler
) -> None:
    emulator = await start_emulator()
    first = await make_scheduler(emulator)
    changes = Changes(first)
    await first.create_service(make_spec(), 1)
    await changes.until(running(first, 1))
    second = MesosScheduler(MesosSettings(master=emulator.address, request_timeout_secs=2.0, reconnect_max_secs=0.2))
    second.client.framework_id = first.client.framework_id  # e.g. a restarted router that kept the id
    try:
        await second.start()
        await changes.until(lambda: state_of(first).error is not None)
        assert "another scheduler took over Mesos framework" in str(state_of(first).error)
        assert "Framework failed over" in str(state_of(first).error)
        assert first.client.superseded is not None and not first.client.connected.is_set()
        framework = await emulator.framework()
        assert framework["subscriptions"] == 2 and framework["connected"]  # no tug of war
    finally:
        await second.close()


async def test_reconnects_resubscribes_and_reconciles_when_the_stream_closes(
    start_emulator: StartEmulator, make_scheduler: MakeScheduler
) -> None:
    emulator = await start_emulator()
    scheduler = await make_scheduler(emulator)
    changes = Changes(scheduler)
    await scheduler.create_service(make_spec(HTTP_SERVER), 1)
    await changes.until(running(scheduler, 1))
    (before,) = state_of(scheduler).active
    framework_id = scheduler.client.framework_id
    assert (await emulator.framework())["calls"]["RECONCILE"] == 1  # the first subscription's

    await emulator.control("close-stream")

    async def resubscribed() -> bool:
        framework = await emulator.framework()
        return bool(framework["subscriptions"] == 2 and framework["connected"] and framework["calls"]["RECONCILE"] >= 3)

    await eventually(resubscribed)
    framework = await emulator.framework()
    assert framework["id"] == framework_id == scheduler.client.framework_id  # the same framework, not a new one
    assert (await emulator.state())["removed"] == []
    # The instance survived: same id, still active, still serving.
    assert [i.id for i in state_of(scheduler).active] == [before.id]
    assert state_of(scheduler).failed == ()
    await eventually(lambda: answers(before.host, before.port))
    # ... and the framework still works on the new subscription.
    await scheduler.scale_service("svc-test", 2)
    await changes.until(running(scheduler, 2))


async def test_missed_heartbeats_make_the_framework_reconnect(
    start_emulator: StartEmulator, make_scheduler: MakeScheduler
) -> None:
    emulator = await start_emulator("--heartbeat-secs", "0.1")
    scheduler = await make_scheduler(emulator)
    await emulator.control("heartbeats", {"enabled": False})

    async def resubscribed() -> bool:
        return bool((await emulator.framework())["subscriptions"] >= 2)

    await eventually(resubscribed, timeout=5)
    assert scheduler.client.framework_id == (await emulator.framework())["id"]


async def test_framework_removed_after_failover_timeout_registers_anew_and_replaces(
    start_emulator: StartEmulator, make_scheduler: MakeScheduler
) -> None:
    emulator = await start_emulator()
    scheduler = await make_scheduler(emulator, failover_timeout_secs=0.0)
    changes = Changes(scheduler)
    await scheduler.create_service(make_spec(), 1)
    await changes.until(running(scheduler, 1))
    (before,) = state_of(scheduler).active
    old_framework = scheduler.client.framework_id

    await emulator.control("close-stream")  # with no failover timeout, the master removes the framework at once
    await changes.until(lambda: len(state_of(scheduler).failed) == 1 and running(scheduler, 1)())

    (lost,) = state_of(scheduler).failed
    assert lost.id == before.id and lost.failed
    assert "unknown" in str(lost.message)
    assert scheduler.client.framework_id not in (None, old_framework)
    state = await emulator.state()
    assert state["removed"] == [old_framework]
    assert [t["id"] for t in state["tasks"] if t["state"] == "TASK_RUNNING"] == [state_of(scheduler).active[0].id]


async def test_not_enough_resources_is_a_deployment_error_naming_the_resource(
    start_emulator: StartEmulator, make_scheduler: MakeScheduler
) -> None:
    emulator = await start_emulator("--mem", "1024", "--cpus", "4")
    scheduler = await make_scheduler(emulator, offer_wait_secs=0.5)
    changes = Changes(scheduler)
    started = asyncio.get_running_loop().time()
    await scheduler.create_service(make_spec(mem=4096.0), 1)
    await changes.until(lambda: state_of(scheduler).error is not None)

    assert asyncio.get_running_loop().time() - started >= 0.5
    state = state_of(scheduler)
    assert state.error == "No offer had enough mem for an instance: need 4096 MiB, the largest offer has 1024 MiB"
    assert state.active == () and state.requested == 1

    await emulator.control("agent", {"mem": 8192})  # more resources: the instance is placed, the error clears
    await changes.until(lambda: running(scheduler, 1)() and state_of(scheduler).error is None)


async def test_cpus_shortfall_is_named(start_emulator: StartEmulator, make_scheduler: MakeScheduler) -> None:
    emulator = await start_emulator("--cpus", "1")
    scheduler = await make_scheduler(emulator, offer_wait_secs=0.3)
    changes = Changes(scheduler)
    await scheduler.create_service(make_spec(cpus=2.0), 1)
    await changes.until(lambda: state_of(scheduler).error is not None)
    expected = "No offer had enough cpus for an instance: need 2 cpus, the largest offer has 1 cpus"
    assert state_of(scheduler).error == expected


@pytest.mark.parametrize(
    ("control", "message"),
    [("kill", "Killed by signal SIGKILL"), ("lose", "Agent lost the task (REASON_AGENT_DISCONNECTED)")],
    ids=["failed", "lost"],
)
async def test_a_task_failed_or_lost_on_the_cluster_is_replaced(
    start_emulator: StartEmulator, make_scheduler: MakeScheduler, control: str, message: str
) -> None:
    emulator = await start_emulator()
    scheduler = await make_scheduler(emulator)
    changes = Changes(scheduler)
    await scheduler.create_service(make_spec(HTTP_SERVER), 1)
    await changes.until(running(scheduler, 1))
    (victim,) = state_of(scheduler).active

    await emulator.control(f"tasks/{victim.id}/{control}")
    await changes.until(lambda: bool(state_of(scheduler).failed) and running(scheduler, 1)())

    state = state_of(scheduler)
    (ended,) = state.failed
    assert (ended.id, ended.failed, ended.killed, ended.message) == (victim.id, True, False, message)
    assert ended.exit_code == (-9 if control == "kill" else None)
    assert state.requested == 1 and state.active[0].id != victim.id
    await eventually(lambda: answers(state.active[0].host, state.active[0].port))


async def test_exit_codes_and_clean_exits(start_emulator: StartEmulator, make_scheduler: MakeScheduler) -> None:
    emulator = await start_emulator()
    scheduler = await make_scheduler(emulator)
    changes = Changes(scheduler)
    await scheduler.create_service(make_spec("exit 3"), 1)
    await scheduler.create_service(make_spec("exit 0", service_id="svc-clean"), 1)
    await changes.until(lambda: len(state_of(scheduler).failed) >= 2 and bool(state_of(scheduler, "svc-clean").killed))

    first, second = state_of(scheduler).failed[:2]
    assert (first.exit_code, first.message, first.failed) == (3, "Exited with code 3", True)
    assert first.id != second.id
    clean = state_of(scheduler, "svc-clean").killed[0]
    assert (clean.exit_code, clean.message, clean.failed, clean.killed) == (0, "Exited with code 0", False, False)


async def test_kill_waits_for_the_end_and_acknowledges_every_update(
    start_emulator: StartEmulator, make_scheduler: MakeScheduler
) -> None:
    emulator = await start_emulator("--update-retry-secs", "60")  # no resends: every ACK answers one update
    scheduler = await make_scheduler(emulator)
    changes = Changes(scheduler)
    await scheduler.create_service(make_spec(), 2)
    await changes.until(running(scheduler, 2))
    victim, survivor = state_of(scheduler).active

    result = await scheduler.kill_instance("svc-test", victim.id)
    assert result.outcome is KillOutcome.KILLED
    state = state_of(scheduler)
    assert state.requested == 1 and [i.id for i in state.active] == [survivor.id]
    (ended,) = state.killed
    assert (ended.id, ended.killed, ended.message, ended.exit_code) == (victim.id, True, "Killed by request", -15)
    assert (await scheduler.kill_instance("svc-test", victim.id)).outcome is KillOutcome.ALREADY_KILLED
    assert (await scheduler.kill_instance("svc-test", "svc-test.nope")).outcome is KillOutcome.NO_SUCH_INSTANCE

    async def all_acknowledged() -> bool:
        framework = await emulator.framework()
        # STARTING + RUNNING for both tasks, KILLED for one; reconciliation answers carry no uuid and are not acked.
        return bool(framework["calls"].get("ACKNOWLEDGE") == 5)

    await eventually(all_acknowledged)
    assert [t["id"] for t in (await emulator.state())["tasks"]] == [survivor.id]  # the acked end is forgotten


async def test_delete_kills_the_tasks_and_close_leaves_the_framework_to_fail_over(
    start_emulator: StartEmulator, make_scheduler: MakeScheduler
) -> None:
    emulator = await start_emulator()
    scheduler = await make_scheduler(emulator)
    changes = Changes(scheduler)
    await scheduler.create_service(make_spec(), 2)
    await scheduler.create_service(make_spec(service_id="svc-other"), 1)
    await changes.until(lambda: running(scheduler, 2)() and running(scheduler, 1, "svc-other")())
    (other,) = state_of(scheduler, "svc-other").active

    assert await scheduler.delete_service("svc-test") is True
    assert scheduler.service_ids() == ["svc-other"] and scheduler.service_state("svc-test") is None
    assert await scheduler.delete_service("svc-test") is False
    await scheduler.close()

    async def disconnected() -> bool:
        return not (await emulator.framework())["connected"]

    await eventually(disconnected)
    state = await emulator.state()
    (framework,) = state["frameworks"]
    assert "TEARDOWN" not in framework["calls"] and state["removed"] == []  # the master waits for the router
    assert [t["id"] for t in state["tasks"] if t["state"] == "TASK_RUNNING"] == [other.id]


async def _pid_of(emulator: Emulator, task_id: str) -> int:
    (task,) = [t for t in (await emulator.state())["tasks"] if t["id"] == task_id]
    assert task["state"] == "TASK_RUNNING" and task["pid"], task
    return int(task["pid"])


async def test_a_restarted_scheduler_takes_on_its_running_tasks_and_their_services(
    start_emulator: StartEmulator, make_scheduler: MakeScheduler, tmp_path: Path
) -> None:
    emulator = await start_emulator()
    store = FileFrameworkIds(tmp_path / "router" / "mesos-framework-id")
    first = await make_scheduler(emulator, store)
    changes = Changes(first)
    spec = make_spec(HTTP_SERVER, env={"GREETING": "hi"}, record='{"service-id": "svc-test"}', health_check_url="/")
    await first.create_service(spec, 1)
    await changes.until(running(first, 1))
    (before,) = state_of(first).active
    pid = await _pid_of(emulator, before.id)
    framework_id = first.client.framework_id

    async def kept() -> bool:
        return await store.load() == framework_id

    await eventually(kept)
    await first.close()

    second = await make_scheduler(emulator, store)
    second_changes = Changes(second)
    await second_changes.until(lambda: second.service_state("svc-test") is not None and running(second, 1)())
    assert second.client.framework_id == framework_id
    (after,) = state_of(second).active
    assert (after.id, after.host, after.port, after.log_directory) == (
        before.id,
        before.host,
        before.port,
        before.log_directory,
    )
    assert state_of(second).requested == 1 and second.service_record("svc-test") == spec.record
    assert await second.create_service(spec, 1) is False  # a request for it finds it running: nothing launches
    await eventually(lambda: answers(after.host, after.port))
    state = await emulator.state()
    assert [(t["id"], t["pid"]) for t in state["tasks"]] == [(before.id, pid)]  # the same process, no other task
    (framework,) = state["frameworks"]
    assert framework["subscriptions"] == 2 and "TEARDOWN" not in framework["calls"]
    assert framework["calls"]["RECONCILE"] == 3  # the first subscription's implicit one; explicit, then implicit
    # It is the scheduler's as if launched here: scaling launches more of the service its labels described.
    await second.scale_service("svc-test", 2)
    await second_changes.until(running(second, 2))
    killed = await second.kill_instance("svc-test", before.id)
    assert killed.success, killed.message
    assert before.id not in [i.id for i in state_of(second).active] and not psutil.pid_exists(pid)


async def test_past_the_failover_timeout_the_tasks_die_and_the_stale_id_subscribes_anew(
    start_emulator: StartEmulator, make_scheduler: MakeScheduler, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    emulator = await start_emulator()
    store = FileFrameworkIds(tmp_path / "mesos-framework-id")
    first = await make_scheduler(emulator, store, failover_timeout_secs=0.3)
    changes = Changes(first)
    await first.create_service(make_spec(), 1)
    await changes.until(running(first, 1))
    (before,) = state_of(first).active
    pid = await _pid_of(emulator, before.id)
    old = first.client.framework_id
    await first.close()

    async def removed() -> bool:
        state = await emulator.state()
        return state["removed"] == [old] and all(t["state"] == "TASK_KILLED" for t in state["tasks"])

    await eventually(removed)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert await store.load() == old

    with caplog.at_level(logging.INFO):
        second = await make_scheduler(emulator, store)
    assert second.client.framework_id not in (None, old)
    assert f"The Mesos master removed framework {old} (Framework has been removed): forgetting its id" in caplog.text

    async def kept() -> bool:
        return await store.load() == second.client.framework_id

    await eventually(kept)
    assert second.service_ids() == []
    assert [f["id"] for f in (await emulator.state())["frameworks"]] == [second.client.framework_id]


async def test_follows_a_redirect_to_the_leading_master(
    start_emulator: StartEmulator, make_scheduler: MakeScheduler
) -> None:
    leader = await start_emulator()
    follower = await start_emulator("--leader", leader.address)
    async with follower.session.post(f"{follower.url}/api/v1/scheduler", allow_redirects=False) as response:
        assert response.status == 307
        assert response.headers["Location"] == f"//{leader.address}/api/v1/scheduler"

    scheduler = await make_scheduler(follower)
    assert scheduler.client.leader == leader.address
    changes = Changes(scheduler)
    await scheduler.create_service(make_spec(), 1)
    await changes.until(running(scheduler, 1))
    assert (await leader.framework())["id"] == scheduler.client.framework_id


# -- settings and flags --


@pytest.mark.parametrize(
    ("mesos", "expected"),
    [
        (
            {"master": "http://m:5050"},
            "scheduler.mesos.master is 'http://m:5050' but must be HOST:PORT of a Mesos master",
        ),
        ({"master": "m:99999"}, "scheduler.mesos.master is 'm:99999' but must be HOST:PORT"),
        ({"master": "m"}, "scheduler.mesos.master is 'm' but must be HOST:PORT"),
        ({}, "scheduler.mesos.master is not set but is required when scheduler.kind is mesos."),
        ({"master": "m:5050", "role": "a b"}, "scheduler.mesos.role is 'a b' but must be '*' or a Mesos role name"),
        ({"master": "m:5050", "offer-wait-secs": 0}, "scheduler.mesos.offer-wait-secs is 0 but must be a number in"),
        ({"master": "m:5050", "failover-timeout-secs": -1}, "scheduler.mesos.failover-timeout-secs is -1 but must be"),
        (
            {"master": "m:5050", "request-timeout-ms": 1},
            "scheduler.mesos.request-timeout-ms is 1 but must be an integer",
        ),
        ({"master": "m:5050", "framework-name": ""}, "scheduler.mesos.framework-name is '' but must be a non-empty"),
        ({"master": "m:5050", "password": "x"}, "scheduler.mesos.password is not a known setting"),
    ],
    ids=["scheme", "port-range", "no-port", "missing", "role", "offer-wait", "failover", "timeout", "name", "unknown"],
)
def test_settings_errors_name_key_value_and_range(mesos: dict[str, Any], expected: str) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(None, {"scheduler": {"kind": "mesos", "mesos": mesos}})
    assert expected in str(error.value)


def test_settings_reach_the_scheduler_and_show_in_public() -> None:
    mesos = {"master": "10.0.0.1:5050", "role": "web", "offer-wait-secs": 5, "request-timeout-ms": 1500}
    settings = load_settings(
        None, {"run-as-user": "svc", "cluster-name": "c1", "scheduler": {"kind": "mesos", "mesos": mesos}}
    )
    shown = settings.public()["scheduler-config"]["mesos"]
    assert shown["master"] == "10.0.0.1:5050" and shown["user"] == "svc" and shown["role"] == "web"
    scheduler = create_scheduler(settings)
    assert isinstance(scheduler, MesosScheduler) and scheduler.kind == "mesos"
    made = scheduler.settings
    assert (made.master, made.role, made.user, made.cluster_name) == ("10.0.0.1:5050", "web", "svc", "c1")
    assert (made.offer_wait_secs, made.request_timeout_secs, made.framework_name) == (5.0, 1.5, "waiter")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--scheduler", "mesos"], "scheduler.mesos.master is not set but is required"),
        (["--scheduler", "mesos", "--mesos-master", "nope"], "scheduler.mesos.master is 'nope' but must be HOST:PORT"),
    ],
    ids=["missing-master", "bad-master"],
)
def test_command_line_flags(flags: list[str], expected: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "waiter", *flags], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and expected in proc.stderr


# -- the emulator's status codes, in the master's order --


async def test_emulator_answers_with_the_masters_status_codes(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator()
    url = f"{emulator.url}/api/v1/scheduler"
    info = {"user": "u", "name": "n", "failover_timeout": 60.0}
    subscribe = {"type": "SUBSCRIBE", "subscribe": {"framework_info": info}}
    plain = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:

        async def status(body: Any, headers: dict[str, str], method: str = "POST") -> int:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            skip = ("Content-Type",)
            async with session.request(method, url, data=data, headers=headers, skip_auto_headers=skip) as response:
                return response.status

        assert await status(b"", {}, "GET") == 405
        assert await status(subscribe, {}) == 400  # no Content-Type
        assert await status(subscribe, {"Content-Type": "text/plain"}) == 415
        # The master compares the whole Content-Type: a charset parameter makes it unsupported.
        assert await status(subscribe, {"Content-Type": "application/json; charset=utf-8"}) == 415
        assert await status(b"{nope", plain) == 400
        assert await status(subscribe, {**plain, "Accept": "application/x-protobuf"}) == 406
        assert await status(subscribe, {**plain, "Mesos-Stream-Id": "x"}) == 400
        kill = {"type": "KILL", "framework_id": {"value": "nope"}, "kill": {"task_id": {"value": "t"}}}
        assert await status(kill, plain) == 400

        async with session.post(url, json=subscribe, headers={"Accept": "application/json"}) as stream:
            assert stream.status == 200 and stream.headers["Content-Type"] == "application/json"
            stream_id = stream.headers["Mesos-Stream-Id"]
            parser = RecordIOParser()
            records: list[bytes] = []
            while not records:
                records = parser.feed(await stream.content.readany())
            subscribed = json.loads(records[0])
            assert subscribed["type"] == "SUBSCRIBED"
            framework = subscribed["subscribed"]["framework_id"]
            kill["framework_id"] = framework
            assert await status(kill, {**plain, "Mesos-Stream-Id": "wrong"}) == 400
            assert await status(kill, {**plain, "Mesos-Stream-Id": stream_id}) == 202
        # Without its stream the framework is known (for its failover timeout) but not subscribed.
        revive = {"type": "REVIVE", "framework_id": framework, "revive": {"roles": ["*"]}}

        async def not_subscribed() -> bool:
            return await status(revive, {**plain, "Mesos-Stream-Id": stream_id}) == 403

        await eventually(not_subscribed)
        operator = f"{emulator.url}/api/v1"
        async with session.get(operator) as response:
            assert response.status == 405
        async with session.post(operator, json={"type": "GET_HEALTH"}) as response:
            assert response.status == 501  # the one operator call the emulator answers is GET_TASKS
        async with session.post(operator, json={"type": "GET_TASKS"}) as response:
            assert response.status == 200
            assert await response.json() == {"type": "GET_TASKS", "get_tasks": {"tasks": []}}


# -- pure parts --

EVENTS = [b'{"type":"HEARTBEAT"}', b'{"type":"UPDATE","update":{"status":{"message":"a\\nb"}}}', b"x" * 300]
STREAM = b"".join(encode_record(e) for e in EVENTS)


@pytest.mark.parametrize(
    "cuts",
    [
        [],
        [1],
        [2, 3],
        [len(str(len(EVENTS[0])))],
        [len(str(len(EVENTS[0]))) + 1],
        [23],
        list(range(1, len(STREAM))),
        [len(encode_record(EVENTS[0])), len(encode_record(EVENTS[0])) + 1],
        [len(STREAM) - 1],
    ],
    ids=[
        "whole",
        "in-first-length",
        "tiny-pieces",
        "before-newline",
        "after-newline",
        "inside-record",
        "byte-by-byte",
        "at-record-boundary",
        "last-byte-alone",
    ],
)
def test_recordio_parser_with_arbitrary_chunk_boundaries(cuts: list[int]) -> None:
    parser = RecordIOParser()
    records: list[bytes] = []
    bounds = [0, *cuts, len(STREAM)]
    for start, end in itertools.pairwise(bounds):
        records.extend(parser.feed(STREAM[start:end]))
    assert records == EVENTS
    assert parser.buffered == 0


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"12x\n", "not a decimal number"),
        (b"0\n", r"range \[1, 100\]"),
        (b"101\n", r"range \[1, 100\]"),
        (b"1234567890123", "longer than 12 digits"),
        (b"-5\n", "not a decimal number"),
        (b"\n", r"length is 0"),
    ],
    ids=["letters", "zero", "too-big", "endless-length", "negative", "empty-length"],
)
def test_recordio_parser_refuses_a_corrupt_stream(data: bytes, error: str) -> None:
    with pytest.raises(RecordIOError, match=error):
        RecordIOParser(max_record_bytes=100).feed(data)


def test_recordio_parser_waits_for_a_partial_record() -> None:
    parser = RecordIOParser()
    assert parser.feed(b"5\nabc") == [] and parser.buffered == 3
    assert parser.feed(b"de3\nf") == [b"abcde"]
    assert parser.feed(b"gh") == [b"fgh"]


@pytest.mark.parametrize(
    ("state", "message", "reason", "phase", "exit_code", "text"),
    [
        ("TASK_RUNNING", None, None, TaskPhase.ACTIVE, None, "TASK_RUNNING"),
        ("TASK_STAGING", None, None, TaskPhase.ACTIVE, None, "TASK_STAGING"),
        ("TASK_KILLING", None, None, TaskPhase.ACTIVE, None, "TASK_KILLING"),
        (
            "TASK_FAILED",
            "Command exited with status 3",
            "REASON_COMMAND_EXECUTOR_FAILED",
            TaskPhase.FAILED,
            3,
            "Command exited with status 3",
        ),
        (
            "TASK_FAILED",
            "Command terminated with signal Killed",
            None,
            TaskPhase.FAILED,
            -9,
            "Command terminated with signal Killed",
        ),
        (
            "TASK_KILLED",
            "Command terminated with signal Terminated",
            None,
            TaskPhase.KILLED,
            -15,
            "Command terminated with signal Terminated",
        ),
        ("TASK_FINISHED", "Command exited with status 0", None, TaskPhase.FINISHED, 0, "Command exited with status 0"),
        ("TASK_LOST", None, "REASON_AGENT_REMOVED", TaskPhase.FAILED, None, "TASK_LOST (REASON_AGENT_REMOVED)"),
        ("TASK_ERROR", "Task uses more resources", None, TaskPhase.FAILED, None, "Task uses more resources"),
        ("TASK_DROPPED", None, None, TaskPhase.FAILED, None, "TASK_DROPPED"),
        ("TASK_GONE", None, None, TaskPhase.FAILED, None, "TASK_GONE"),
        ("TASK_SOMETHING_NEW", None, None, TaskPhase.FAILED, None, "TASK_SOMETHING_NEW"),
    ],
    ids=[
        "running",
        "staging",
        "killing",
        "failed-exit",
        "failed-signal",
        "killed",
        "finished",
        "lost",
        "error",
        "dropped",
        "gone",
        "unknown-state",
    ],
)
def test_task_outcome(
    state: str, message: str | None, reason: str | None, phase: TaskPhase, exit_code: int | None, text: str
) -> None:
    outcome = task_outcome(TaskStatus("t", state, message=message, reason=reason))
    assert (outcome.phase, outcome.exit_code, outcome.message) == (phase, exit_code, text)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (None, None),
        ("Command exited with status 137", 137),
        ("Command terminated with signal Killed", -9),
        ("Command terminated with signal 12", -12),
        ("Command terminated with signal Bogus", None),
        ("oops", None),
        ("Command terminated with signal Segmentation fault (core dumped)", -11),
        ("Command terminated with signal Aborted (core dumped)", -6),
    ],
    ids=["none", "status", "named-signal", "numbered-signal", "unknown-signal", "no-code", "core-dumped", "abort"],
)
def test_exit_code_of(message: str | None, expected: int | None) -> None:
    assert exit_code_of(message) == expected


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("//leader:5050/api/v1/scheduler", "leader:5050"),
        ("http://10.0.0.1:5050/api/v1/scheduler", "10.0.0.1:5050"),
        ("//[::1]:5050/api/v1/scheduler", "[::1]:5050"),
    ],
    ids=["scheme-relative", "absolute", "ipv6"],
)
def test_leader_from_location(location: str, expected: str) -> None:
    assert leader_from_location(location) == expected


RANGES = [{"begin": 40, "end": 41}, {"begin": 31, "end": 31}]


def test_offers_of_reads_the_nested_offers_and_sums_resources() -> None:
    offer = {
        "id": {"value": "o1"},
        "framework_id": {"value": "f"},
        "agent_id": {"value": "a1"},
        "hostname": "h1",
        "allocation_info": {"role": "web"},
        "resources": [
            {"name": "cpus", "type": "SCALAR", "scalar": {"value": 1.5}},
            {"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.5}, "role": "web"},
            {"name": "mem", "type": "SCALAR", "scalar": {"value": 1024}},
            {"name": "ports", "type": "RANGES", "ranges": {"range": RANGES}},
            {"name": "disk", "type": "SCALAR", "scalar": {"value": 100}},
        ],
    }
    (parsed,) = offers_of({"type": "OFFERS", "offers": {"offers": [offer]}})
    assert (parsed.id, parsed.agent_id, parsed.hostname, parsed.role) == ("o1", "a1", "h1", "web")
    assert (parsed.cpus, parsed.mem, parsed.ports) == (2.0, 1024.0, ((31, 31), (40, 41)))
    assert parsed.port_count == 3
    assert [p.source for p in parsed.pools if p.name == "cpus"] == ["{}", '{"role": "web"}']


def _offer(cpus: float, mem: float, ports: tuple[tuple[int, int], ...] = ((100, 104),)) -> Offer:
    return Offer.unreserved("o", "a", "h", cpus=cpus, mem=mem, ports=ports)


@pytest.mark.parametrize(
    ("need", "offer", "fits"),
    [
        (Need(1, 128, 1), _offer(1, 128), True),
        (Need(0.3, 1, 1), _offer(0.1 + 0.2, 1), True),
        (Need(2, 128, 1), _offer(1, 4096), False),
        (Need(1, 4096, 1), _offer(4, 1024), False),
        (Need(1, 128, 6), _offer(4, 1024), False),
        (Need(1, 128, 1), _offer(4, 1024, ()), False),
    ],
    ids=["exact", "float-sum", "cpus-short", "mem-short", "ports-short", "no-ports"],
)
def test_need_fits(need: Need, offer: Offer, fits: bool) -> None:
    assert need.fits(offer) is fits


def test_take_uses_the_lowest_ports_across_ranges_and_leaves_the_rest() -> None:
    offer = _offer(2, 1024, ((100, 101), (200, 205)))
    taken = take(offer, Need(0.5, 256, 3))
    assert taken.ports == (100, 101, 200)
    assert (taken.rest.cpus, taken.rest.mem, taken.rest.ports) == (1.5, 768, ((201, 205),))


@pytest.mark.parametrize(
    ("need", "offers", "expected"),
    [
        (
            Need(1, 4096, 1),
            [_offer(4, 1024), _offer(1, 512)],
            "No offer had enough mem for an instance: need 4096 MiB, the largest offer has 1024 MiB",
        ),
        (
            Need(2, 128, 1),
            [_offer(1, 1024)],
            "No offer had enough cpus for an instance: need 2 cpus, the largest offer has 1 cpus",
        ),
        (
            Need(0.5, 128, 8),
            [_offer(1, 1024)],
            "No offer had enough ports for an instance: need 8 ports, the largest offer has 5 ports",
        ),
        (
            Need(0.5, 128, 1),
            [],
            "No offer had enough cpus for an instance: need 0.5 cpus, the largest offer has 0 cpus",
        ),
        (
            Need(2, 2048, 1),
            [_offer(4, 1024), _offer(1, 4096)],
            "No single offer had enough cpus, mem and ports together for an instance: "
            "need 2 cpus, 2048 MiB and 1 ports",
        ),
    ],
    ids=["mem", "cpus", "ports", "no-offers", "split-across-offers"],
)
def test_shortfall_names_the_missing_resource(need: Need, offers: list[Offer], expected: str) -> None:
    assert shortfall(need, offers) == expected


@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        ([5], [{"begin": 5, "end": 5}]),
        ([7, 5, 6], [{"begin": 5, "end": 7}]),
        ([1, 3, 4], [{"begin": 1, "end": 1}, {"begin": 3, "end": 4}]),
    ],
    ids=["one", "unsorted-run", "gap"],
)
def test_port_ranges(ports: list[int], expected: list[dict[str, int]]) -> None:
    assert port_ranges(ports) == expected


def _pool(name: str, amount: float = 0.0, ranges: tuple[tuple[int, int], ...] = (), role: str = "*") -> Pool:
    source: dict[str, Any] = {"allocation_info": {"role": "web"}, "role": role}
    if role != "*":
        source["reservations"] = [{"type": "STATIC", "role": role}]
    return Pool(name, amount, ranges, json.dumps(source, sort_keys=True))


def test_take_uses_reserved_pools_first_and_echoes_each_pools_role_and_reservations() -> None:
    offer = Offer(
        "o",
        "a",
        "h",
        (
            _pool("cpus", 3.0),
            _pool("cpus", 0.25, role="web"),
            _pool("mem", 1024),
            _pool("mem", 100, role="web"),
            _pool("ports", ranges=((10, 12),)),
        ),
        role="web",
    )
    taken = take(offer, Need(1.0, 128, 2))
    reserved = {"allocation_info": {"role": "web"}, "role": "web", "reservations": [{"type": "STATIC", "role": "web"}]}
    unreserved = {"allocation_info": {"role": "web"}, "role": "*"}
    assert taken.resources == [
        {"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.25}, **reserved},
        {"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.75}, **unreserved},
        {"name": "mem", "type": "SCALAR", "scalar": {"value": 100}, **reserved},
        {"name": "mem", "type": "SCALAR", "scalar": {"value": 28}, **unreserved},
        {"name": "ports", "type": "RANGES", "ranges": {"range": [{"begin": 10, "end": 11}]}, **unreserved},
    ]
    assert taken.ports == (10, 11)
    assert (taken.rest.cpus, taken.rest.mem, taken.rest.ports) == (2.25, 996, ((12, 12),))
    assert all(not p.reserved for p in taken.rest.pools)


def test_offers_of_leaves_revocable_resources_out() -> None:
    offer = {
        "id": {"value": "o"},
        "agent_id": {"value": "a"},
        "hostname": "h",
        "resources": [
            {"name": "cpus", "type": "SCALAR", "scalar": {"value": 4}, "revocable": {}},
            {"name": "cpus", "type": "SCALAR", "scalar": {"value": 1}},
        ],
    }
    (parsed,) = offers_of({"offers": {"offers": [offer]}})
    assert parsed.cpus == 1


@pytest.mark.parametrize(
    ("role", "roles", "usable"),
    [("web", ("web",), True), ("other", ("web",), False), (None, ("*",), True), (None, ("web",), False)],
)
def test_usable_role(role: str | None, roles: tuple[str, ...], usable: bool) -> None:
    assert usable_role(Offer("o", "a", "h", role=role), roles) is usable


def test_a_memory_limitation_flags_the_instance_and_keeps_the_first_sentence() -> None:
    message = "Memory limit exceeded: Requested: 64MB Maximum Used: 64MB\n\nMEMORY STATISTICS: \ncache 0\n"
    status = TaskStatus("t", "TASK_FAILED", message=message, reason="REASON_CONTAINER_LIMITATION_MEMORY")
    outcome = task_outcome(status)
    assert outcome.flags == {"memory-limit-exceeded"}
    assert outcome.message == "Memory limit exceeded: Requested: 64MB Maximum Used: 64MB"
    assert task_outcome(TaskStatus("t", "TASK_FAILED", message="Command exited with status 1")).flags == frozenset()


# -- a task's labels and a restarted router taking it on --

SETTINGS = MesosSettings(master="m:5050", agent_work_dir="/work", min_kill_grace_secs=1.0)


def launched(spec: ServiceSpec) -> tuple[Instance, dict[str, Any]]:
    offer = Offer.unreserved("o1", "agent-1", "host-1", cpus=4, mem=4096, ports=((31000, 31009),))
    return launch(spec, offer, take(offer, Need.of(spec)), SETTINGS, "fw-1")


def listed(info: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A task of the master's GET_TASKS answer, as launched from ``info``."""
    return {
        "name": info["name"],
        "task_id": info["task_id"],
        "framework_id": {"value": "fw-1"},
        "agent_id": info["agent_id"],
        "state": "TASK_RUNNING",
        "labels": info["labels"],
        **fields,
    }


def test_a_launched_task_is_taken_on_as_the_same_instance_of_the_same_spec() -> None:
    spec = make_spec(
        env={"A": "1"}, ports=2, record='{"x": 1}', token="t", termination_grace_period_secs=5, health_check_url="/h"
    )
    instance, info = launched(spec)
    adopted = adopt(listed(info), "fw-1", SETTINGS)
    assert adopted is not None
    assert adopted.spec == spec and adopted.agent_id == "agent-1" and adopted.grace_secs == 5.0
    running = {**instance.extras, "mesos/task-state": "TASK_RUNNING"}
    assert adopted.instance == dataclasses.replace(instance, extras=running)
    assert (adopted.instance.port, adopted.instance.extra_ports) == (31000, (31001,))
    sandbox = f"/work/slaves/agent-1/frameworks/fw-1/executors/{instance.id}/runs/latest"
    assert adopted.instance.log_directory == sandbox


@pytest.mark.parametrize(
    ("fields", "labels"),
    [
        ({"framework_id": {"value": "other"}}, None),
        ({"state": "TASK_FINISHED"}, None),
        ({"state": "TASK_KILLED"}, None),
        ({}, [{"key": "source", "value": "someone-else"}]),
    ],
    ids=["another-framework", "finished", "killed", "not-waiter"],
)
def test_tasks_that_are_not_ours_or_not_running_are_not_taken_on(
    fields: dict[str, Any], labels: list[dict[str, str]] | None
) -> None:
    _, info = launched(make_spec())
    task = listed(info, **fields)
    if labels is not None:
        task["labels"] = {"labels": labels}
    assert adopt(task, "fw-1", SETTINGS) is None


@pytest.mark.parametrize(
    ("label", "value", "expected"),
    [
        (None, None, "has no waiter-spec or waiter-instance label (launched by an older router?)"),
        ("waiter-spec", "{nope", "Expecting property name"),
        ("waiter-spec", '{"service_id": "s"}', "the waiter-spec label lacks cmd, cpus, mem"),
        ("waiter-spec", '{"service_id": "s", "cmd": "c", "cpus": 1, "mem": 1, "bogus": {}}', None),
        ("waiter-instance", '{"host": "h", "ports": [], "started-at": 1}', "its waiter-instance label lists no port"),
        ("waiter-instance", '{"host": "h"}', "'ports'"),
    ],
    ids=["no-labels", "spec-not-json", "spec-incomplete", "unknown-field-ignored", "no-port", "no-ports-key"],
)
def test_a_task_of_ours_with_unreadable_labels_is_refused_naming_it_and_why(
    label: str | None, value: str | None, expected: str | None
) -> None:
    _, info = launched(make_spec())
    labels = {entry["key"]: entry["value"] for entry in info["labels"]["labels"]}
    if label is None:
        del labels["waiter-spec"], labels["waiter-instance"]
    else:
        labels[label] = str(value)
    task = listed(info, labels={"labels": [{"key": k, "value": v} for k, v in labels.items()]})
    if expected is None:
        adopted = adopt(task, "fw-1", SETTINGS)
        assert adopted is not None and adopted.spec.service_id == "s"
        return
    with pytest.raises(ValueError, match="Cannot take on Mesos task") as error:
        adopt(task, "fw-1", SETTINGS)
    assert info["task_id"]["value"] in str(error.value) and expected in str(error.value)


async def test_the_framework_id_file_is_kept_forgotten_and_never_half_written(tmp_path: Path) -> None:
    store = FileFrameworkIds(tmp_path / "work" / "mesos-framework-id")
    assert await store.load() is None
    await store.save("fw-1")
    await store.save("fw-2")
    assert await store.load() == "fw-2" and store.path.read_text() == "fw-2\n"
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["mesos-framework-id"]  # no temporary left
    await store.save(None)
    assert await store.load() is None and not store.path.exists()
    await store.save(None)  # forgetting what is not kept is fine


@pytest.mark.parametrize(
    ("now", "unanswered", "due"),
    [(1.0, {"t1": "a"}, None), (2.0, {"t1": "a"}, {"t1": "a"}), (2.0, {}, None)],
    ids=["too-early", "due", "all-answered"],
)
def test_reconciliation_asks_again_only_when_due_and_only_about_known_tasks(
    now: float, unanswered: dict[str, str], due: dict[str, str] | None
) -> None:
    reconciliation = Reconciliation(retry_secs=1.0, retry_max_secs=3.0)
    reconciliation.ask({**unanswered, "gone": "a"}, now=0.5)
    assert reconciliation.due(now, known={"t1"}) == due
    if due:
        assert reconciliation.due(now + 1.5, known={"t1"}) is None  # the wait doubled
        assert reconciliation.due(now + 2.0, known={"t1"}) == due


async def test_a_revive_reaches_the_master_after_the_declines_sent_before_it(
    start_emulator: StartEmulator, make_scheduler: MakeScheduler
) -> None:
    # Two agents with room for one instance each. Launching one declines the other agent's offer (a 30 s filter),
    # and that DECLINE reaches the master 3 s late, as a call on its own connection may. Scaling to two meanwhile
    # sends a REVIVE: handled before the late DECLINE, it would clear nothing, and the DECLINE's filter would hide
    # the second agent for 30 s. Sent after the DECLINE was answered, it clears that filter.
    emulator = await start_emulator("--agents", "2", "--cpus", "0.5", "--mem", "256")
    scheduler = await make_scheduler(emulator, decline_refuse_secs=30.0, request_timeout_secs=10.0)
    changes = Changes(scheduler)

    async def calls() -> dict[str, int]:
        return (await emulator.framework())["calls"]  # type: ignore[no-any-return]

    async def idle() -> bool:  # the offers made before there was anything to launch declined, and suppressed
        return (await calls()).get("SUPPRESS", 0) > 0

    await eventually(idle, what="the framework to suppress offers")
    declined = (await calls()).get("DECLINE", 0)
    await emulator.control("slow-calls", {"type": "DECLINE", "delay-ms": 3000, "count": 1})
    await scheduler.create_service(make_spec(cpus=0.5, mem=128.0), 1)
    await changes.until(running(scheduler, 1))
    assert (await calls()).get("DECLINE", 0) == declined  # the second agent's DECLINE is still on its way
    await scheduler.scale_service("svc-test", 2)
    await changes.until(running(scheduler, 2), timeout=10)
    assert (await calls())["DECLINE"] > declined
