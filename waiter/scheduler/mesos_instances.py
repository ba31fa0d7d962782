"""An instance as a Mesos task and back, without I/O: the TaskInfo that launches it, and the instance rebuilt from
the task the master lists after a restart.

A task carries in its labels everything a router needs to take it on again (``adopt``): the service's spec as
JSON (with the router's record of the service, ``ServiceSpec.record``, as Marathon keeps it in an app label) and
where the instance listens. A router restarted without shared state re-subscribes with its framework id, lists the
framework's tasks (the operator API's GET_TASKS) and rebuilds its services from them, so the running tasks serve
on instead of being replaced.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from waiter.scheduler.base import Instance, ServiceSpec
from waiter.scheduler.environment import instance_environment
from waiter.scheduler.mesos_proto import Offer, Taken
from waiter.scheduler.mesos_tasks import MesosSettings, id_value

SPEC_LABEL = "waiter-spec"  # the service's ServiceSpec as JSON (its record included)
INSTANCE_LABEL = "waiter-instance"  # {"host", "ports", "started-at"}: where the instance listens, since when
_REQUIRED = ("service_id", "cmd", "cpus", "mem")
ACTIVE_STATES = frozenset({"TASK_STAGING", "TASK_STARTING", "TASK_RUNNING", "TASK_KILLING", "TASK_UNREACHABLE"})


def task_user(spec: ServiceSpec, framework_user: str) -> str:
    """The user Mesos runs the task as: the service's run-as-user, else the framework's user (FrameworkInfo.user)."""
    return spec.run_as_user or framework_user


def sandbox_of(settings: MesosSettings, agent_id: str, framework_id: str, instance_id: str) -> str:
    """Where the agent keeps the task's sandbox (its ``latest`` run)."""
    executor = f"{settings.agent_work_dir}/slaves/{agent_id}/frameworks/{framework_id}/executors/{instance_id}"
    return f"{executor}/runs/latest"


def kill_grace(spec: ServiceSpec, settings: MesosSettings) -> float:
    return max(float(spec.termination_grace_period_secs), settings.min_kill_grace_secs)


def spec_json(spec: ServiceSpec) -> str:
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    return json.dumps({**fields, "env": dict(spec.env)}, sort_keys=True, separators=(",", ":"))


def spec_from_json(text: str) -> ServiceSpec:
    """A spec written by ``spec_json``; raises ValueError naming what is missing or malformed."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"the {SPEC_LABEL} label is not a JSON object")
    missing = [name for name in _REQUIRED if name not in data]
    if missing:
        raise ValueError(f"the {SPEC_LABEL} label lacks {', '.join(missing)}")
    known = {f.name for f in dataclasses.fields(ServiceSpec)}
    try:
        return ServiceSpec(**{name: value for name, value in data.items() if name in known})
    except TypeError as error:
        raise ValueError(f"the {SPEC_LABEL} label is malformed: {error}") from None


def launch(
    spec: ServiceSpec, offer: Offer, taken: Taken, settings: MesosSettings, framework_id: str
) -> tuple[Instance, dict[str, Any]]:
    """A new instance of ``spec`` on what was taken from ``offer``, and the TaskInfo that launches it."""
    instance_id = f"{spec.service_id}.{time.time_ns():x}-{secrets.token_hex(4)}"
    sandbox = sandbox_of(settings, offer.agent_id, framework_id, instance_id)
    ports = taken.ports
    user = task_user(spec, settings.user)
    env = instance_environment(
        spec, settings.cluster_name, home=f"/home/{user}", user=user,
        sandbox=sandbox, instance_id=instance_id, ports=ports,
    )
    instance = Instance(
        id=instance_id,
        service_id=spec.service_id,
        host=offer.hostname,
        port=ports[0],
        started_at=time.time(),
        extra_ports=ports[1:],
        log_directory=sandbox,
        extras={
            "mesos/agent-id": offer.agent_id,
            "mesos/framework-id": framework_id,
            "mesos/task-state": "TASK_STAGING",
        },
    )
    return instance, task_info(spec, instance, offer.agent_id, taken.resources, env, kill_grace(spec, settings), user)


def task_info(
    spec: ServiceSpec,
    instance: Instance,
    agent_id: str,
    resources: Sequence[Mapping[str, Any]],
    env: Mapping[str, str],
    grace: float,
    user: str,
) -> dict[str, Any]:
    """The TaskInfo of one instance; ``resources`` come from ``take`` (role and reservations of their offer)."""
    command: dict[str, Any] = {
        "value": spec.cmd,
        "shell": True,
        "environment": {"variables": [{"name": k, "value": v} for k, v in sorted(env.items())]},
    }
    if user:
        command["user"] = user  # what USER and HOME in ``env`` name: the master would otherwise use the framework's
    where = {"host": instance.host, "ports": [instance.port, *instance.extra_ports], "started-at": instance.started_at}
    labels = {
        "source": "waiter",
        "service-id": spec.service_id,
        SPEC_LABEL: spec_json(spec),
        INSTANCE_LABEL: json.dumps(where, separators=(",", ":")),
    }
    return {
        "name": instance.id,
        "task_id": {"value": instance.id},
        "agent_id": {"value": agent_id},
        "resources": [dict(r) for r in resources],
        "command": command,
        "kill_policy": {"grace_period": {"nanoseconds": int(grace * 1e9)}},
        "labels": {"labels": [{"key": key, "value": value} for key, value in labels.items()]},
    }


@dataclass(frozen=True, slots=True)
class Adopted:
    """A running task of our framework, rebuilt from what the master lists."""

    spec: ServiceSpec
    instance: Instance
    agent_id: str
    state: str
    grace_secs: float


def adopt(task: Mapping[str, Any], framework_id: str, settings: MesosSettings) -> Adopted | None:
    """The instance a task of the master's GET_TASKS answer runs; None if it is not an active task of ours.

    Raises ValueError, naming the task and what is wrong, for a task of ours whose labels cannot be read.
    """
    if id_value(task.get("framework_id")) != framework_id or task.get("state") not in ACTIVE_STATES:
        return None
    task_id = id_value(task.get("task_id")) or ""
    agent_id = id_value(task.get("agent_id")) or ""
    labels = {
        str(label.get("key")): str(label.get("value", ""))
        for label in (task.get("labels") or {}).get("labels") or ()
        if isinstance(label, Mapping)
    }
    if labels.get("source") != "waiter":
        return None
    try:
        if SPEC_LABEL not in labels or INSTANCE_LABEL not in labels:
            raise ValueError(f"it has no {SPEC_LABEL} or {INSTANCE_LABEL} label (launched by an older router?)")
        spec = spec_from_json(labels[SPEC_LABEL])
        where = json.loads(labels[INSTANCE_LABEL])
        ports = tuple(int(p) for p in where["ports"])
        host, started_at = str(where["host"]), float(where["started-at"])
        if not ports:
            raise ValueError(f"its {INSTANCE_LABEL} label lists no port")
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"Cannot take on Mesos task {task_id}: {error}") from None
    instance = Instance(
        id=task_id,
        service_id=spec.service_id,
        host=host,
        port=ports[0],
        started_at=started_at,
        extra_ports=ports[1:],
        log_directory=sandbox_of(settings, agent_id, framework_id, task_id),
        extras={"mesos/agent-id": agent_id, "mesos/framework-id": framework_id, "mesos/task-state": task["state"]},
    )
    return Adopted(spec, instance, agent_id, str(task["state"]), kill_grace(spec, settings))


__all__ = [
    "Adopted",
    "adopt",
    "kill_grace",
    "launch",
    "sandbox_of",
    "spec_from_json",
    "spec_json",
    "task_info",
    "task_user",
]
