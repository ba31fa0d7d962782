"""Marathon apps and tasks as Waiter services and instances: pure translators, no I/O and no clock.

``app_descriptor`` turns a ``ServiceSpec`` into the app the scheduler POSTs (docs/api.md §8); ``task_instance`` and
``failure_instance`` turn Marathon's JSON into ``Instance`` values; ``AppBook`` folds successive answers for one app
into a ``ServiceState`` (tasks that appeared, ended, failed), as Waiter's ``response-data->service-instances`` does.

Ids: app id = app-id prefix + service id. Marathon names a task ``<app path with / as _>.<suffix>``; the instance id
is ``<service-id>.<suffix>`` (dots in the suffix become ``_``), so instance ids keep Waiter's form whatever the prefix.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from waiter.scheduler.base import Instance, InstanceFlag, SchedulerError, ServiceSpec, ServiceState
from waiter.scheduler.book import EndedInstances
from waiter.scheduler.environment import instance_environment
from waiter.scheduler.exits import exit_code_of

JSON = dict[str, Any]
ACTIVE_STATES = frozenset({"TASK_STAGING", "TASK_STARTING", "TASK_RUNNING"})
RECORD_LABEL = "waiter-record"  # the router's record of the service (ServiceSpec.record)
_SERVICE_ID = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")


@dataclass(frozen=True)
class Naming:
    """Service id <-> Marathon app id, instance id <-> Marathon task id, under one app-id prefix."""

    prefix: str = "/waiter/"  # absolute, ends with "/"

    def app_id(self, service_id: str) -> str:
        return self.prefix + service_id

    def service_id(self, app_id: str) -> str | None:
        """The service of an app id, None for apps outside the prefix or in a sub-group."""
        rest = app_id.removeprefix(self.prefix) if app_id.startswith(self.prefix) else ""
        return rest if rest and "/" not in rest else None

    def task_prefix(self, service_id: str) -> str:
        """Marathon's task id prefix for the app: its path with '/' as '_' (``PathId.safePath``), then a dot."""
        return self.app_id(service_id).strip("/").replace("/", "_") + "."

    def instance_id(self, service_id: str, task_id: str) -> str:
        suffix = task_id.removeprefix(self.task_prefix(service_id))
        return f"{service_id}.{suffix.replace('.', '_')}"

    def task_id(self, service_id: str, instance_id: str) -> str:
        """The task id of an instance whose task id was never seen (dots in the suffix cannot be restored)."""
        return self.task_prefix(service_id) + instance_id.removeprefix(f"{service_id}.")


def app_user(spec: ServiceSpec, mesos_user: str | None) -> str | None:
    """Who Mesos runs the tasks as: the service's run-as-user, else Marathon's ``--mesos_user`` (from /v2/info)."""
    return spec.run_as_user or mesos_user or None


def app_environment(spec: ServiceSpec, cluster_name: str, user: str | None) -> dict[str, str]:
    """§7.1's variables with ``HOME=/home/<user>`` of the task's user; PORT0.., MESOS_SANDBOX come from Mesos."""
    return instance_environment(spec, cluster_name, home=f"/home/{user}" if user else "/tmp", user=user)


def app_command(spec: ServiceSpec, naming: Naming) -> str:
    """The user's command, after exporting what only the task knows: its instance id and sandbox."""
    prefix = naming.task_prefix(spec.service_id)
    return (
        f'WAITER_INSTANCE_ID="{spec.service_id}.$(printf %s "${{MESOS_TASK_ID#{prefix}}}" | tr . _)"; '
        'WAITER_SANDBOX="${MESOS_SANDBOX:-$PWD}"; export WAITER_INSTANCE_ID WAITER_SANDBOX\n'
        f"{spec.cmd}"
    )


def app_descriptor(
    spec: ServiceSpec, instances: int, naming: Naming, cluster_name: str, mesos_user: str | None = None
) -> JSON:
    """The Marathon app of a service (docs/api.md §8).

    Its HTTP health check never kills (``maxConsecutiveFailures: 0``): the router judges health and decides which
    unhealthy instance to kill and when (it counts the instance's requests and may be waiting on it); Marathon's
    check still shows health in its views and holds a deployment open until the tasks are healthy.
    """
    user = app_user(spec, mesos_user)
    app: JSON = {
        "id": naming.app_id(spec.service_id),
        "cmd": app_command(spec, naming),
        "cpus": spec.cpus,
        "mem": spec.mem,
        "instances": instances,
        "ports": [0] * spec.ports,
        "env": app_environment(spec, cluster_name, user),
        "labels": {
            "source": "waiter",
            "user": spec.run_as_user,
            **({RECORD_LABEL: spec.record} if spec.record else {}),
        },
        "healthChecks": [
            {
                "protocol": "HTTP",
                "path": spec.health_check_url,
                "portIndex": spec.health_check_port_index,
                "intervalSeconds": spec.health_check_interval_secs,
                "maxConsecutiveFailures": 0,
                "timeoutSeconds": 20,
                "gracePeriodSeconds": spec.grace_period_secs if spec.grace_period_secs > 0 else 300,
            }
        ],
        "backoffFactor": spec.restart_backoff_factor,
    }
    if user:
        app["user"] = user
    if spec.termination_grace_period_secs > 0:
        app["taskKillGracePeriodSeconds"] = spec.termination_grace_period_secs
    return app


def check_spec(spec: ServiceSpec, instances: int) -> None:
    """Refuse what Marathon cannot run, naming the field, the value and what is allowed."""
    if not _SERVICE_ID.fullmatch(spec.service_id):
        raise SchedulerError(
            f"service-id {spec.service_id!r} cannot be a Marathon app id: it must be lowercase letters, digits "
            "and '-', starting and ending with a letter or digit."
        )
    if not spec.cmd.strip():
        raise SchedulerError(f"cmd of service {spec.service_id} is empty; it must be a shell command.")
    if spec.ports < 1:
        raise SchedulerError(f"ports of service {spec.service_id} is {spec.ports}; it must be at least 1.")
    if instances < 0:
        raise SchedulerError(f"instances for service {spec.service_id} is {instances}; it must be 0 or more.")


def parse_time(value: Any) -> float | None:
    """Marathon's ISO-8601 timestamps ("2015-08-26T20:23:44.678Z", ms omitted when .000) as epoch seconds."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def health_of(results: Any) -> bool | None:
    """Waiter's reading of ``healthCheckResults``: healthy iff present, all alive, no consecutive failures."""
    if not isinstance(results, list) or not results:
        return None
    return all(isinstance(r, Mapping) and r.get("alive") is True and not r.get("consecutiveFailures") for r in results)


def failure_facts(message: str) -> tuple[int | None, frozenset[str]]:
    """The exit code and flags Waiter reads from a ``lastTaskFailure`` message."""
    flags: set[str] = set()
    if message.startswith("Memory limit exceeded:"):
        flags.add(InstanceFlag.MEMORY_LIMIT_EXCEEDED.value)
    if message.startswith("Task was killed since health check failed"):
        flags.add(InstanceFlag.NEVER_PASSED_HEALTH_CHECKS.value)
    return exit_code_of(message), frozenset(flags)


@dataclass(frozen=True)
class Place:
    """Facts about the cluster needed to name an instance's sandbox."""

    agent_work_dir: str = "/var/lib/mesos"
    framework_id: str | None = None  # from GET /v2/info; without it there is no log directory

    def log_directory(self, slave_id: Any, task_id: str) -> str | None:
        if not self.framework_id or not slave_id:
            return None
        return (
            f"{self.agent_work_dir.rstrip('/')}/slaves/{slave_id}/frameworks/{self.framework_id}"
            f"/executors/{task_id}/runs/latest"
        )


def task_instance(naming: Naming, service_id: str, task: Mapping[str, Any], place: Place) -> Instance:
    """A Marathon task as a (running or starting) instance."""
    task_id = str(task.get("id", ""))
    ports = tuple(int(p) for p in task.get("ports") or () if isinstance(p, int))
    started = parse_time(task.get("startedAt")) or parse_time(task.get("stagedAt")) or 0.0
    extras: dict[str, object] = {
        "marathon/app-id": task.get("appId") or naming.app_id(service_id),
        "marathon/task-id": task_id,
        "marathon/state": task.get("state"),
    }
    if task.get("slaveId"):
        extras["marathon/slave-id"] = task["slaveId"]
    healthy = health_of(task.get("healthCheckResults"))
    if healthy is not None:
        extras["marathon/healthy?"] = healthy
    return Instance(
        id=naming.instance_id(service_id, task_id),
        service_id=service_id,
        host=str(task.get("host") or ""),
        port=ports[0] if ports else 0,
        started_at=started,
        extra_ports=ports[1:],
        log_directory=place.log_directory(task.get("slaveId"), task_id),
        extras=extras,
    )


def failure_instance(naming: Naming, service_id: str, failure: Mapping[str, Any], seen: Instance | None) -> Instance:
    """``lastTaskFailure`` as a failed instance: the task as last seen (or port 0 if never seen) plus the end."""
    task_id = str(failure.get("taskId", ""))
    # A memory limitation's message goes on with the cgroup's statistics after a blank line: keep the sentence.
    message = str(failure.get("message") or failure.get("state") or "Task failed").split("\n\n", 1)[0]
    exit_code, flags = failure_facts(message)
    base = seen or Instance(
        id=naming.instance_id(service_id, task_id),
        service_id=service_id,
        host=str(failure.get("host") or ""),
        port=0,
        started_at=parse_time(failure.get("timestamp")) or 0.0,
        extras={"marathon/task-id": task_id},
    )
    extras = {**base.extras, "marathon/state": failure.get("state")}
    return dataclasses.replace(
        base, exit_code=exit_code, message=message, flags=flags, failed=True, killed=False, extras=extras
    )


@dataclass
class AppBook(EndedInstances):
    """What the scheduler knows of one app: Marathon's last answer plus the ends it recorded itself."""

    service_id: str
    requested: int
    tasks: dict[str, Instance] = field(default_factory=dict)  # every listed task, by instance id
    active_ids: set[str] = field(default_factory=set)  # listed tasks in a running or starting state
    task_ids: dict[str, str] = field(default_factory=dict)  # instance id -> Marathon task id
    changed_at: int = 0  # the scheduler's change counter when we last changed this book ourselves
    record: str | None = None  # the router's record of the service, from the app's label

    def observe(self, app: Mapping[str, Any], naming: Naming, place: Place) -> None:
        """Take in Marathon's view of the app: tasks now listed, tasks gone since, its last task failure.

        An answer without ``tasks`` (e.g. the AppInfo a create returns) says nothing about them.
        """
        self.requested = int(app.get("instances", self.requested))
        labels = app.get("labels")
        if isinstance(labels, Mapping) and isinstance(labels.get(RECORD_LABEL), str):
            self.record = labels[RECORD_LABEL]
        if "tasks" not in app:
            return
        listed: dict[str, Instance] = {}
        active: set[str] = set()
        for task in app.get("tasks") or ():
            if not isinstance(task, Mapping):
                continue
            instance = task_instance(naming, self.service_id, task, place)
            self.task_ids[instance.id] = str(task.get("id"))
            listed[instance.id] = instance
            if task.get("state") in ACTIVE_STATES and instance.id not in self.recorded:
                active.add(instance.id)
        failure = app.get("lastTaskFailure")
        failed_id = None
        if isinstance(failure, Mapping) and failure.get("taskId"):
            failed_id = naming.instance_id(self.service_id, str(failure["taskId"]))
        for iid, seen in self.tasks.items():
            if iid in listed or iid in self.recorded:
                continue
            if iid == failed_id and isinstance(failure, Mapping):
                self.end(failure_instance(naming, self.service_id, failure, seen))
            else:
                message = "Task ended without a failure (it finished, or was killed outside this router)"
                self.end(dataclasses.replace(seen, message=message, killed=True))
        if isinstance(failure, Mapping) and failed_id and failed_id not in self.recorded and failed_id not in listed:
            self.end(failure_instance(naming, self.service_id, failure, None))
        self.tasks, self.active_ids = listed, active

    def end(self, ended: Instance) -> bool:
        """Record an ended instance once; it leaves the active set at once, even while Marathon still lists it."""
        if not super().end(ended):
            return False
        self.active_ids.discard(ended.id)
        return True

    def find_ended(self, instance_id: str) -> bool:
        return instance_id in self.recorded

    def snapshot(self) -> ServiceState:
        active = sorted((self.tasks[i] for i in self.active_ids), key=lambda i: (i.started_at, i.id))
        return ServiceState(
            service_id=self.service_id,
            requested=self.requested,
            active=tuple(active),
            failed=tuple(self.failed),
            killed=tuple(self.killed),
        )


__all__ = [
    "ACTIVE_STATES",
    "AppBook",
    "Naming",
    "Place",
    "app_command",
    "app_descriptor",
    "app_environment",
    "app_user",
    "check_spec",
    "failure_facts",
    "failure_instance",
    "health_of",
    "parse_time",
    "task_instance",
]
