"""The emulated Marathon's state: apps, their tasks as real local processes, deployments, backoff and failures.

One emulated Mesos agent runs every task: ``/bin/sh -c <cmd>`` in its own session (so one ``killpg`` reaches all it
started), in a sandbox laid out as a Mesos agent's (``<work>/slaves/<agent>/frameworks/<framework>/executors/<task>/
runs/latest``) with ``stdout`` and ``stderr`` files, with ports from a pool and Marathon's environment (``PORT0..``,
``PORTS``, ``HOST``, ``MESOS_TASK_ID``, ``MESOS_SANDBOX``, ``MARATHON_APP_*``). A reconcile step, run after every
change and on a short tick, launches missing tasks (after the app's backoff when the last one failed), kills extra
ones (youngest first) and finishes deployments whose goal is reached.

Real Marathon behaviours, switched by ``Behaviours`` (``POST /emulator/behaviours``, ``--behaviour``): HTTP health
checks kill a task after ``maxConsecutiveFailures`` failures past its grace period (0: never), deployments of an app
with health checks end only once its tasks are healthy, task ids can be instance-era ones
(``<app>.instance-<uuid>._app.1``). Simplifications, all documented: config changes restart every task at once, a
rollback of a deployment only cancels it, and every task runs as the emulator's user whatever the app's ``user``
(the user Marathon would run it as is recorded on the task).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp

from tests.emulators.mesos_agent import exit_message, memory_limit_message
from waiter.scheduler.ports import PortAllocator

log = logging.getLogger("marathon-emulator")

INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "PYENV_ROOT", "VIRTUAL_ENV")
FAILURE_STATES = ("TASK_FAILED", "TASK_LOST", "TASK_ERROR")


def iso(epoch: float) -> str:
    """Marathon's timestamps: ISO-8601 in UTC with milliseconds, omitted when they would be .000."""
    moment = datetime.fromtimestamp(epoch, UTC)
    millis = moment.microsecond // 1000
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{millis:03d}Z" if millis else f"{text}Z"


def safe_path(app_id: str) -> str:
    """Marathon's ``PathId.safePath``: the task id prefix of an app."""
    return app_id.strip("/").replace("/", "_")


HEALTH_KILL_MESSAGE = "Task was killed since health check failed. Reason: "
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# What Marathon's Task.Id parser accepts after the app's prefix: a legacy id, or an instance-era one.
WELL_FORMED_SUFFIX = re.compile(rf"(?:marathon-)?{_UUID}|instance-(?:marathon-)?{_UUID}\.[a-z0-9_-]+\.\d+")


@dataclass
class Behaviours:
    """Real Marathon behaviours tests switch on and off (dashed names in the control and the flag)."""

    health_kills: bool = True  # kill a task after maxConsecutiveFailures failed health checks (0 never kills)
    health_gated_deployments: bool = True  # a deployment ends once its tasks are healthy, not merely running
    instance_ids: bool = False  # task ids <app>.instance-<uuid>._app.1 (Marathon 1.5+) instead of <app>.<uuid>
    malformed_task_id_status: int = 500  # what a kill of a malformed task id answers (Marathon: 500, some 422)
    core_dumps: bool = False  # signals that dump core end "Command terminated with signal ... (core dumped)"


@dataclass(frozen=True)
class ClusterConfig:
    work_dir: Path
    port_range: tuple[int, int] = (31000, 31999)
    agent_host: str = "127.0.0.1"  # the task host reported, and the address the ports are checked on
    agent_id: str = field(default_factory=lambda: f"{uuid.uuid4()}-S0")
    framework_id: str = field(default_factory=lambda: f"{uuid.uuid4()}-0000")
    default_kill_grace_secs: float = 3.0  # when the app sets no taskKillGracePeriodSeconds
    port_hold_secs: float = 30.0
    tick_secs: float = 0.05
    mesos_user: str = "marathon"  # --mesos_user: who tasks of apps without a user run as


@dataclass
class Task:
    id: str
    app_id: str
    version: str
    ports: tuple[int, ...]
    sandbox: Path
    staged_at: float
    state: str = "TASK_STAGING"
    started_at: float | None = None
    process: asyncio.subprocess.Process | None = None
    kill_requested: bool = False
    lost: bool = False
    out_of_memory: bool = False  # the agent's memory isolator killed it
    user: str = ""  # who Mesos would run it as: the app's user, else Marathon's mesos_user
    health_failure: str | None = None  # set when Marathon killed it for failing health checks: the cause
    reachable_again_at: float | None = None  # set while TASK_UNREACHABLE (monotonic): when its agent returns
    health: dict[str, Any] | None = None  # the one healthCheckResults entry, once probed
    jobs: list[asyncio.Task[None]] = field(default_factory=list)

    def to_json(self, config: ClusterConfig, with_health: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "appId": self.app_id,
            "host": config.agent_host,
            "ports": list(self.ports),
            "servicePorts": [],
            "slaveId": config.agent_id,
            "state": "TASK_UNREACHABLE" if self.reachable_again_at is not None else self.state,
            "stagedAt": iso(self.staged_at),
            "startedAt": iso(self.started_at) if self.started_at else None,
            "version": self.version,
            "ipAddresses": [{"ipAddress": config.agent_host, "protocol": "IPv4"}],
            "localVolumes": [],
            "role": "*",
        }
        if with_health:
            body["healthCheckResults"] = [self.health] if self.health else []
        return body


@dataclass
class App:
    definition: dict[str, Any]  # as posted, defaults filled in, without version or status fields
    version: str
    config_changed_at: str
    scaled_at: str
    tasks: dict[str, Task] = field(default_factory=dict)
    last_failure: dict[str, Any] | None = None
    failures: int = 0  # consecutive; the launch delay grows with them
    launch_after: float = 0.0  # monotonic

    @property
    def id(self) -> str:
        return str(self.definition["id"])

    @property
    def live(self) -> list[Task]:
        return [t for t in self.tasks.values() if not t.kill_requested]

    def launch_delay(self) -> float:
        d = self.definition
        delay = float(d["backoffSeconds"]) * float(d["backoffFactor"]) ** max(self.failures - 1, 0)
        return min(delay, float(d["maxLaunchDelaySeconds"]))


@dataclass
class Deployment:
    id: str
    version: str
    app_id: str
    action: str  # StartApplication, ScaleApplication, RestartApplication, StopApplication

    def to_json(self) -> dict[str, Any]:
        action = {"action": self.action, "app": self.app_id}
        return {
            "id": self.id,
            "version": self.version,
            "affectedApps": [self.app_id],
            "affectedPods": [],
            "steps": [{"actions": [action]}],
            "currentActions": [{**action, "readinessCheckResults": []}],
            "currentStep": 1,
            "totalSteps": 1,
        }


class Cluster:
    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.apps: dict[str, App] = {}
        self.deployments: dict[str, Deployment] = {}
        self.tasks: dict[str, Task] = {}  # every task with a process, deleted apps' included
        self._ports = PortAllocator(config.port_range, config.port_hold_secs, config.agent_host)
        self._kick = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._stopping = False
        self.behaviours = Behaviours()

    # -- lifecycle --

    async def start(self) -> None:
        self.config.work_dir.mkdir(parents=True, exist_ok=True)
        self._session = aiohttp.ClientSession()
        self._loop = asyncio.create_task(self._tick_loop())

    async def close(self) -> None:
        """Kill every task's process group at once and wait for them: no orphan outlives the emulator."""
        self._stopping = True
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
        for task in list(self.tasks.values()):
            task.kill_requested = True
            self._signal(task, signal.SIGKILL)
        jobs = [job for task in list(self.tasks.values()) for job in task.jobs]
        await asyncio.gather(*jobs, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # -- questions --

    def locks(self, app_id: str) -> list[Deployment]:
        return [d for d in self.deployments.values() if d.app_id == app_id]

    def app_tasks(self, app_id: str) -> list[Task]:
        return [t for t in self.tasks.values() if t.app_id == app_id]

    # -- changes (the HTTP layer has validated and lock-checked them) --

    def deploy(self, app_id: str, action: str, version: str | None = None) -> Deployment:
        """A new deployment for the app; one it replaces (a forced change) is cancelled."""
        for old in self.locks(app_id):
            del self.deployments[old.id]
        deployment = Deployment(str(uuid.uuid4()), version or iso(time.time()), app_id, action)
        self.deployments[deployment.id] = deployment
        self.kick()
        return deployment

    def create(self, definition: dict[str, Any]) -> App:
        now = iso(time.time())
        app = App(definition, now, now, now)
        self.apps[app.id] = app
        self.kick()
        return app

    def update(self, app: App, changes: dict[str, Any]) -> str:
        """Apply a partial update; the action it amounts to. A config change restarts every task."""
        now = iso(time.time())
        config_changed = any(app.definition.get(k) != v for k, v in changes.items() if k != "instances")
        app.definition.update(changes)
        app.version = now
        app.failures, app.launch_after = 0, 0.0
        if config_changed:
            app.config_changed_at = now
            self.restart(app)
            return "RestartApplication"
        app.scaled_at = now
        self.kick()
        return "ScaleApplication"

    def restart(self, app: App) -> None:
        for task in app.live:
            self.kill(task)

    def delete(self, app: App) -> None:
        del self.apps[app.id]
        for task in list(app.tasks.values()):
            self.kill(task)

    def kill(self, task: Task, *, scale: bool = False) -> None:
        """SIGTERM the task's group now, SIGKILL after the app's grace; ``scale`` also lowers the instances."""
        app = self.apps.get(task.app_id)
        if scale and app is not None:
            app.definition["instances"] = max(0, int(app.definition["instances"]) - 1)
            app.scaled_at = app.version = iso(time.time())
        if task.kill_requested:
            return
        task.kill_requested = True
        task.state = "TASK_KILLING"
        grace = self.config.default_kill_grace_secs
        if app is not None and app.definition.get("taskKillGracePeriodSeconds"):
            grace = float(app.definition["taskKillGracePeriodSeconds"])
        self._signal(task, signal.SIGTERM)
        asyncio.get_running_loop().call_later(grace, self._signal, task, signal.SIGKILL)
        self.kick()

    def interfere(self, task: Task, signum: int, *, lost: bool = False, out_of_memory: bool = False) -> None:
        """Emulator control: the task's process is killed from outside (a crash, a lost agent, its memory limit)."""
        task.lost, task.out_of_memory = lost, out_of_memory
        self._signal(task, signum)

    def kick(self) -> None:
        self._kick.set()

    # -- reconciling --

    async def _tick_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.tick_secs):
                    await self._kick.wait()
            self._kick.clear()
            self.reconcile()

    def reconcile(self) -> None:
        now = time.monotonic()
        for task in self.tasks.values():
            if task.reachable_again_at is not None and now >= task.reachable_again_at:
                task.reachable_again_at = None
        for app in list(self.apps.values()):
            live = app.live
            wanted = int(app.definition["instances"])
            if len(live) > wanted:
                for task in sorted(live, key=lambda t: t.staged_at, reverse=True)[: len(live) - wanted]:
                    self.kill(task)
            elif len(live) < wanted and now >= app.launch_after:
                for _ in range(wanted - len(live)):
                    if not self._launch(app):
                        app.launch_after = now + 1.0  # no free port: try again later
                        break
        for deployment in list(self.deployments.values()):
            if self._reached(deployment):
                del self.deployments[deployment.id]

    def _reached(self, deployment: Deployment) -> bool:
        app = self.apps.get(deployment.app_id)
        if deployment.action == "StopApplication" or app is None:
            return not self.app_tasks(deployment.app_id)
        running = [t for t in app.tasks.values() if t.state == "TASK_RUNNING" and not t.kill_requested]
        if app.definition.get("healthChecks") and self.behaviours.health_gated_deployments:
            running = [t for t in running if t.health and t.health.get("alive")]
        return len(running) == int(app.definition["instances"]) and len(app.tasks) == len(running)

    # -- processes --

    def _launch(self, app: App) -> bool:
        count = max(1, len(app.definition.get("portDefinitions") or ()))
        try:
            ports = self._ports.allocate(count)
        except Exception:
            return False
        if self.behaviours.instance_ids:
            task_id = f"{safe_path(app.id)}.instance-{uuid.uuid4()}._app.1"
        else:
            task_id = f"{safe_path(app.id)}.{uuid.uuid4()}"
        executor = self.config.work_dir / "slaves" / self.config.agent_id / "frameworks" / self.config.framework_id
        executor = executor / "executors" / task_id / "runs"
        task = Task(task_id, app.id, app.version, ports, executor / str(uuid.uuid4()), time.time())
        task.user = str(app.definition.get("user") or self.config.mesos_user)
        app.tasks[task_id] = task
        self.tasks[task_id] = task
        task.jobs.append(asyncio.create_task(self._run(app, task), name=f"run {task_id}"))
        log.info("task %s of %s: launching on ports %s", task_id, app.id, ports)
        return True

    def _environment(self, app: App, task: Task) -> dict[str, str]:
        d = app.definition
        env = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
        env.update({str(k): str(v) for k, v in (d.get("env") or {}).items() if isinstance(v, str | int | float)})
        env.update({f"PORT{i}": str(port) for i, port in enumerate(task.ports)})
        env.update(
            {
                "PORT": str(task.ports[0]),
                "PORTS": ",".join(str(p) for p in task.ports),
                "HOST": self.config.agent_host,
                "MESOS_TASK_ID": task.id,
                "MESOS_SANDBOX": str(task.sandbox),
                "MESOS_AGENT_ENDPOINT": f"{self.config.agent_host}:5051",
                "MARATHON_APP_ID": app.id,
                "MARATHON_APP_VERSION": app.version,
                "MARATHON_APP_RESOURCE_CPUS": str(d["cpus"]),
                "MARATHON_APP_RESOURCE_MEM": str(d["mem"]),
                "MARATHON_APP_RESOURCE_DISK": str(d["disk"]),
                "MARATHON_APP_LABELS": " ".join(str(k).upper() for k in d.get("labels") or {}),
            }
        )
        return env

    async def _run(self, app: App, task: Task) -> None:
        """Start the task's process, watch it to its end, and record how it ended."""
        try:
            stdout, stderr = _open_sandbox(task.sandbox)
            with stdout, stderr:
                task.process = await asyncio.create_subprocess_exec(
                    "/bin/sh",
                    "-c",
                    str(app.definition.get("cmd") or " ".join(app.definition.get("args") or [])),
                    cwd=task.sandbox,
                    env=self._environment(app, task),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=stdout,
                    stderr=stderr,
                    start_new_session=True,
                )
        except OSError as error:
            self._ended(task, "TASK_FAILED", f"Failed to launch the command: {error}")
            return
        if task.kill_requested:  # killed while it was being launched
            self._signal(task, signal.SIGKILL)
        else:
            task.state, task.started_at = "TASK_RUNNING", time.time()
            if any(h.get("protocol") == "HTTP" for h in app.definition.get("healthChecks") or ()):
                task.jobs.append(asyncio.create_task(self._probe(app, task), name=f"probe {task.id}"))
        self.kick()
        returncode = await task.process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(task.process.pid, signal.SIGKILL)  # what the command left behind in its group goes with it
        for job in task.jobs:
            if job is not asyncio.current_task():
                job.cancel()
        if task.health_failure is not None:
            self._ended(task, "TASK_KILLED", HEALTH_KILL_MESSAGE + task.health_failure, failure=True)
        elif task.kill_requested:
            self._ended(task, "TASK_KILLED", "Task killed")
        elif task.lost:
            self._ended(task, "TASK_LOST", f"Agent {self.config.agent_id} lost the task (emulated)")
        elif task.out_of_memory:
            self._ended(task, "TASK_FAILED", memory_limit_message(float(app.definition["mem"])))
        elif returncode == 0:
            self._ended(task, "TASK_FINISHED", exit_message(0))
        else:
            self._ended(task, "TASK_FAILED", exit_message(returncode, self.behaviours.core_dumps))

    def _ended(self, task: Task, state: str, message: str, *, failure: bool = False) -> None:
        log.info("task %s: %s (%s)", task.id, state, message)
        task.state = state
        self.tasks.pop(task.id, None)
        self._ports.release(task.ports)
        app = self.apps.get(task.app_id)
        failed = failure or state in FAILURE_STATES
        if app is not None and app.tasks.pop(task.id, None) is not None and failed:
            app.failures += 1
            app.launch_after = time.monotonic() + app.launch_delay()
            app.last_failure = {
                "appId": app.id,
                "host": self.config.agent_host,
                "message": message,
                "state": state,
                "taskId": task.id,
                "timestamp": iso(time.time()),
                "version": task.version,
                "slaveId": self.config.agent_id,
            }
        if not self._stopping:
            self.kick()

    def _signal(self, task: Task, signum: int) -> None:
        if task.process is not None and task.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(task.process.pid, signum)

    async def _probe(self, app: App, task: Task) -> None:
        """Marathon's HTTP health check, reported in healthCheckResults (it never kills here)."""
        check = next(h for h in app.definition["healthChecks"] if h.get("protocol") == "HTTP")
        index = int(check.get("portIndex") or 0)
        port = task.ports[index] if index < len(task.ports) else task.ports[0]
        url = f"http://{self.config.agent_host}:{port}{check.get('path') or '/'}"
        timeout = aiohttp.ClientTimeout(total=float(check["timeoutSeconds"]))
        result: dict[str, Any] = {
            "alive": False,
            "consecutiveFailures": 0,
            "firstSuccess": None,
            "lastSuccess": None,
            "lastFailure": None,
            "lastFailureCause": None,
            "instanceId": task.id.rsplit("._app.", 1)[0],
        }
        assert self._session is not None
        interval = float(check["intervalSeconds"])
        while True:
            await asyncio.sleep(interval if task.health else min(interval, 1.0))
            now = iso(time.time())
            try:
                async with self._session.get(url, timeout=timeout) as resp:
                    cause = None if 200 <= resp.status < 400 else f"HTTP status {resp.status}"
            except (TimeoutError, aiohttp.ClientError) as error:
                cause = str(error) or type(error).__name__
            if cause is None:
                result.update(alive=True, consecutiveFailures=0, lastSuccess=now)
                result["firstSuccess"] = result["firstSuccess"] or now
            else:
                result.update(alive=False, lastFailure=now, lastFailureCause=cause)
                result["consecutiveFailures"] += 1
            task.health = dict(result)
            if cause is not None and self._kills_for_health(check, task, result):
                log.info("task %s: killed for failing %d health checks", task.id, result["consecutiveFailures"])
                task.health_failure = cause
                self.kill(task)
                return

    def _kills_for_health(self, check: dict[str, Any], task: Task, result: dict[str, Any]) -> bool:
        """Marathon's rule: maxConsecutiveFailures failures in a row (0: never), counted once the task passed a
        check or its grace period is over."""
        limit = int(check.get("maxConsecutiveFailures", 3))
        if not self.behaviours.health_kills or limit <= 0 or result["consecutiveFailures"] < limit:
            return False
        grace_over = time.time() - (task.started_at or time.time()) >= float(check.get("gracePeriodSeconds", 300))
        return bool(result["firstSuccess"]) or grace_over


def _open_sandbox(sandbox: Path) -> tuple[BinaryIO, BinaryIO]:
    """Create the task's run directory (and the ``latest`` link to it) with its stdout and stderr files."""
    sandbox.mkdir(parents=True)
    latest = sandbox.parent / "latest"
    with contextlib.suppress(FileExistsError):
        latest.symlink_to(sandbox.name)
    stdout = open(sandbox / "stdout", "wb")  # noqa: SIM115 - handed to the child, closed by the caller
    try:
        return stdout, open(sandbox / "stderr", "wb")
    except BaseException:
        stdout.close()
        raise
