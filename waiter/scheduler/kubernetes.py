"""The Kubernetes scheduler: every service is a ReplicaSet, every instance one incarnation of one of its pods.

Three layers, as for Marathon. ``KubernetesClient`` (``kubernetes_client``) does the HTTP; pure translators
(``kubernetes_objects``) build the ReplicaSet and read pods; ``KubernetesScheduler`` keeps the ReplicaSets and
pods labelled with this router's cluster name in memory, fed by two list+watch loops (``kubernetes_watch``:
watches, not polling), and answers from them.

Killing a chosen instance (never letting the ReplicaSet choose, as it would pick by its own ranking): the pod
is deleted first, then the ReplicaSet's replicas are lowered by one under optimistic concurrency (the patch
carries the resourceVersion it was computed from; a 409 re-reads and tries again). This is Waiter's order. A pod
being deleted no longer counts as a replica, so between the two calls the ReplicaSet controller may create a
replacement; lowering replicas then removes the lowest-ranked pod, which is that replacement (unscheduled or
pending, never ready), never a running pod with requests. The ``controller.kubernetes.io/pod-deletion-cost``
annotation is not used: the controller consults it only after a pod's phase and readiness, so with a pod still
starting it would delete that one and keep the pod we chose; and it is best-effort by its own documentation.
Scale-down through a lower replica count never happens for the same reason (``scale_service`` never goes below
the live pods).

Failed pods become deployment errors (``ServiceState.error``) in Waiter's words: every live pod crash-looping
(``CrashLoopBackOff``; out of memory when they were ``OOMKilled``), unable to pull its image
(``ImagePullBackOff``/``ErrImagePull``), or unschedulable for ``offer-wait-secs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from waiter.scheduler.base import (
    Instance,
    KillOutcome,
    KillResult,
    Listener,
    SchedulerError,
    ServiceSpec,
    ServiceState,
)
from waiter.scheduler.book import EndedInstances, already_ended, no_such_instance
from waiter.scheduler.kubernetes_auth import connection
from waiter.scheduler.kubernetes_client import JSON, KubernetesClient, KubernetesError
from waiter.scheduler.kubernetes_objects import (
    RECORD_ANNOTATION,
    PodProblem,
    PodTemplate,
    annotation,
    check_spec,
    deployment_error,
    is_live,
    metadata,
    name_of,
    pod_failures,
    pod_instance,
    pod_problem,
    removal_rank,
    replicaset,
    replicaset_name,
    restart_count,
    selector,
    service_id_of,
    split_instance_id,
)
from waiter.scheduler.kubernetes_watch import WatchedCollection
from waiter.scheduler.retry import RetryPolicy
from waiter.settings import KubernetesSchedulerConfig

log = logging.getLogger(__name__)

CONFLICT_RETRIES = 5


@dataclass
class _Book(EndedInstances):
    """What the scheduler recorded itself about one service: ended instances and how long pods wait for a node."""

    active: dict[str, Instance] = field(default_factory=dict)  # as last reported
    unschedulable_since: dict[str, float] = field(default_factory=dict)  # pod name -> monotonic time first seen
    seen: dict[str, int] = field(default_factory=dict)  # pod name -> the order it was first seen in (newer: higher)
    ending: dict[str, Instance] = field(default_factory=dict)  # instances being killed, as they will have ended


class KubernetesScheduler:
    """Runs each service as a Kubernetes ReplicaSet; implements ``waiter.scheduler.base.Scheduler``."""

    kind = "kubernetes"

    def __init__(
        self,
        config: KubernetesSchedulerConfig,
        *,
        cluster_name: str = "kubernetes",
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.cluster_name = cluster_name
        credentials, self.namespace = connection(config, os.environ if environ is None else environ)
        self.client = KubernetesClient(
            credentials,
            timeout_secs=config.request_timeout_ms / 1000,
            retry=RetryPolicy(config.retry_attempts, config.retry_backoff_ms / 1000),
        )
        self.template = PodTemplate(
            namespace=self.namespace,
            cluster_name=cluster_name,
            image=config.image,
            shell=config.shell,
            base_port=config.pod_base_port,
            default_grace_secs=config.pod_sigkill_delay_secs,
        )
        ns = self.namespace

        def watched(kind: str, path: str) -> WatchedCollection:
            return WatchedCollection(
                kind,
                path,
                self.client,
                selector(cluster_name),
                watch_timeout_secs=config.watch_timeout_secs,
                retry_backoff_secs=config.retry_backoff_ms / 1000,
                on_change=self._refresh,
            )

        self._replicasets = watched("ReplicaSet", f"/apis/apps/v1/namespaces/{ns}/replicasets")
        self._pods = watched("Pod", f"/api/v1/namespaces/{ns}/pods")
        self._books: dict[str, _Book] = {}
        self._snapshots: dict[str, ServiceState] = {}
        self._listeners: list[Listener] = []
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._sequence = itertools.count()

    # -- the Scheduler protocol --

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        self._replicasets.start()
        self._pods.start()
        try:
            async with asyncio.timeout(self.config.request_timeout_ms / 1000):
                await self._replicasets.synced.wait()
                await self._pods.synced.wait()
        except TimeoutError:
            log.warning("Kubernetes at %s has not answered the first lists yet; will keep trying", self.client.url)

    async def close(self) -> None:
        await self._replicasets.stop()
        await self._pods.stop()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        await self.client.close()

    async def create_service(self, spec: ServiceSpec, instances: int) -> bool:
        check_spec(spec, instances)
        if spec.service_id in self._snapshots:
            return False
        body = replicaset(spec, instances, self.template)
        created = await self.client.create(self._replicasets.path, body)
        if created is None:
            name = replicaset_name(spec.service_id)
            existing = await self.client.get(f"{self._replicasets.path}/{name}")
            if existing is not None and service_id_of(existing) != spec.service_id:
                raise SchedulerError(
                    f"Cannot create service {spec.service_id}: ReplicaSet {name} in namespace {self.namespace} "
                    f"belongs to service {service_id_of(existing)}."
                )
            if existing is not None:
                self._replicasets.apply("MODIFIED", existing)
            return False
        self._replicasets.apply("ADDED", created)
        return True

    async def scale_service(self, service_id: str, instances: int) -> None:
        if instances < 0:
            raise SchedulerError(f"instances for service {service_id} is {instances}; it must be 0 or more.")
        # Never below the live pods: a lower replica count lets the ReplicaSet controller choose victims.
        await self._set_replicas(service_id, lambda current: max(instances, self._live_pods(service_id)))

    async def kill_instance(
        self,
        service_id: str,
        instance_id: str,
        *,
        force: bool = False,
        replace: bool = False,
        message: str | None = None,
        flags: frozenset[str] = frozenset(),
        failed: bool = False,
    ) -> KillResult:
        missing = no_such_instance(service_id, instance_id)
        book = self._books.get(service_id)
        if book is None or service_id not in self._snapshots:
            return missing
        if instance_id in book.recorded:
            return already_ended(instance_id)
        parts = split_instance_id(service_id, instance_id)
        pod = self._pods.objects.get(service_id, {}).get(parts[0]) if parts else None
        if parts is None or pod is None:
            return missing
        if parts[1] < restart_count(pod) or not is_live(pod):
            return already_ended(instance_id)
        if parts[1] > restart_count(pod):
            return missing
        grace = 0 if force else int((pod.get("spec") or {}).get("terminationGracePeriodSeconds") or 0)
        path = f"{self._pods.path}/{parts[0]}"
        options = {"gracePeriodSeconds": grace, "preconditions": {"uid": metadata(pod).get("uid")}}
        seen = book.active.get(instance_id) or pod_instance(service_id, pod)
        # The watch may report the pod's deletion before the DELETE answers: it must end the way we say.
        book.ending[instance_id] = dataclasses.replace(
            seen, message=message or "Killed by request", flags=flags, failed=failed, killed=not failed
        )
        try:
            answer = await self.client.delete(path, options)
        except KubernetesError as error:
            book.ending.pop(instance_id, None)
            if error.status == 409:  # the precondition failed: a new pod took the name
                return missing
            return KillResult(KillOutcome.FAILED, f"Could not kill instance {instance_id}: {error}")
        ended = book.ending.pop(instance_id, None)
        if answer is None:
            return missing
        if ended is not None:
            book.end(ended)
        if answer.get("kind") == "Pod":
            self._pods.apply("MODIFIED", answer)
        else:
            self._refresh(service_id)
        if not replace:
            try:
                await self._set_replicas(service_id, lambda current: max(current - 1, 0))
            except SchedulerError as error:
                # The pod is gone either way; the ReplicaSet replaces it until a later scale-down succeeds.
                log.error("Killed %s but could not lower the replicas of %s: %s", instance_id, service_id, error)
        return KillResult(KillOutcome.KILLED, f"Killed instance {instance_id} (Kubernetes pod {parts[0]}).")

    async def delete_service(self, service_id: str) -> bool:
        path = f"{self._replicasets.path}/{replicaset_name(service_id)}"
        # Background propagation: the ReplicaSet goes now, the garbage collector deletes its pods gracefully.
        answer = await self.client.delete(path, {"propagationPolicy": "Background"})
        self._replicasets.drop(service_id)
        known = self._books.pop(service_id, None) is not None
        self._snapshots.pop(service_id, None)
        timer = self._timers.pop(service_id, None)
        if timer is not None:
            timer.cancel()
        if known or answer is not None:
            self._notify(service_id)
        return answer is not None

    def service_ids(self) -> list[str]:
        return list(self._snapshots)

    def service_record(self, service_id: str) -> str | None:
        """The router's record of a service, from its ReplicaSet's annotation (``KeepsRecords``)."""
        rs = self._replicasets.first(service_id)
        return None if rs is None else annotation(rs, RECORD_ANNOTATION)

    def service_state(self, service_id: str) -> ServiceState | None:
        return self._snapshots.get(service_id)

    # -- replicas --

    def _live_pods(self, service_id: str) -> int:
        return sum(1 for pod in self._pods.objects.get(service_id, {}).values() if is_live(pod))

    async def _set_replicas(self, service_id: str, target: Callable[[int], int]) -> None:
        """Set the replicas to ``target(current)``, retrying on 409 Conflict with the ReplicaSet read again."""
        name = replicaset_name(service_id)
        path = f"{self._replicasets.path}/{name}"
        rs = self._replicasets.first(service_id)
        for attempt in range(1, CONFLICT_RETRIES + 1):
            if rs is None:
                rs = await self.client.get(path)
                if rs is None or service_id_of(rs) != service_id:
                    raise SchedulerError(
                        f"Cannot scale service {service_id}: Kubernetes has no ReplicaSet {name} in namespace "
                        f"{self.namespace}."
                    )
            current = int((rs.get("spec") or {}).get("replicas") or 0)
            wanted = int(target(current))
            if wanted == current:
                self._replicasets.apply("MODIFIED", rs)
                return
            patch = {"metadata": {"resourceVersion": metadata(rs).get("resourceVersion")}, "spec": {"replicas": wanted}}
            try:
                updated = await self.client.merge_patch(path, patch)
            except KubernetesError as error:
                if error.status == 409 and attempt < CONFLICT_RETRIES:
                    rs = None
                    continue
                if error.status == 404:
                    gone = f"Cannot scale service {service_id}: its ReplicaSet {name} is gone."
                    raise SchedulerError(gone) from error
                raise
            self._replicasets.apply("MODIFIED", updated)
            return

    # -- snapshots --

    def _refresh(self, service_id: str) -> None:
        """Recompute one service's snapshot from its ReplicaSet and pods; listeners hear of it if it changed."""
        rs = self._replicasets.first(service_id)
        if rs is None:
            self._books.pop(service_id, None)
            if self._snapshots.pop(service_id, None) is not None:
                self._notify(service_id)
            return
        book = self._books.setdefault(service_id, _Book())
        pods = self._pods.objects.get(service_id, {})
        for pod in pods.values():
            for failure in pod_failures(service_id, pod):
                book.end(failure)
        active: dict[str, Instance] = {}
        for name in pods:
            book.seen.setdefault(name, next(self._sequence))
        for name in [n for n in book.seen if n not in pods]:
            del book.seen[name]
        live = sorted(
            (pod for pod in pods.values() if is_live(pod)),
            key=lambda pod: (*removal_rank(pod), -book.seen[name_of(pod)]),
        )
        replicas = int((rs.get("spec") or {}).get("replicas") or 0)
        # Pods beyond the replicas are the controller's to delete (e.g. the replacement it made while a kill
        # deleted a pod and lowered the replicas): they are no instances.
        for pod in live[max(len(live) - replicas, 0) :]:
            if (pod.get("status") or {}).get("podIP"):
                instance = pod_instance(service_id, pod)
                if instance.id not in book.recorded:
                    active[instance.id] = instance
        for gone_id, seen in book.active.items():
            if gone_id not in active and gone_id not in book.recorded:
                pod_name = (split_instance_id(service_id, gone_id) or ("?", 0))[0]
                message = f"Pod {pod_name} was deleted outside this router"
                outside = dataclasses.replace(seen, message=message, killed=True)
                book.end(book.ending.pop(gone_id, outside))
        book.active = active
        snapshot = ServiceState(
            service_id=service_id,
            requested=replicas,
            active=tuple(sorted(active.values(), key=lambda i: (i.started_at, i.id))),
            failed=tuple(book.failed),
            killed=tuple(book.killed),
            error=self._error(service_id, rs, pods, book),
        )
        if snapshot != self._snapshots.get(service_id):
            self._snapshots[service_id] = snapshot
            self._notify(service_id)

    def _error(self, service_id: str, rs: Mapping[str, Any], pods: Mapping[str, JSON], book: _Book) -> str | None:
        now = time.monotonic()
        problems: list[PodProblem] = []
        running = 0
        waited: float | None = None
        for name, pod in pods.items():
            if not is_live(pod):
                continue
            problem = pod_problem(pod)
            if problem is None:
                book.unschedulable_since.pop(name, None)
                running += 1 if (pod.get("status") or {}).get("phase") == "Running" else 0
                continue
            problems.append(problem)
            if problem.kind == "unschedulable":
                since = book.unschedulable_since.setdefault(name, now)
                if now - since >= self.config.offer_wait_secs:
                    waited = self.config.offer_wait_secs
                else:
                    self._refresh_later(service_id, since + self.config.offer_wait_secs - now)
        for name in [n for n in book.unschedulable_since if n not in pods]:
            del book.unschedulable_since[name]
        containers = ((rs.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or [{}]
        requests = (containers[0].get("resources") or {}).get("requests") or {}
        need = (_quantity(requests.get("cpu")), _quantity(requests.get("memory"), mebi=True))
        image = str(containers[0].get("image") or "")
        return deployment_error(problems, running, image, need, waited)

    def _refresh_later(self, service_id: str, delay: float) -> None:
        if service_id in self._timers:
            return

        def fire() -> None:
            self._timers.pop(service_id, None)
            self._refresh(service_id)

        with contextlib.suppress(RuntimeError):
            self._timers[service_id] = asyncio.get_running_loop().call_later(max(delay, 0.0) + 0.01, fire)

    def _notify(self, service_id: str) -> None:
        """Tell listeners from a fresh loop iteration, never from inside our own bookkeeping."""
        loop = asyncio.get_running_loop()
        for listener in self._listeners:
            loop.call_soon(listener, service_id)


def _quantity(value: Any, *, mebi: bool = False) -> float:
    """A Kubernetes quantity ("100m", "0.5", "128Mi", "1Gi") as cpus, or as MiB with ``mebi``."""
    text = str(value or "0")
    units = {"m": 0.001, "Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0, "Ti": 1024.0 * 1024} if mebi else {"m": 0.001}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            try:
                return float(text[: -len(suffix)]) * factor
            except ValueError:
                return 0.0
    try:
        return float(text) / (1024 * 1024 if mebi else 1)
    except ValueError:
        return 0.0


__all__ = ["KubernetesScheduler"]
