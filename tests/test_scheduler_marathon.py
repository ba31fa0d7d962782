"""The Marathon scheduler: against the Marathon emulator (faults, lost and failed tasks, auth), plus table tests of
its pure parts (translators, app descriptor, settings)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import task_port_range
from tests.emulators.runner import running_emulator
from tests.support import Changes, eventually
from waiter.lifecycle import deployment_error
from waiter.messages import MESSAGES
from waiter.scheduler.base import Instance, InstanceFlag, KillOutcome, SchedulerError, ServiceSpec
from waiter.scheduler.marathon import MarathonScheduler
from waiter.scheduler.marathon_apps import (
    AppBook,
    Naming,
    Place,
    app_descriptor,
    check_spec,
    failure_facts,
    failure_instance,
    health_of,
    parse_time,
    task_instance,
)
from waiter.scheduler.marathon_client import RetryPolicy, is_deployment_lock, marathon_message
from waiter.settings import MarathonSchedulerConfig, SettingsError, load_settings

SID = "waiter-service-marathon-1"
SERVER = f'exec {sys.executable} -m http.server "$PORT0" --bind 127.0.0.1'
MEMORY = InstanceFlag.MEMORY_LIMIT_EXCEEDED.value
NEVER = InstanceFlag.NEVER_PASSED_HEALTH_CHECKS.value


def make_spec(cmd: str = SERVER, **overrides: Any) -> ServiceSpec:
    values: dict[str, Any] = {"cpus": 0.1, "mem": 64.0, "run_as_user": "alice", **overrides}
    return ServiceSpec(service_id=SID, cmd=cmd, **values)


class Emulator:
    """One Marathon emulator run as a child process, with its emulator-only controls."""

    def __init__(self, url: str, work_dir: Path, session: aiohttp.ClientSession) -> None:
        self.url, self.work_dir, self.session = url, work_dir, session

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        async with self.session.request(method, self.url + path, json=body) as resp:
            assert resp.status < 300, await resp.text()
            return await resp.json(content_type=None)

    async def fault(self, **fault: Any) -> None:
        await self.call("POST", "/emulator/faults", fault)

    async def pending_faults(self) -> int:
        return sum(f["count"] for f in (await self.call("GET", "/emulator/faults"))["faults"])

    def scheduler(self, **config: Any) -> MarathonScheduler:
        values: dict[str, Any] = {
            "url": self.url,
            "sync_interval_ms": 100,
            "retry_attempts": 3,
            "retry_backoff_ms": 20,
            "agent_work_dir": str(self.work_dir),
            **config,
        }
        return MarathonScheduler(MarathonSchedulerConfig(**values), cluster_name="test")


MakeEmulator = Callable[..., Awaitable[Emulator]]
Start = Callable[..., Awaitable[MarathonScheduler]]


@pytest.fixture
async def make_emulator(tmp_path: Path) -> AsyncIterator[MakeEmulator]:
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        made: list[Emulator] = []

        async def make(*args: str) -> Emulator:
            work_dir = tmp_path / f"marathon{len(made)}"
            options = ("--work-dir", str(work_dir), "--port-range", task_port_range(), "--kill-grace-secs", "1", *args)
            url = await stack.enter_async_context(running_emulator("marathon", *options))
            made.append(Emulator(url, work_dir, session))
            return made[-1]

        yield make


@pytest.fixture
async def started(make_emulator: MakeEmulator) -> AsyncIterator[Start]:
    schedulers: list[MarathonScheduler] = []

    async def start(emulator: Emulator, **config: Any) -> MarathonScheduler:
        scheduler = emulator.scheduler(**config)
        await scheduler.start()
        schedulers.append(scheduler)
        return scheduler

    yield start
    for scheduler in schedulers:
        await scheduler.close()


def active(scheduler: MarathonScheduler) -> tuple[Instance, ...]:
    state = scheduler.service_state(SID)
    return state.active if state else ()


async def running_service(
    started: Start, emulator: Emulator, instances: int = 1, **config: Any
) -> tuple[MarathonScheduler, Changes]:
    scheduler = await started(emulator, **config)
    changes = Changes(scheduler)
    assert await scheduler.create_service(make_spec(), instances) is True
    await changes.until(lambda: len(active(scheduler)) == instances)
    return scheduler, changes


# -- against the emulator ------------------------------------------------------------------------------------------


async def test_cold_start_refreshes_at_once_and_posts_waiters_app(make_emulator: MakeEmulator, started: Start) -> None:
    emulator = await make_emulator()
    scheduler = await started(emulator, sync_interval_ms=10_000)  # only the fast refresh can be quick enough
    changes = Changes(scheduler)
    spec = make_spec(
        env={"GREETING": "hi"}, ports=2, health_check_port_index=1, termination_grace_period_secs=7, token="tok"
    )
    begun = time.monotonic()
    assert await scheduler.create_service(spec, 1) is True
    await changes.until(lambda: len(active(scheduler)) == 1, timeout=3)
    assert time.monotonic() - begun < 3
    (instance,) = active(scheduler)
    assert instance.id.startswith(f"{SID}.") and instance.id.count(".") == 1
    assert instance.host == "127.0.0.1" and len(instance.extra_ports) == 1
    assert instance.extras["marathon/app-id"] == f"/waiter/{SID}"

    app = (await emulator.call("GET", f"/v2/apps/waiter/{SID}"))["app"]
    assert (app["id"], app["cpus"], app["mem"], app["instances"]) == (f"/waiter/{SID}", 0.1, 64.0, 1)
    assert app["cmd"].endswith(f"\n{SERVER}")
    assert len(app["portDefinitions"]) == 2
    assert app["labels"] == {"source": "waiter", "user": "alice"}
    assert (app["user"], app["taskKillGracePeriodSeconds"], app["backoffFactor"]) == ("alice", 7, 2.0)
    assert app["env"]["GREETING"] == "hi" and app["env"]["HOME"] == "/home/alice"
    assert (app["env"]["WAITER_SERVICE_ID"], app["env"]["WAITER_TOKEN"]) == (SID, "tok")
    (check,) = app["healthChecks"]
    assert (check["protocol"], check["path"], check["portIndex"], check["gracePeriodSeconds"]) == (
        "HTTP",
        "/status",
        1,
        30,
    )
    assert check["maxConsecutiveFailures"] == 0  # Marathon never kills on its own check: the router decides


# -- real Marathon's corner cases --------------------------------------------------------------------------------


async def test_marathon_health_checks_never_kill_ours_and_hold_the_deployment_open(
    make_emulator: MakeEmulator, started: Start
) -> None:
    emulator = await make_emulator()  # health kills and health-gated deployments are on, as in Marathon
    scheduler = await started(emulator)
    changes = Changes(scheduler)
    spec = make_spec(health_check_url="/never-there", health_check_interval_secs=1, grace_period_secs=1)
    await scheduler.create_service(spec, 1)
    await changes.until(lambda: len(active(scheduler)) == 1)
    (instance,) = active(scheduler)

    async def failing_for_a_while() -> bool:
        (task,) = (await emulator.call("GET", f"/v2/apps/waiter/{SID}/tasks"))["tasks"]
        results = task.get("healthCheckResults") or [{}]
        return bool(results[0].get("consecutiveFailures", 0) >= 3)

    await eventually(failing_for_a_while)
    assert [i.id for i in active(scheduler)] == [instance.id]  # still there: Marathon left it to the router
    deployments = await emulator.call("GET", "/v2/deployments")
    assert [d["affectedApps"] for d in deployments] == [[f"/waiter/{SID}"]]  # open until the task is healthy
    await scheduler.scale_service(SID, 2)  # ... which does not block the router's changes
    await changes.until(lambda: len(active(scheduler)) == 2)


async def test_a_task_marathon_killed_for_its_health_is_a_failed_instance(
    make_emulator: MakeEmulator, started: Start
) -> None:
    emulator = await make_emulator()
    scheduler = await started(emulator)
    changes = Changes(scheduler)
    # An app whose check kills (an operator's, or an older router's): Marathon kills and replaces the task.
    check = {
        "protocol": "HTTP",
        "path": "/never-there",
        "portIndex": 0,
        "intervalSeconds": 1,
        "gracePeriodSeconds": 1,
        "maxConsecutiveFailures": 2,
    }
    app = {"id": f"/waiter/{SID}", "cmd": SERVER, "cpus": 0.1, "mem": 64, "instances": 1, "healthChecks": [check]}
    await emulator.call("POST", "/v2/apps", app)
    await changes.until(lambda: bool(scheduler.service_state(SID) and scheduler.service_state(SID).failed))
    (killed,) = scheduler.service_state(SID).failed  # type: ignore[union-attr]
    assert killed.failed and str(killed.message).startswith("Task was killed since health check failed")
    assert NEVER in killed.flags


async def test_kill_results_say_what_marathon_really_did(make_emulator: MakeEmulator, started: Start) -> None:
    emulator = await make_emulator()
    scheduler, _ = await running_service(started, emulator, sync_interval_ms=60_000)
    (victim,) = active(scheduler)
    task_id = victim.extras["marathon/task-id"]
    await emulator.call("POST", f"/emulator/tasks/{task_id}/kill", {"signal": "KILL"})

    async def gone_from_marathon() -> bool:
        tasks = (await emulator.call("GET", f"/v2/apps/waiter/{SID}/tasks"))["tasks"]
        return task_id not in [t["id"] for t in tasks]

    await eventually(gone_from_marathon)
    assert [i.id for i in active(scheduler)] == [victim.id]  # the snapshot has not caught up (slow sync)
    result = await scheduler.kill_instance(SID, victim.id)
    assert result.outcome is KillOutcome.ALREADY_KILLED, result.message
    assert scheduler.service_state(SID).requested == 1  # type: ignore[union-attr]
    assert (await emulator.call("GET", f"/v2/apps/waiter/{SID}"))["app"]["instances"] == 1
    (failed,) = scheduler.service_state(SID).failed  # type: ignore[union-attr]
    assert failed.id == victim.id and failed.exit_code == -9


async def test_out_of_memory_twice_is_the_memory_deployment_error_and_core_dumps_keep_the_code(
    make_emulator: MakeEmulator, started: Start
) -> None:
    emulator = await make_emulator("--behaviour", "core-dumps=true")
    scheduler, changes = await running_service(started, emulator)

    def failed() -> tuple[Instance, ...]:
        state = scheduler.service_state(SID)
        return state.failed if state else ()

    for round_ in range(2):
        await changes.until(lambda r=round_: len(active(scheduler)) == 1 and len(failed()) == r)
        (victim,) = active(scheduler)
        await emulator.call("POST", f"/emulator/tasks/{victim.extras['marathon/task-id']}/oom")
    await changes.until(lambda: len(failed()) == 2)
    assert all(i.flags == {MEMORY} for i in failed())
    assert failed()[0].message == "Memory limit exceeded: Requested: 64MB Maximum Used: 64MB"  # no statistics
    assert deployment_error(failed(), 0.0) == MESSAGES["not-enough-memory"]

    await changes.until(lambda: len(active(scheduler)) == 1)
    (crashing,) = active(scheduler)
    await emulator.call("POST", f"/emulator/tasks/{crashing.extras['marathon/task-id']}/kill", {"signal": "SEGV"})
    await changes.until(lambda: len(failed()) == 3)
    assert (failed()[-1].exit_code, failed()[-1].message) == (
        -11,
        "Command terminated with signal Segmentation fault (core dumped)",
    )


async def test_emulated_answers_for_unknown_and_malformed_task_ids(make_emulator: MakeEmulator) -> None:
    emulator = await make_emulator()
    app = {"id": "/waiter/x", "cmd": SERVER, "cpus": 0.1, "mem": 64, "instances": 1}
    await emulator.call("POST", "/v2/apps", app)
    unknown = "waiter_x.1b6f8a3c-0d3e-4c5a-9b1e-2f3a4b5c6d7e"

    async def delete(task_id: str, query: str) -> tuple[int, Any]:
        url = f"{emulator.url}/v2/apps/waiter/x/tasks/{task_id}{query}"
        async with emulator.session.delete(url) as resp:
            return resp.status, await resp.json(content_type=None)

    status, body = await delete(unknown, "?scale=true&force=true")
    assert status == 200 and body["deploymentId"]  # a deployment that kills and scales by nothing
    assert (await emulator.call("GET", "/v2/apps/waiter/x"))["app"]["instances"] == 1
    assert (await delete(unknown, "?scale=false"))[0] == 404
    assert (await delete("not-a-task-id", "?scale=true"))[0] == 500
    await emulator.call("POST", "/emulator/behaviours", {"malformed-task-id-status": 422})
    assert (await delete("waiter_x.nope", "?scale=true"))[0] == 422


async def test_instance_era_task_ids_round_trip(make_emulator: MakeEmulator, started: Start) -> None:
    emulator = await make_emulator("--behaviour", "instance-ids=true")
    scheduler, changes = await running_service(started, emulator, instances=2)
    cmd_env = await emulator.call("GET", "/emulator/tasks")
    assert all(".instance-" in t["id"] and t["id"].endswith("._app.1") for t in cmd_env["tasks"])
    victim, survivor = active(scheduler)
    assert victim.id.startswith(f"{SID}.instance-") and victim.id.endswith("__app_1") and victim.id.count(".") == 1
    result = await scheduler.kill_instance(SID, victim.id)
    assert result.success, result.message
    await changes.until(lambda: [i.id for i in active(scheduler)] == [survivor.id])
    assert (await emulator.call("GET", f"/v2/apps/waiter/{SID}"))["app"]["instances"] == 1


@pytest.mark.parametrize("status", [503, 502])
async def test_a_leader_election_is_waited_out(make_emulator: MakeEmulator, started: Start, status: int) -> None:
    emulator = await make_emulator()
    scheduler = await started(emulator, retry_attempts=8, retry_backoff_ms=50)
    await emulator.call("POST", "/emulator/leader-election", {"status": status, "for-ms": 400})
    changes = Changes(scheduler)
    assert await scheduler.create_service(make_spec(), 1) is True  # retried through the election
    await changes.until(lambda: len(active(scheduler)) == 1)


async def test_tasks_run_as_marathons_mesos_user_without_a_run_as_user(
    make_emulator: MakeEmulator, started: Start
) -> None:
    emulator = await make_emulator("--mesos-user", "svc-runner")
    scheduler = await started(emulator)
    changes = Changes(scheduler)
    await scheduler.create_service(make_spec(run_as_user=""), 1)
    await changes.until(lambda: len(active(scheduler)) == 1)
    app = (await emulator.call("GET", f"/v2/apps/waiter/{SID}"))["app"]
    assert (app["user"], app["env"]["USER"], app["env"]["HOME"]) == ("svc-runner", "svc-runner", "/home/svc-runner")
    (task,) = (await emulator.call("GET", "/emulator/tasks"))["tasks"]
    assert task["user"] == "svc-runner"


async def test_an_unreachable_task_leaves_the_active_set_until_it_is_back(
    make_emulator: MakeEmulator, started: Start
) -> None:
    emulator = await make_emulator()
    scheduler, changes = await running_service(started, emulator)
    (instance,) = active(scheduler)
    await emulator.call("POST", f"/emulator/tasks/{instance.extras['marathon/task-id']}/unreachable", {"for-ms": 2000})
    await changes.until(lambda: active(scheduler) == ())
    await changes.until(lambda: [i.id for i in active(scheduler)] == [instance.id])
    assert scheduler.service_state(SID).failed == ()  # type: ignore[union-attr]


async def test_log_directory_is_the_tasks_sandbox(make_emulator: MakeEmulator, started: Start) -> None:
    emulator = await make_emulator()
    scheduler = await started(emulator)
    changes = Changes(scheduler)
    await scheduler.create_service(make_spec(cmd=f"echo started; {SERVER}"), 1)
    await changes.until(lambda: len(active(scheduler)) == 1)
    log_directory = Path(str(active(scheduler)[0].log_directory))
    assert log_directory.is_relative_to(emulator.work_dir)

    async def logged() -> bool:
        return (log_directory / "stdout").exists() and (log_directory / "stdout").read_text() == "started\n"

    async with asyncio.timeout(10):
        while not await logged():  # noqa: ASYNC110 - a file written by another process sends no event
            await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"status": 409}, id="deployment-lock"),
        pytest.param({"status": 500}, id="server-error"),
        pytest.param({"status": 503}, id="unavailable"),
        pytest.param({"delay-ms": 1000}, id="slow"),
    ],
)
async def test_scale_retries_what_may_pass(make_emulator: MakeEmulator, started: Start, fault: dict[str, Any]) -> None:
    emulator = await make_emulator()
    scheduler, changes = await running_service(started, emulator, request_timeout_ms=300)
    await emulator.fault(method="PUT", path="/v2/apps/", count=2, **fault)

    await scheduler.scale_service(SID, 2)
    assert await emulator.pending_faults() == 0  # both faults were met ...
    await changes.until(lambda: len(active(scheduler)) == 2)  # ... and the third try went through


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        pytest.param(
            {"status": 409},
            r"Marathon could not scale app /waiter/{sid} to 2 instances: PUT /v2/apps/waiter/{sid} answered 409 "
            r"\(tried 3 times\): App is locked by one or more deployments\.",
            id="deployment-lock",
        ),
        pytest.param(
            {"status": 500},
            r"Marathon could not scale app /waiter/{sid} to 2 instances: PUT /v2/apps/waiter/{sid} answered 500 "
            r"\(tried 3 times\): Emulated fault: HTTP 500",
            id="server-error",
        ),
        pytest.param(
            {"delay-ms": 1000},
            r"Marathon could not scale app /waiter/{sid} to 2 instances: PUT /v2/apps/waiter/{sid} got no answer "
            r"within 0\.3 s \(tried 3 times\)\.",
            id="slow",
        ),
    ],
)
async def test_scale_reports_what_kept_failing(
    make_emulator: MakeEmulator, started: Start, fault: dict[str, Any], expected: str
) -> None:
    emulator = await make_emulator()
    scheduler, _ = await running_service(started, emulator, request_timeout_ms=300)
    await emulator.fault(method="PUT", count=10, **fault)
    with pytest.raises(SchedulerError, match=expected.format(sid=SID)):
        await scheduler.scale_service(SID, 2)
    assert await emulator.pending_faults() == 7  # three tries, no more
    assert scheduler.service_state(SID).requested == 1  # type: ignore[union-attr]


async def test_kill_overrides_a_deployment_lock(make_emulator: MakeEmulator, started: Start) -> None:
    emulator = await make_emulator()
    scheduler, _ = await running_service(started, emulator, instances=2)
    victim = active(scheduler)[0]
    await emulator.fault(method="DELETE", path="/v2/apps/", status=409, count=1)

    result = await scheduler.kill_instance(SID, victim.id)
    assert result.success, result.message
    assert await emulator.pending_faults() == 0
    app = (await emulator.call("GET", f"/v2/apps/waiter/{SID}"))["app"]
    assert app["instances"] == 1


async def test_kill_that_keeps_failing_is_reported(make_emulator: MakeEmulator, started: Start) -> None:
    emulator = await make_emulator()
    scheduler, _ = await running_service(started, emulator)
    victim = active(scheduler)[0]
    await emulator.fault(method="DELETE", status=502, count=10)

    result = await scheduler.kill_instance(SID, victim.id)
    assert result.outcome is KillOutcome.FAILED
    task_id = victim.extras["marathon/task-id"]
    assert f"Marathon could not kill task {task_id} of app /waiter/{SID}" in result.message
    assert "answered 502 (tried 3 times)" in result.message
    assert [i.id for i in active(scheduler)] == [victim.id]


@pytest.mark.parametrize(
    ("control", "body", "message", "state"),
    [
        pytest.param("kill", {"signal": "KILL"}, "Command terminated with signal Killed", "TASK_FAILED", id="failed"),
        pytest.param("lose", None, "lost the task", "TASK_LOST", id="lost"),
    ],
)
async def test_a_task_that_dies_on_the_cluster_is_recorded_and_replaced(
    make_emulator: MakeEmulator, started: Start, control: str, body: Any, message: str, state: str
) -> None:
    emulator = await make_emulator()
    scheduler, changes = await running_service(started, emulator)
    (victim,) = active(scheduler)

    await emulator.call("POST", f"/emulator/tasks/{victim.extras['marathon/task-id']}/{control}", body)
    await changes.until(lambda: bool(scheduler.service_state(SID).failed))  # type: ignore[union-attr]
    (ended,) = scheduler.service_state(SID).failed  # type: ignore[union-attr]
    assert ended.id == victim.id and ended.failed and not ended.killed
    assert ended.message is not None and message in ended.message
    assert (ended.port, ended.extras["marathon/state"]) == (victim.port, state)
    await changes.until(lambda: any(i.id != victim.id for i in active(scheduler)))  # after Marathon's backoff
    assert scheduler.service_state(SID).requested == 1  # type: ignore[union-attr]


async def test_changes_made_by_others_reach_the_snapshot(make_emulator: MakeEmulator, started: Start) -> None:
    emulator = await make_emulator()
    scheduler, changes = await running_service(started, emulator)
    await emulator.call("PUT", f"/v2/apps/waiter/{SID}?force=true", {"instances": 2})
    await changes.until(lambda: len(active(scheduler)) == 2)
    assert scheduler.service_state(SID).requested == 2  # type: ignore[union-attr]

    await emulator.call("DELETE", f"/v2/apps/waiter/{SID}")
    await changes.until(lambda: scheduler.service_state(SID) is None)
    assert scheduler.service_ids() == []
    assert await scheduler.create_service(make_spec(), 1) is True  # gone for good: created anew


async def test_create_of_an_app_made_elsewhere_adopts_it(make_emulator: MakeEmulator, started: Start) -> None:
    emulator = await make_emulator()
    scheduler = await started(emulator, sync_interval_ms=60_000)
    await emulator.call("POST", "/v2/apps", {"id": f"/waiter/{SID}", "cmd": SERVER, "instances": 1, "mem": 64})
    await emulator.fault(method="POST", status=500, count=1)  # a retry must not turn "exists" into "created"

    assert await scheduler.create_service(make_spec(), 3) is False
    assert scheduler.service_ids() == [SID]
    assert scheduler.service_state(SID).requested == 1  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("credentials", "error"),
    [
        pytest.param({}, "answered 401: Invalid username or password.", id="none"),
        pytest.param({"username": "waiter", "password": "wrong"}, "answered 401", id="wrong"),
        pytest.param({"username": "waiter", "password": "s3cret"}, None, id="right"),
    ],
)
async def test_basic_auth(
    make_emulator: MakeEmulator, started: Start, credentials: dict[str, str], error: str | None
) -> None:
    emulator = await make_emulator("--username", "waiter", "--password", "s3cret")
    scheduler = await started(emulator, **credentials)
    if error is None:
        assert await scheduler.create_service(make_spec(), 1) is True
    else:
        with pytest.raises(SchedulerError, match=error):
            await scheduler.create_service(make_spec(), 1)


async def test_unreachable_marathon_is_reported_and_start_survives(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        config = MarathonSchedulerConfig(url=f"http://127.0.0.1:{port}", retry_attempts=2, retry_backoff_ms=10)
        scheduler = MarathonScheduler(config)
        await scheduler.start()
        try:
            assert scheduler.service_ids() == []
            with pytest.raises(SchedulerError, match=rf"POST /v2/apps failed to reach http://127.0.0.1:{port}"):
                await scheduler.create_service(make_spec(), 1)
        finally:
            await scheduler.close()


# -- pure parts ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "app_id", "service_id"),
    [
        ("/waiter/", "/waiter/svc-1", "svc-1"),
        ("/waiter/", "/other/svc-1", None),
        ("/waiter/", "/waiter/group/svc-1", None),
        ("/", "/svc-1", "svc-1"),
        ("/a/b/", "/a/b/svc-1", "svc-1"),
    ],
    ids=["in-prefix", "other-group", "sub-group", "root", "nested-prefix"],
)
def test_naming_of_apps(prefix: str, app_id: str, service_id: str | None) -> None:
    naming = Naming(prefix)
    assert naming.service_id(app_id) == service_id
    if service_id is not None:
        assert naming.app_id(service_id) == app_id


@pytest.mark.parametrize(
    ("prefix", "task_id", "instance_id"),
    [
        ("/waiter/", "waiter_svc-1.5f3a-11", "svc-1.5f3a-11"),
        ("/", "svc-1.5f3a-11", "svc-1.5f3a-11"),
        ("/a/b/", "a_b_svc-1.5f3a", "svc-1.5f3a"),
        ("/waiter/", "waiter_svc-1.instance-5f3a._app.1", "svc-1.instance-5f3a__app_1"),
    ],
    ids=["classic", "root", "nested-prefix", "marathon-1.5-ids"],
)
def test_naming_of_tasks(prefix: str, task_id: str, instance_id: str) -> None:
    naming = Naming(prefix)
    assert naming.instance_id("svc-1", task_id) == instance_id
    assert instance_id.count(".") == 1
    if "._app" not in task_id:
        assert naming.task_id("svc-1", instance_id) == task_id


@pytest.mark.parametrize(
    ("message", "exit_code", "flags"),
    [
        ("Command exited with status 3", 3, frozenset()),
        ("Command exited with status 137 (Killed)", 137, frozenset()),
        ("Memory limit exceeded: Requested: 64MB Maximum Used: 70MB", None, frozenset({MEMORY})),
        ("Task was killed since health check failed. Reason: 503", None, frozenset({NEVER})),
        ("Command terminated with signal Killed", -9, frozenset()),
        ("Command terminated with signal Segmentation fault (core dumped)", -11, frozenset()),
        ("", None, frozenset()),
    ],
    ids=["exit", "exit-with-detail", "memory", "health", "signal", "core-dumped", "empty"],
)
def test_failure_facts(message: str, exit_code: int | None, flags: frozenset[str]) -> None:
    assert failure_facts(message) == (exit_code, flags)


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        (None, None),
        ([], None),
        ([{"alive": True, "consecutiveFailures": 0}], True),
        ([{"alive": True, "consecutiveFailures": 0}, {"alive": False, "consecutiveFailures": 2}], False),
        ([{"alive": True, "consecutiveFailures": 1}], False),
        ([{"alive": None, "consecutiveFailures": None}], False),
    ],
    ids=["absent", "none-yet", "healthy", "one-dead", "recent-failure", "nulls"],
)
def test_health_of(results: Any, expected: bool | None) -> None:
    assert health_of(results) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2015-08-26T20:23:44.678Z", 1440620624.678),
        ("2015-08-26T20:23:44Z", 1440620624.0),
        (None, None),
        ("yesterday", None),
    ],
    ids=["millis", "whole-second", "null", "garbage"],
)
def test_parse_time(value: Any, expected: float | None) -> None:
    assert parse_time(value) == (pytest.approx(expected) if expected else None)


TASK = {
    "id": "waiter_svc-1.abc",
    "appId": "/waiter/svc-1",
    "host": "agent-1",
    "ports": [31000, 31001],
    "slaveId": "S0",
    "state": "TASK_RUNNING",
    "stagedAt": "2015-08-26T20:23:40Z",
    "startedAt": "2015-08-26T20:23:44.678Z",
    "healthCheckResults": [{"alive": True, "consecutiveFailures": 0}],
}


def test_task_instance() -> None:
    instance = task_instance(Naming(), "svc-1", TASK, Place("/var/lib/mesos", "FW"))
    assert (instance.id, instance.host) == ("svc-1.abc", "agent-1")
    assert (instance.port, instance.extra_ports) == (31000, (31001,))
    assert instance.started_at == pytest.approx(1440620624.678)
    assert instance.log_directory == "/var/lib/mesos/slaves/S0/frameworks/FW/executors/waiter_svc-1.abc/runs/latest"
    assert instance.extras["marathon/healthy?"] is True and not instance.ended
    assert task_instance(Naming(), "svc-1", TASK, Place()).log_directory is None  # no framework id known


@pytest.mark.parametrize("seen", [True, False], ids=["seen-running", "never-seen"])
def test_failure_instance(seen: bool) -> None:
    failure = {
        "taskId": "waiter_svc-1.abc",
        "host": "agent-2",
        "message": "Command exited with status 2",
        "state": "TASK_FAILED",
        "timestamp": "2015-08-26T20:23:50Z",
    }
    last_seen = task_instance(Naming(), "svc-1", TASK, Place()) if seen else None
    ended = failure_instance(Naming(), "svc-1", failure, last_seen)
    assert (ended.id, ended.exit_code, ended.failed, ended.killed) == ("svc-1.abc", 2, True, False)
    assert (ended.host, ended.port) == (("agent-1", 31000) if seen else ("agent-2", 0))


def _task(suffix: str, state: str = "TASK_RUNNING") -> dict[str, Any]:
    return {**TASK, "id": f"waiter_svc-1.{suffix}", "state": state, "healthCheckResults": []}


def _failure(suffix: str, message: str = "Command exited with status 1") -> dict[str, Any]:
    return {"taskId": f"waiter_svc-1.{suffix}", "message": message, "state": "TASK_FAILED", "host": "agent-1"}


Answer = dict[str, Any]


@pytest.mark.parametrize(
    ("answers", "killed_by_us", "expected"),
    [
        pytest.param([{"tasks": [_task("a"), _task("b", "TASK_STAGING")]}], [], (["a", "b"], [], []), id="listed"),
        pytest.param(
            [{"tasks": [_task("a")]}, {"tasks": [_task("b")], "lastTaskFailure": _failure("a")}],
            [],
            (["b"], ["a"], []),
            id="failed-and-replaced",
        ),
        pytest.param(
            [{"tasks": [_task("a")]}, {"tasks": []}],
            [],
            ([], [], ["a"]),
            id="ended-without-failure",
        ),
        pytest.param(
            [{"tasks": [_task("a")]}, {"tasks": [_task("a", "TASK_KILLING")]}, {"tasks": []}],
            ["a"],
            ([], [], ["a"]),
            id="our-kill-recorded-once",
        ),
        pytest.param(
            [{"tasks": [], "lastTaskFailure": _failure("z")}, {"tasks": [], "lastTaskFailure": _failure("z")}],
            [],
            ([], ["z"], []),
            id="unseen-failure-recorded-once",
        ),
        pytest.param([{"tasks": [_task("a")]}, {}], [], (["a"], [], []), id="answer-without-tasks-keeps-them"),
        pytest.param(
            [{"tasks": [_task("a", "TASK_KILLING"), _task("b", "TASK_UNREACHABLE")]}],
            [],
            ([], [], []),
            id="going-away-is-not-active",
        ),
    ],
)
def test_app_book_observes_answers(
    answers: list[Answer], killed_by_us: list[str], expected: tuple[list[str], list[str], list[str]]
) -> None:
    book = AppBook("svc-1", 1)
    for index, answer in enumerate(answers):
        book.observe({"instances": 1, **answer}, Naming(), Place())
        if index == 0:
            for suffix in killed_by_us:
                book.end(Instance(f"svc-1.{suffix}", "svc-1", "agent-1", 31000, 0.0, killed=True, message="by us"))
    state = book.snapshot()
    ids = ([i.id for i in state.active], [i.id for i in state.failed], [i.id for i in state.killed])
    assert ids == tuple([f"svc-1.{s}" for s in part] for part in expected)


def test_app_descriptor_without_optional_fields() -> None:
    app = app_descriptor(make_spec(run_as_user="", grace_period_secs=0), 2, Naming("/"), "c1")
    assert app["id"] == f"/{SID}" and app["instances"] == 2 and app["ports"] == [0]
    assert "user" not in app and "taskKillGracePeriodSeconds" not in app
    assert app["healthChecks"][0]["gracePeriodSeconds"] == 300
    assert app["env"]["WAITER_CLUSTER"] == "c1" and "USER" not in app["env"]
    assert app["cmd"].startswith('WAITER_INSTANCE_ID="') and f"${{MESOS_TASK_ID#{SID}.}}" in app["cmd"]


@pytest.mark.parametrize(
    ("overrides", "instances", "named"),
    [
        ({"service_id": "Upper"}, 1, "service-id"),
        ({"service_id": "svc.dotted"}, 1, "service-id"),
        ({"cmd": " "}, 1, "cmd"),
        ({"ports": 0}, 1, "ports"),
        ({}, -1, "instances"),
    ],
    ids=["uppercase", "dot", "empty-cmd", "no-ports", "negative-instances"],
)
def test_check_spec_refuses(overrides: dict[str, Any], instances: int, named: str) -> None:
    values: dict[str, Any] = {"service_id": SID, "cmd": "true", "cpus": 1.0, "mem": 1.0, **overrides}
    with pytest.raises(SchedulerError, match=named):
        check_spec(ServiceSpec(**values), instances)


@pytest.mark.parametrize(
    ("failures", "expected"), [(1, 0.1), (2, 0.2), (4, 0.8), (10, 5.0)], ids=["first", "second", "fourth", "capped"]
)
def test_retry_delay(failures: int, expected: float) -> None:
    assert RetryPolicy(backoff_secs=0.1, max_backoff_secs=5.0).delay(failures) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"message": "App '/x' does not exist"}, "App '/x' does not exist"),
        (
            {"message": "Object is not valid", "details": [{"path": "/cpus", "errors": ["got -1.0, expected 0.0"]}]},
            "Object is not valid (/cpus: got -1.0, expected 0.0)",
        ),
        ("<html>Bad Gateway</html>", "<html>Bad Gateway</html>"),
        (None, "no message"),
        ({"message": "Invalid JSON", "details": "Unexpected end-of-input"}, "Invalid JSON (Unexpected end-of-input)"),
    ],
    ids=["message", "validation-details", "not-json", "empty", "string-details"],
)
def test_marathon_message(body: Any, expected: str) -> None:
    assert marathon_message(body) == expected


@pytest.mark.parametrize(
    ("status", "body", "locked"),
    [
        (409, {"message": "App is locked by one or more deployments.", "deployments": [{"id": "d"}]}, True),
        (409, {"message": "An app with id [/x] already exists."}, False),
        (500, {"deployments": [{"id": "d"}]}, False),
    ],
    ids=["locked", "exists", "not-409"],
)
def test_is_deployment_lock(status: int, body: Any, locked: bool) -> None:
    assert is_deployment_lock(status, body) is locked


# -- settings ------------------------------------------------------------------------------------------------------


def test_marathon_settings_defaults_flags_and_public(tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text(
        "scheduler:\n  kind: local\n  marathon:\n    app-id-prefix: apps/waiter\n"
        "    username: u\n    password: hunter2\n    sync-interval-ms: 500\n"
    )
    flags = {"scheduler": {"kind": "marathon", "marathon": {"url": "http://m.example:8080/"}}}
    settings = load_settings(config, flags)
    marathon = settings.marathon
    assert settings.scheduler_kind == "marathon"
    assert (marathon.url, marathon.app_id_prefix) == ("http://m.example:8080", "/apps/waiter/")
    assert marathon.sync_interval_ms == 500
    shown = settings.public()["scheduler-config"]["marathon"]
    assert shown["username"] == "u" and "hunter2" not in str(settings.public())
    assert load_settings(None, {}).marathon.app_id_prefix == "/waiter/"


@pytest.mark.parametrize(
    ("marathon", "kind", "expected"),
    [
        ({}, "marathon", "scheduler.marathon.url is not set but is required when scheduler.kind is marathon."),
        ({"url": "ftp://m"}, "local", "scheduler.marathon.url is 'ftp://m' but must be an http:// or https:// URL"),
        ({"url": "http://m", "app-id-prefix": "/Wai/"}, "marathon", "scheduler.marathon.app-id-prefix is '/Wai/'"),
        ({"url": "http://m", "username": "u"}, "marathon", "username and scheduler.marathon.password must be set"),
        ({"url": "http://m", "sync-interval-ms": 0}, "marathon", "sync-interval-ms is 0 but must be an integer in the"),
        ({"url": "http://m", "retries": 3}, "marathon", "scheduler.marathon.retries is not a known setting"),
        ({"url": "http://m", "retry-attempts": 101}, "marathon", "retry-attempts is 101 but must be an integer in the"),
        ({"url": "http://m", "retry-backoff-ms": 0}, "marathon", "retry-backoff-ms is 0 but must be an integer in the"),
        ({"url": "http://m", "request-timeout-ms": 9}, "marathon", "request-timeout-ms is 9 but must be an integer"),
    ],
    ids=[
        "missing-url", "bad-scheme", "bad-prefix", "half-auth", "bad-interval", "unknown-key", "bad-attempts",
        "bad-backoff", "bad-timeout",
    ],
)
def test_marathon_settings_errors(marathon: dict[str, Any], kind: str, expected: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(None, {"scheduler": {"kind": kind, "marathon": marathon}})
    assert expected in str(caught.value)
