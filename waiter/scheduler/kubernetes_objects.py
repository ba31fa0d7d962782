"""Kubernetes ReplicaSets and pods as Waiter services and instances: pure translators, no I/O and no clock.

``replicaset`` turns a ``ServiceSpec`` into the ReplicaSet the scheduler POSTs (``docs/kubernetes-api.md``);
``pod_instance`` and ``pod_failures`` turn a pod's JSON into ``Instance`` values, as Waiter's
``pod->ServiceInstance`` and ``track-failed-instances!`` do; ``pod_problem`` says why a pod cannot run (image,
crash loop, memory, scheduling), the raw material of a service's deployment error.

Ids, as Waiter has them: one ReplicaSet per service, named after the service id (shortened to fit Kubernetes'
limits) and annotated with the full id; one instance per *incarnation* of a pod's container, id
``<service-id>.<pod-name>-<restart-count>``, because a crashed container restarts inside the same pod.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from waiter.messages import MESSAGES
from waiter.scheduler.base import Instance, InstanceFlag, SchedulerError, ServiceSpec
from waiter.scheduler.environment import format_number, instance_environment

JSON = dict[str, Any]
SERVICE_ID_ANNOTATION = "waiter/service-id"
CLUSTER_LABEL = "waiter/cluster"
USER_LABEL = "waiter/user"
APP_LABEL = "app"
PORT_COUNT_ANNOTATION = "waiter/port-count"
RECORD_ANNOTATION = "waiter/service-record"  # the router's record of the service (ServiceSpec.record)
CONTAINER = "waiter-app"
WORK_VOLUME = "user-home"
MAX_NAME_LENGTH = 63  # pod names become host names and label values: 63 characters at most
POD_SUFFIX_LENGTH = 5  # the ReplicaSet controller appends "-" and 5 characters to name a pod
IMAGE_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
_LABEL_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_SERVICE_ID = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_INSTANCE = re.compile(r"(?P<pod>[a-z0-9][-a-z0-9.]*)-(?P<restart>\d+)")


def label_value(text: str) -> str:
    """``text`` as a valid label value: at most 63 of [-A-Za-z0-9_.], alphanumeric at both ends."""
    cleaned = re.sub(r"[^-A-Za-z0-9_.]", "_", text)[:MAX_NAME_LENGTH].strip("-_.")
    return cleaned if _LABEL_VALUE.fullmatch(cleaned) else ""


def replicaset_name(service_id: str) -> str:
    """The ReplicaSet's name: the service id when it fits (its pods add 6 characters), else a prefix of it and a
    hash of the whole id, so two long ids never share a name."""
    room = MAX_NAME_LENGTH - POD_SUFFIX_LENGTH - 1
    if len(service_id) <= room:
        return service_id
    digest = hashlib.sha256(service_id.encode()).hexdigest()[:16]
    return service_id[: room - len(digest) - 1].rstrip("-") + "-" + digest


def selector(cluster_name: str) -> str:
    """The label selector of everything this router's cluster runs."""
    return f"{CLUSTER_LABEL}={label_value(cluster_name)}"


def service_port(service_id: str, base_port: int) -> int:
    """PORT0 of a service's pods: pseudo-random per service (Waiter's scheme: base + 10 * (hash mod 100)), so a
    command cannot rely on a fixed port and ports stay dynamic as on Marathon."""
    digest = int(hashlib.sha256(service_id.encode()).hexdigest()[:8], 16)
    return base_port + 10 * (digest % 100)


@dataclass(frozen=True)
class PodTemplate:
    """What the router's configuration adds to every ReplicaSet."""

    namespace: str
    cluster_name: str
    image: str
    shell: tuple[str, ...] = ("/bin/sh", "-c")
    base_port: int = 31000
    default_grace_secs: int = 3


def startup_script(cmd: str) -> str:
    """The user's command after choosing this incarnation's sandbox, as Waiter's ``waiter-k8s-init`` does.

    The working directory is an ``emptyDir`` that outlives container restarts, so counting its ``r<N>``
    directories gives the container's restart count: the instance id needs it and no API exposes it inside.
    """
    return (
        'n=0; while [ -e "r$n" ]; do n=$((n + 1)); done; mkdir "r$n" && ln -sfn "r$n" latest && cd "r$n" || exit 1\n'
        'WAITER_INSTANCE_ID="$WAITER_SERVICE_ID.$POD_NAME-$n"; WAITER_SANDBOX="$PWD"; MESOS_SANDBOX="$PWD"\n'
        "export WAITER_INSTANCE_ID WAITER_SANDBOX MESOS_SANDBOX\n"
        f"{cmd}"
    )


def check_spec(spec: ServiceSpec, instances: int) -> None:
    """Refuse what cannot become a ReplicaSet, naming the field, the value and what is allowed."""
    if not _SERVICE_ID.fullmatch(spec.service_id):
        raise SchedulerError(
            f"service-id {spec.service_id!r} cannot name a Kubernetes ReplicaSet: it must be lowercase letters, "
            "digits and '-', starting and ending with a letter or digit."
        )
    if not spec.cmd.strip():
        raise SchedulerError(f"cmd of service {spec.service_id} is empty; it must be a shell command.")
    if not 1 <= spec.ports <= 10:
        raise SchedulerError(f"ports of service {spec.service_id} is {spec.ports}; it must be between 1 and 10.")
    if instances < 0:
        raise SchedulerError(f"instances for service {spec.service_id} is {instances}; it must be 0 or more.")


def replicaset(spec: ServiceSpec, instances: int, template: PodTemplate) -> JSON:
    """The ReplicaSet of a service, in the shape Waiter's ``default-replicaset-builder`` gives it.

    No readiness or liveness probe: health is the router's own (every back-end is probed the same way); a pod is
    "ready" once its container runs. No ReplicaSet ever chooses a victim either (see ``KubernetesScheduler``).
    """
    name = replicaset_name(spec.service_id)
    user = spec.run_as_user or "waiter"
    port0 = service_port(spec.service_id, template.base_port)
    work_dir = f"/home/{label_value(user) or 'waiter'}"
    ports = [port0 + i for i in range(spec.ports)]
    env = instance_environment(spec, template.cluster_name, home=work_dir, user=spec.run_as_user or None, ports=ports)
    env["PORT"] = str(port0)
    variables: list[JSON] = [{"name": k, "value": v} for k, v in sorted(env.items())]
    # The pod's own facts come from the downward API; HOST is where the instance is reached, as on Marathon.
    for variable, field in (
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
        ("HOST", "status.podIP"),
        ("POD_IP", "status.podIP"),
    ):
        variables.append({"name": variable, "valueFrom": {"fieldRef": {"fieldPath": field}}})
    labels = {APP_LABEL: name, CLUSTER_LABEL: label_value(template.cluster_name), USER_LABEL: label_value(user)}
    memory = f"{format_number(spec.mem)}Mi"
    grace = spec.termination_grace_period_secs or template.default_grace_secs
    annotations = {SERVICE_ID_ANNOTATION: spec.service_id}
    kept = {RECORD_ANNOTATION: spec.record} if spec.record else {}
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": name,
            "namespace": template.namespace,
            "labels": labels,
            "annotations": {**annotations, **kept},
        },
        "spec": {
            "replicas": instances,
            "selector": {"matchLabels": {APP_LABEL: name, CLUSTER_LABEL: labels[CLUSTER_LABEL]}},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {**annotations, PORT_COUNT_ANNOTATION: str(spec.ports)},
                },
                "spec": {
                    "containers": [
                        {
                            "name": CONTAINER,
                            "image": spec.image or template.image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": [*template.shell, startup_script(spec.cmd)],
                            "env": variables,
                            "ports": [{"containerPort": port0 + i, "protocol": "TCP"} for i in range(spec.ports)],
                            "resources": {
                                "limits": {"memory": memory},
                                "requests": {"cpu": format_number(spec.cpus), "memory": memory},
                            },
                            "workingDir": work_dir,
                            "volumeMounts": [{"name": WORK_VOLUME, "mountPath": work_dir}],
                        }
                    ],
                    "volumes": [{"name": WORK_VOLUME, "emptyDir": {}}],
                    "restartPolicy": "Always",
                    "terminationGracePeriodSeconds": grace,
                    "automountServiceAccountToken": False,
                },
            },
        },
    }


# -- reading pods --------------------------------------------------------------------------------------------------


def parse_time(value: Any) -> float | None:
    """Kubernetes' RFC 3339 timestamps ("2024-05-01T10:00:00Z") as epoch seconds."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def annotation(obj: Mapping[str, Any], key: str) -> str | None:
    annotations = metadata(obj).get("annotations")
    value = annotations.get(key) if isinstance(annotations, Mapping) else None
    return value if isinstance(value, str) and value else None


def service_id_of(obj: Mapping[str, Any]) -> str | None:
    return annotation(obj, SERVICE_ID_ANNOTATION)


def name_of(obj: Mapping[str, Any]) -> str:
    return str(metadata(obj).get("name") or "")


def resource_version(obj: Mapping[str, Any]) -> int:
    """Resource versions are opaque strings to clients, but every API server writes etcd revisions: integers."""
    try:
        return int(metadata(obj).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def main_status(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    """The status of the service's container (the first one, as Waiter registers it)."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for status in statuses:
        if isinstance(status, Mapping) and status.get("name") == CONTAINER:
            return status
    return statuses[0] if statuses and isinstance(statuses[0], Mapping) else {}


def restart_count(pod: Mapping[str, Any]) -> int:
    return int(main_status(pod).get("restartCount") or 0)


def instance_id(service_id: str, pod_name: str, restarts: int) -> str:
    return f"{service_id}.{pod_name}-{restarts}"


def split_instance_id(service_id: str, iid: str) -> tuple[str, int] | None:
    """(pod name, restart count) of an instance id of this service, or None if it is not one."""
    match = _INSTANCE.fullmatch(iid.removeprefix(f"{service_id}.")) if iid.startswith(f"{service_id}.") else None
    return (match.group("pod"), int(match.group("restart"))) if match else None


def is_live(pod: Mapping[str, Any]) -> bool:
    """Neither being deleted nor ended: what the ReplicaSet controller counts as one of its replicas."""
    phase = (pod.get("status") or {}).get("phase")
    return not metadata(pod).get("deletionTimestamp") and phase not in ("Succeeded", "Failed")


def removal_rank(pod: Mapping[str, Any]) -> tuple[Any, ...]:
    """The ReplicaSet controller's order of deletion (``ActivePodsWithRanks``), lowest first: unscheduled, pending,
    not ready, ready for less time, more restarts, newer. Used to tell which pods it is about to delete; the caller
    breaks ties of whole-second timestamps by the order it saw the pods in."""
    status = pod.get("status") or {}
    ready_since = ""
    for condition in status.get("conditions") or ():
        if condition.get("type") == "Ready" and condition.get("status") == "True":
            ready_since = str(condition.get("lastTransitionTime") or "")
    return (
        bool((pod.get("spec") or {}).get("nodeName")),
        {"Pending": 0, "Unknown": 1, "Running": 2}.get(str(status.get("phase")), 0),
        bool(ready_since),
        tuple(-ord(c) for c in ready_since),
        -restart_count(pod),
        tuple(-ord(c) for c in str(metadata(pod).get("creationTimestamp") or "")),
    )


def _ports(pod: Mapping[str, Any]) -> list[int]:
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    main = next((c for c in containers if c.get("name") == CONTAINER), containers[0])
    return [int(p["containerPort"]) for p in main.get("ports") or () if isinstance(p.get("containerPort"), int)]


def pod_instance(service_id: str, pod: Mapping[str, Any], restarts: int | None = None) -> Instance:
    """The pod's current incarnation (or the one numbered ``restarts``) as an instance."""
    meta, status = metadata(pod), pod.get("status") or {}
    count = restart_count(pod) if restarts is None else restarts
    container = main_status(pod)
    running = (container.get("state") or {}).get("running") or {}
    last = (container.get("lastState") or {}).get("terminated") or {}
    started = (
        parse_time(running.get("startedAt"))
        or parse_time(last.get("finishedAt"))
        or parse_time(status.get("startTime"))
        or parse_time(meta.get("creationTimestamp"))
        or 0.0
    )
    ports = _ports(pod)
    user = (meta.get("labels") or {}).get(USER_LABEL) or "waiter"
    extras: dict[str, object] = {
        "k8s/pod-name": name_of(pod),
        "k8s/namespace": meta.get("namespace"),
        "k8s/pod-phase": status.get("phase"),
        "k8s/restart-count": count,
    }
    if (pod.get("spec") or {}).get("nodeName"):
        extras["k8s/node-name"] = pod["spec"]["nodeName"]
    reason = container_reason(pod)
    if reason:
        extras["k8s/container-reason"] = reason
    return Instance(
        id=instance_id(service_id, name_of(pod), count),
        service_id=service_id,
        host=str(status.get("podIP") or ""),
        port=ports[0] if ports else 0,
        started_at=started,
        extra_ports=tuple(ports[1:]),
        log_directory=f"/home/{user}/r{count}",
        extras=extras,
    )


def container_reason(pod: Mapping[str, Any]) -> str | None:
    """Why the container is waiting or ended (CrashLoopBackOff, ImagePullBackOff, OOMKilled, ...), if it is."""
    state = main_status(pod).get("state") or {}
    for key in ("waiting", "terminated"):
        reason = (state.get(key) or {}).get("reason")
        if reason:
            return str(reason)
    return None


def termination_message(terminated: Mapping[str, Any]) -> tuple[int | None, frozenset[str], str]:
    """Exit code, flags and message of a ``terminated`` container state (its message ends with the exit code)."""
    code = terminated.get("exitCode")
    exit_code = int(code) if isinstance(code, int) else None
    reason = str(terminated.get("reason") or "Error")
    if reason == "OOMKilled":
        return (
            exit_code,
            frozenset({InstanceFlag.MEMORY_LIMIT_EXCEEDED.value}),
            (f"OOMKilled: the container went over its memory limit, exit code {exit_code}"),
        )
    return exit_code, frozenset(), f"Container {reason.lower()}: exited with code {exit_code}"


def pod_failures(service_id: str, pod: Mapping[str, Any]) -> list[Instance]:
    """The failed incarnations the pod shows: its last terminated container (``lastState``), and the current one
    when the pod itself failed (evicted, or its container ended for good)."""
    failures: list[Instance] = []
    container = main_status(pod)
    restarts = restart_count(pod)
    last = (container.get("lastState") or {}).get("terminated")
    if isinstance(last, Mapping) and restarts > 0:
        exit_code, flags, message = termination_message(last)
        base = pod_instance(service_id, pod, restarts - 1)
        started = parse_time(last.get("startedAt")) or base.started_at
        failures.append(_ended(base, started, exit_code, flags, message))
    status = pod.get("status") or {}
    if status.get("phase") == "Failed":
        terminated = (container.get("state") or {}).get("terminated") or {}
        exit_code, flags, message = termination_message(terminated) if terminated else (None, frozenset(), "")
        why = status.get("message") or status.get("reason")
        if why:
            message = f"{status.get('reason') or 'Failed'}: {status.get('message') or why}"
        base = pod_instance(service_id, pod)
        failures.append(_ended(base, base.started_at, exit_code, flags, message or "Pod failed"))
    return failures


def _ended(base: Instance, started: float, exit_code: int | None, flags: frozenset[str], message: str) -> Instance:
    return Instance(
        id=base.id,
        service_id=base.service_id,
        host=base.host,
        port=base.port,
        started_at=started,
        extra_ports=base.extra_ports,
        log_directory=base.log_directory,
        exit_code=exit_code,
        message=message,
        flags=flags,
        failed=True,
        extras=base.extras,
    )


# -- why pods cannot run -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodProblem:
    kind: str  # "unschedulable", "image", "crash-loop"
    detail: str
    exit_code: int | None = None
    oom: bool = False


def pod_problem(pod: Mapping[str, Any]) -> PodProblem | None:
    """What keeps a live pod from running its container, or None."""
    status = pod.get("status") or {}
    for condition in status.get("conditions") or ():
        scheduled = (condition.get("type"), condition.get("status"), condition.get("reason"))
        if scheduled == ("PodScheduled", "False", "Unschedulable"):
            return PodProblem("unschedulable", str(condition.get("message") or "no node fits the pod"))
    waiting = (main_status(pod).get("state") or {}).get("waiting") or {}
    reason = waiting.get("reason")
    if reason in IMAGE_REASONS:
        return PodProblem("image", f"{reason}: {waiting.get('message') or 'the image cannot be pulled'}")
    if reason == "CrashLoopBackOff":
        last = (main_status(pod).get("lastState") or {}).get("terminated") or {}
        code = last.get("exitCode")
        return PodProblem(
            "crash-loop",
            str(waiting.get("message") or "back-off restarting failed container"),
            int(code) if isinstance(code, int) else None,
            last.get("reason") == "OOMKilled",
        )
    return None


def deployment_error(
    problems: Sequence[PodProblem], running: int, image: str, need: tuple[float, float], waited_secs: float | None
) -> str | None:
    """Why the service cannot start, from the problems of its live pods, in Waiter's words where Waiter has some.

    ``running`` pods with no problem clear it; ``waited_secs`` is set once a pod has been unschedulable for the
    configured wait (``offer-wait-secs``), the only problem that needs time to become an error."""
    if running or not problems:
        return None
    kinds = {p.kind for p in problems}
    if kinds == {"crash-loop"}:
        if all(p.oom for p in problems):
            return MESSAGES["not-enough-memory"]
        codes = {p.exit_code for p in problems}
        if len(codes) == 1 and None not in codes:
            return f"{MESSAGES['bad-startup-command']} (every instance exited with code {codes.pop()})"
        return f"{MESSAGES['bad-startup-command']} (the containers keep exiting: CrashLoopBackOff)"
    if "image" in kinds:
        detail = next(p.detail for p in problems if p.kind == "image")
        return f"Unable to pull the container image {image}: {detail}"
    if "unschedulable" in kinds and waited_secs is not None:
        detail = next(p.detail for p in problems if p.kind == "unschedulable")
        cpus, mem = need
        return (
            f"No Kubernetes node could place an instance needing {format_number(cpus)} cpus and "
            f"{format_number(mem)} MiB within {format_number(waited_secs)} seconds: {detail}"
        )
    return None


__all__ = [
    "CLUSTER_LABEL",
    "CONTAINER",
    "RECORD_ANNOTATION",
    "SERVICE_ID_ANNOTATION",
    "PodProblem",
    "PodTemplate",
    "annotation",
    "check_spec",
    "container_reason",
    "deployment_error",
    "instance_id",
    "is_live",
    "label_value",
    "name_of",
    "parse_time",
    "pod_failures",
    "pod_instance",
    "pod_problem",
    "removal_rank",
    "replicaset",
    "replicaset_name",
    "resource_version",
    "restart_count",
    "selector",
    "service_id_of",
    "service_port",
    "split_instance_id",
    "startup_script",
]
