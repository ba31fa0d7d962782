"""The emulated Kubernetes cluster: an object store with resource versions and watches, the controllers that act
on it (ReplicaSet controller, garbage collector, scheduler) and one node's kubelet running pods as real processes.

Store: every write bumps one cluster-wide ``resourceVersion`` (an integer, as etcd's revision) and records the
event; a watch from version ``v`` replays what followed ``v`` and then streams live events, unless ``v`` is older
than the oldest recorded event (or than a compaction the tests asked for): then it gets ``410 Expired``.

Controllers run after every change and on a short tick, as the real ones react to watch events: the ReplicaSet
controller keeps ``spec.replicas`` live pods (deleting the lowest-ranked ones first, as
``ActivePodsWithRanks`` ranks them), the garbage collector deletes pods whose ReplicaSet is gone, the scheduler
binds pending pods to the node when their requests fit what is left of it, and the kubelet pulls (or fails to
pull) images, starts containers as ``command`` in a new session, restarts them with CrashLoopBackOff's doubling
delay, kills them on their memory limit (OOMKilled) and deletes pods gracefully (SIGTERM, SIGKILL after
``gracePeriodSeconds``).

Simplifications, documented in ``docs/kubernetes-api.md``: one node; pods share this machine's network, each
with its own loopback address as pod IP (a container must listen on ``$POD_IP`` / ``$HOST``, not 0.0.0.0); an
``emptyDir`` volume is a directory, and a container's ``workingDir`` is that directory when it is the volume's
mount path; probes are not run (a running container is ready).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import itertools
import logging
import os
import random
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger("kubernetes-emulator")

JSON = dict[str, Any]
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "PYENV_ROOT", "VIRTUAL_ENV")
NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # what the API server's generateName draws from
HISTORY = 10_000  # events kept for watches; older versions answer 410


def now_iso(epoch: float | None = None) -> str:
    """Kubernetes' timestamps: RFC 3339 in UTC, whole seconds."""
    return datetime.fromtimestamp(time.time() if epoch is None else epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def quantity(value: Any, *, memory: bool = False) -> float:
    """A quantity as cores, or with ``memory`` as bytes ("100m", "0.5", "64Mi", "1G")."""
    text = str(value)
    suffixes = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "k": 1000, "M": 1000**2, "G": 1000**3}
    if text.endswith("m"):
        return float(text[:-1]) / 1000
    for suffix, factor in suffixes.items():
        if memory and text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


class Gone(Exception):
    """The resourceVersion a watch asked for is older than what the store still has."""

    def __init__(self, asked: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {asked} ({oldest})")


@dataclass(eq=False)
class Watcher:
    resource: str
    namespace: str | None
    matches: Callable[[JSON], bool]
    queue: asyncio.Queue[JSON | None] = field(default_factory=asyncio.Queue)

    def wants(self, resource: str, obj: JSON) -> bool:
        ns = obj["metadata"].get("namespace")
        return resource == self.resource and self.namespace in (None, ns) and self.matches(obj)


class Store:
    def __init__(self) -> None:
        self.version = 1
        self.objects: dict[tuple[str, str, str], JSON] = {}
        self.history: collections.deque[tuple[int, str, str, JSON]] = collections.deque(maxlen=HISTORY)
        self.oldest = 1  # watches from a version below this are gone
        self.watchers: set[Watcher] = set()

    def get(self, resource: str, namespace: str, name: str) -> JSON | None:
        return self.objects.get((resource, namespace, name))

    def items(self, resource: str) -> list[JSON]:
        return [obj for (kind, _, _), obj in self.objects.items() if kind == resource]

    def write(self, resource: str, obj: JSON, event: str) -> JSON:
        """Store (ADDED, MODIFIED) or remove (DELETED) ``obj`` under a new resourceVersion; tell the watchers."""
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        key = (resource, obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        if event == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        snapshot = copy.deepcopy(obj)
        if len(self.history) == self.history.maxlen:
            self.oldest = self.history[0][0]
        self.history.append((self.version, resource, event, snapshot))
        for watcher in list(self.watchers):
            if watcher.wants(resource, snapshot):
                watcher.queue.put_nowait({"type": event, "object": snapshot})
        return snapshot

    def watch(self, watcher: Watcher, since: int | None) -> list[JSON]:
        """Register the watcher; the events it must replay first (every object as ADDED without a version)."""
        if since is None or since == 0:
            replay = [{"type": "ADDED", "object": copy.deepcopy(o)} for o in self.items(watcher.resource)]
        else:
            if since < self.oldest:
                raise Gone(since, self.oldest)
            replay = [
                {"type": event, "object": obj}
                for version, resource, event, obj in self.history
                if version > since and watcher.wants(resource, obj)
            ]
        self.watchers.add(watcher)
        return [e for e in replay if watcher.wants(watcher.resource, e["object"])]

    def compact(self) -> None:
        """Every version before now is gone: a watch from one of them gets 410 (open watches go on)."""
        self.oldest = self.version

    def expire(self) -> int:
        """Compact, and end every open watch with 410. Returns how many there were."""
        self.compact()
        dropped = len(self.watchers)
        for watcher in list(self.watchers):
            status = gone_status(Gone(0, self.oldest))
            watcher.queue.put_nowait({"type": "ERROR", "object": status})
            watcher.queue.put_nowait(None)
        self.watchers.clear()
        return dropped


def status_object(code: int, reason: str, message: str, details: JSON | None = None) -> JSON:
    """Kubernetes' ``Status`` for a failure, as the API server writes it."""
    body: JSON = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        body["details"] = details
    return body


def gone_status(error: Gone) -> JSON:
    return status_object(410, "Expired", str(error))


@dataclass(frozen=True)
class ClusterConfig:
    work_dir: Path
    node_name: str = "emulated-node-1"
    node_cpus: float = 64.0
    node_memory_mb: float = 256 * 1024.0
    crash_backoff_secs: float = 10.0  # CrashLoopBackOff's first delay; doubles, capped at 30 times it (10 s -> 5 min)
    tick_secs: float = 0.05
    memory_check_secs: float = 0.25
    pod_ip_octet: int = field(default_factory=lambda: random.randrange(16, 250))  # pod IPs are 127.<octet>.x.y


@dataclass
class Container:
    """The kubelet's view of a pod's one container."""

    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    crashes: int = 0  # consecutive, for the back-off
    restart_after: float = 0.0  # monotonic
    oom: bool = False
    job: asyncio.Task[None] | None = None


class Cluster:
    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.store = Store()
        self.missing_images: set[str] = set()
        self._containers: dict[str, Container] = {}  # pod uid -> container
        self._created: dict[str, int] = {}  # pod uid -> creation order: "newer" beyond whole-second timestamps
        self._sequence = itertools.count()
        # A random start: emulators running side by side on this machine rarely hand out the same pod IP.
        self._ips = itertools.count(random.randrange(1, 60000))
        self._kick = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._memory: asyncio.Task[None] | None = None
        self._stopping = False

    # -- lifecycle --

    async def start(self) -> None:
        self.config.work_dir.mkdir(parents=True, exist_ok=True)
        self._loop = asyncio.create_task(self._tick_loop())
        self._memory = asyncio.create_task(self._memory_loop())

    async def close(self) -> None:
        """Kill every container's process group and wait for them: no orphan outlives the emulator."""
        self._stopping = True
        for task in (self._loop, self._memory):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        for container in self._containers.values():
            _signal(container, signal.SIGKILL)
        jobs = [c.job for c in self._containers.values() if c.job is not None]
        await asyncio.gather(*jobs, return_exceptions=True)
        for watcher in list(self.store.watchers):
            watcher.queue.put_nowait(None)

    def kick(self) -> None:
        self._kick.set()

    # -- API-level changes (validated by the HTTP layer) --

    def create(self, resource: str, obj: JSON) -> JSON:
        meta = obj["metadata"]
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_iso())
        if resource == "replicasets":
            meta["generation"] = 1
            obj["status"] = {"replicas": 0, "observedGeneration": 0}
        created = self.store.write(resource, obj, "ADDED")
        self.kick()
        return created

    def update(self, resource: str, obj: JSON) -> JSON:
        written = self.store.write(resource, obj, "MODIFIED")
        self.kick()
        return written

    def delete_pod(self, pod: JSON, grace: int | None) -> JSON:
        """Graceful deletion: mark the pod, SIGTERM its container, remove it once it stopped (or at once)."""
        meta = pod["metadata"]
        if grace is None:
            grace = int(pod["spec"].get("terminationGracePeriodSeconds", 30))
        container = self._containers.get(meta["uid"])
        if grace == 0 or container is None or container.process is None or container.process.returncode is not None:
            if container is not None:
                _signal(container, signal.SIGKILL)
            return self._remove_pod(pod)
        if meta.get("deletionTimestamp") and grace >= int(meta.get("deletionGracePeriodSeconds", 0)):
            return copy.deepcopy(pod)
        meta["deletionTimestamp"] = now_iso(time.time() + grace)
        meta["deletionGracePeriodSeconds"] = grace
        _signal(container, signal.SIGTERM)
        asyncio.get_running_loop().call_later(grace, _signal, container, signal.SIGKILL)
        return self.update("pods", pod)

    def delete_replicaset(self, rs: JSON) -> JSON:
        """Background propagation: the ReplicaSet goes now; the garbage collector deletes its pods."""
        deleted = self.store.write("replicasets", rs, "DELETED")
        self.kick()
        return deleted

    def evict(self, pod: JSON) -> JSON:
        """The node ran out of memory: the kubelet kills the pod's container and fails the pod for good."""
        container = self._containers.get(pod["metadata"]["uid"])
        if container is not None:
            container.crashes = -1  # never restarted
            _signal(container, signal.SIGKILL)
        status = pod["status"]
        status.update(
            phase="Failed",
            reason="Evicted",
            message="The node was low on resource: memory. Threshold quantity: 100Mi, available: 12Mi.",
        )
        main = status.get("containerStatuses", [{}])[0]
        if main:
            main.update(ready=False, started=False, state={"terminated": self._terminated(137, "Error", container)})
        _set_condition(pod, "Ready", "False")
        return self.update("pods", pod)

    def kill_container(self, pod: JSON, signum: int) -> bool:
        container = self._containers.get(pod["metadata"]["uid"])
        if container is None or container.process is None or container.process.returncode is not None:
            return False
        _signal(container, signum)
        return True

    def expire_watches(self) -> int:
        return self.store.expire()

    def processes(self) -> list[JSON]:
        pods = {p["metadata"]["uid"]: p for p in self.store.items("pods")}
        return [
            {
                "namespace": pods[uid]["metadata"]["namespace"] if uid in pods else None,
                "name": pods[uid]["metadata"]["name"] if uid in pods else None,
                "uid": uid,
                "pid": c.process.pid if c.process and c.process.returncode is None else None,
                "sandbox": str(self._pod_dir(uid)),
            }
            for uid, c in self._containers.items()
        ]

    # -- reconciling --

    async def _tick_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.tick_secs):
                    await self._kick.wait()
            self._kick.clear()
            try:
                self.reconcile()
            except Exception:  # a bug in one pass must not stop the cluster
                log.exception("reconcile failed")

    def reconcile(self) -> None:
        self._replicaset_controller()
        self._garbage_collector()
        self._scheduler()
        self._kubelet()

    def _owned(self, rs: JSON) -> list[JSON]:
        uid = rs["metadata"]["uid"]
        return [
            p
            for p in self.store.items("pods")
            if any(ref.get("uid") == uid for ref in p["metadata"].get("ownerReferences") or ())
        ]

    def _replicaset_controller(self) -> None:
        for rs in self.store.items("replicasets"):
            pods = self._owned(rs)
            active = [p for p in pods if _active(p)]
            wanted = int(rs["spec"].get("replicas", 1))
            if len(active) < wanted:
                for _ in range(wanted - len(active)):
                    active.append(self._create_pod(rs))
            elif len(active) > wanted:
                ranked = sorted(active, key=lambda p: (*_rank(p), -self._created.get(p["metadata"]["uid"], 0)))
                for victim in ranked[: len(active) - wanted]:
                    log.info("ReplicaSet %s: deleting pod %s", rs["metadata"]["name"], victim["metadata"]["name"])
                    self.delete_pod(victim, None)
                    active.remove(victim)
            ready = sum(1 for p in active if _condition(p, "Ready") == "True")
            status = {
                "replicas": len(active),
                "fullyLabeledReplicas": len(active),
                "readyReplicas": ready,
                "availableReplicas": ready,
                "observedGeneration": rs["metadata"].get("generation", 1),
            }
            if rs.get("status") != status:
                rs["status"] = status
                self.store.write("replicasets", rs, "MODIFIED")

    def _create_pod(self, rs: JSON) -> JSON:
        template = copy.deepcopy(rs["spec"]["template"])
        rs_meta = rs["metadata"]
        suffix = "".join(random.choice(NAME_CHARS) for _ in range(5))
        meta = template.get("metadata") or {}
        meta.update(
            name=f"{rs_meta['name']}-{suffix}",
            generateName=f"{rs_meta['name']}-",
            namespace=rs_meta["namespace"],
            ownerReferences=[
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": rs_meta["name"],
                    "uid": rs_meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        )
        spec = template["spec"]
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("schedulerName", "default-scheduler")
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": spec,
            "status": {"phase": "Pending", "qosClass": "Burstable"},
        }
        created = self.create("pods", pod)
        self._created[created["metadata"]["uid"]] = next(self._sequence)
        return created

    def _garbage_collector(self) -> None:
        owners = {rs["metadata"]["uid"] for rs in self.store.items("replicasets")}
        for pod in self.store.items("pods"):
            refs = pod["metadata"].get("ownerReferences") or ()
            if (
                refs
                and not any(ref.get("uid") in owners for ref in refs)
                and not pod["metadata"].get("deletionTimestamp")
            ):
                self.delete_pod(pod, None)

    def _scheduler(self) -> None:
        bound = [p for p in self.store.items("pods") if p["spec"].get("nodeName") and _active(p)]
        used_cpu = sum(_requests(p)[0] for p in bound)
        used_mem = sum(_requests(p)[1] for p in bound)
        for pod in self.store.items("pods"):
            if pod["spec"].get("nodeName") or pod["metadata"].get("deletionTimestamp"):
                continue
            cpu, mem = _requests(pod)
            short = []
            if used_cpu + cpu > self.config.node_cpus + 1e-9:
                short.append("1 Insufficient cpu")
            if used_mem + mem > self.config.node_memory_mb * 1024**2:
                short.append("1 Insufficient memory")
            if short:
                message = (
                    f"0/1 nodes are available: {', '.join(short)}. preemption: 0/1 nodes are available: "
                    "1 No preemption victims found for incoming pod."
                )
                if _condition(pod, "PodScheduled", "message") != message:
                    _set_condition(pod, "PodScheduled", "False", "Unschedulable", message)
                    self.update("pods", pod)
                continue
            used_cpu, used_mem = used_cpu + cpu, used_mem + mem
            n = next(self._ips)
            ip = f"127.{self.config.pod_ip_octet}.{(n >> 8) & 255}.{n & 255}"
            pod["spec"]["nodeName"] = self.config.node_name
            pod["status"].update(hostIP="127.0.0.1", podIP=ip, podIPs=[{"ip": ip}], startTime=now_iso())
            pod["status"].pop("reason", None)
            pod["status"]["containerStatuses"] = [
                {
                    "name": c["name"],
                    "state": {"waiting": {"reason": "ContainerCreating"}},
                    "lastState": {},
                    "ready": False,
                    "restartCount": 0,
                    "image": c.get("image", ""),
                    "imageID": "",
                    "started": False,
                }
                for c in pod["spec"]["containers"]
            ]
            _set_condition(pod, "PodScheduled", "True")
            for kind in ("Initialized", "Ready", "ContainersReady"):
                _set_condition(pod, kind, "True" if kind == "Initialized" else "False")
            self.update("pods", pod)

    def _kubelet(self) -> None:
        now = time.monotonic()
        for pod in self.store.items("pods"):
            meta = pod["metadata"]
            if (
                not pod["spec"].get("nodeName")
                or meta.get("deletionTimestamp")
                or pod["status"]["phase"]
                in (
                    "Failed",
                    "Succeeded",
                )
            ):
                continue
            container = self._containers.setdefault(meta["uid"], Container())
            running = container.process is not None and container.process.returncode is None
            if running or (container.job is not None and not container.job.done()) or now < container.restart_after:
                continue
            main = pod["spec"]["containers"][0]
            status = pod["status"]["containerStatuses"][0]
            image = str(main.get("image", ""))
            if image in self.missing_images:
                reason = (
                    "ImagePullBackOff"
                    if status["state"].get("waiting", {}).get("reason") in ("ErrImagePull", "ImagePullBackOff")
                    else "ErrImagePull"
                )
                message = (
                    f'Back-off pulling image "{image}"'
                    if reason == "ImagePullBackOff"
                    else f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": not found'
                )
                if status["state"].get("waiting", {}).get("reason") != reason:
                    status["state"] = {"waiting": {"reason": reason, "message": message}}
                    self.update("pods", pod)
                continue
            container.job = asyncio.create_task(self._run(pod, container), name=f"run {meta['name']}")

    # -- containers --

    def _pod_dir(self, uid: str) -> Path:
        return self.config.work_dir / "pods" / uid

    def _environment(self, pod: JSON, main: JSON) -> dict[str, str]:
        fields = {
            "metadata.name": pod["metadata"]["name"],
            "metadata.namespace": pod["metadata"]["namespace"],
            "metadata.uid": pod["metadata"]["uid"],
            "spec.nodeName": pod["spec"].get("nodeName", ""),
            "status.podIP": pod["status"].get("podIP", ""),
            "status.hostIP": pod["status"].get("hostIP", ""),
        }
        env = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
        env["HOSTNAME"] = pod["metadata"]["name"]
        for variable in main.get("env") or ():
            if "value" in variable:
                env[variable["name"]] = str(variable["value"])
            elif "valueFrom" in variable:
                path = ((variable["valueFrom"] or {}).get("fieldRef") or {}).get("fieldPath", "")
                env[variable["name"]] = fields.get(path, "")
        return env

    def _working_dir(self, pod: JSON, main: JSON) -> Path:
        base = self._pod_dir(pod["metadata"]["uid"])
        empty_dirs = {v["name"] for v in pod["spec"].get("volumes") or () if "emptyDir" in v}
        for mount in main.get("volumeMounts") or ():
            if mount.get("name") in empty_dirs and mount.get("mountPath") == main.get("workingDir"):
                return base / "volumes" / mount["name"]
        return base / "root"

    async def _run(self, pod: JSON, container: Container) -> None:
        """Start the container's process, wait for its end, record it and plan the restart."""
        uid, name = pod["metadata"]["uid"], pod["metadata"]["name"]
        main = pod["spec"]["containers"][0]
        cwd = self._working_dir(pod, main)
        cwd.mkdir(parents=True, exist_ok=True)
        status = pod["status"]["containerStatuses"][0]
        logs = self._pod_dir(uid) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        argv = [*(main.get("command") or ()), *(main.get("args") or ())]
        try:
            with open(logs / f"{status['restartCount']}.log", "wb") as output:
                container.process = await asyncio.create_subprocess_exec(
                    *argv,
                    cwd=cwd,
                    env=self._environment(pod, main),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=output,
                    stderr=output,
                    start_new_session=True,
                )
        except OSError as error:
            status["state"] = {"waiting": {"reason": "RunContainerError", "message": str(error)}}
            container.restart_after = time.monotonic() + self.config.crash_backoff_secs
            self.update("pods", pod)
            return
        container.started_at, container.oom = time.time(), False
        status.update(
            state={"running": {"startedAt": now_iso(container.started_at)}},
            ready=True,
            started=True,
            containerID=f"containerd://{uuid.uuid4().hex}",
        )
        pod["status"]["phase"] = "Running"
        _set_condition(pod, "Ready", "True")
        _set_condition(pod, "ContainersReady", "True")
        self.update("pods", pod)
        log.info("pod %s: container started (pid %d)", name, container.process.pid)
        code = await container.process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(container.process.pid, signal.SIGKILL)  # what it left behind in its group goes with it
        self._ended(pod, container, code)

    def _terminated(self, code: int, reason: str, container: Container | None) -> JSON:
        return {
            "exitCode": code,
            "reason": reason,
            "startedAt": now_iso(container.started_at if container else None),
            "finishedAt": now_iso(),
            "containerID": f"containerd://{uuid.uuid4().hex}",
        }

    def _ended(self, pod: JSON, container: Container, returncode: int) -> None:
        code = 128 - returncode if returncode < 0 else returncode  # a signal's exit code as a container runtime has it
        current = self.store.get("pods", pod["metadata"]["namespace"], pod["metadata"]["name"])
        if self._stopping or current is None or current["metadata"]["uid"] != pod["metadata"]["uid"]:
            self._containers.pop(pod["metadata"]["uid"], None)
            return
        pod = current
        if pod["metadata"].get("deletionTimestamp"):
            self._containers.pop(pod["metadata"]["uid"], None)
            self._remove_pod(pod)
            return
        if container.crashes < 0 or pod["status"]["phase"] == "Failed":
            return  # evicted
        reason = "OOMKilled" if container.oom else ("Completed" if code == 0 else "Error")
        terminated = self._terminated(code, reason, container)
        status = pod["status"]["containerStatuses"][0]
        if time.time() - container.started_at > 60 * self.config.crash_backoff_secs:
            container.crashes = 0
        container.crashes += 1
        delay = 0.0 if container.crashes == 1 else self.config.crash_backoff_secs * 2 ** (container.crashes - 2)
        delay = min(delay, 30 * self.config.crash_backoff_secs)
        container.restart_after = time.monotonic() + delay
        status.update(
            lastState={"terminated": terminated}, ready=False, started=False, restartCount=status["restartCount"] + 1
        )
        if delay > 0:
            message = (
                f"back-off {delay:g}s restarting failed container={status['name']} "
                f"pod={pod['metadata']['name']}_{pod['metadata']['namespace']}({pod['metadata']['uid']})"
            )
            status["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
        else:
            status["state"] = {"terminated": terminated}
        _set_condition(pod, "Ready", "False")
        _set_condition(pod, "ContainersReady", "False")
        log.info(
            "pod %s: container ended (%s, exit code %d); restart in %.2f s",
            pod["metadata"]["name"],
            reason,
            code,
            delay,
        )
        self.update("pods", pod)

    def _remove_pod(self, pod: JSON) -> JSON:
        self._containers.pop(pod["metadata"]["uid"], None)
        self._created.pop(pod["metadata"]["uid"], None)
        if self.store.get("pods", pod["metadata"]["namespace"], pod["metadata"]["name"]) is None:
            return copy.deepcopy(pod)
        deleted = self.store.write("pods", pod, "DELETED")
        if not self._stopping:
            self.kick()
        return deleted

    async def _memory_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.memory_check_secs)
            for pod in self.store.items("pods"):
                container = self._containers.get(pod["metadata"]["uid"])
                if container is None or container.process is None or container.process.returncode is not None:
                    continue
                limit = ((pod["spec"]["containers"][0].get("resources") or {}).get("limits") or {}).get("memory")
                if limit is not None and _tree_rss(container.process.pid) > quantity(limit, memory=True):
                    log.info("pod %s: over its memory limit %s, OOMKilled", pod["metadata"]["name"], limit)
                    container.oom = True
                    _signal(container, signal.SIGKILL)


# -- helpers ---------------------------------------------------------------------------------------------------------


def _signal(container: Container, signum: int) -> None:
    if container.process is not None and container.process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(container.process.pid, signum)


def _tree_rss(pid: int) -> int:
    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
    except psutil.Error:
        return 0


def _active(pod: JSON) -> bool:
    """What the ReplicaSet controller counts: not being deleted, not Succeeded or Failed."""
    return not pod["metadata"].get("deletionTimestamp") and pod["status"].get("phase") not in ("Succeeded", "Failed")


def _requests(pod: JSON) -> tuple[float, float]:
    cpu = mem = 0.0
    for container in pod["spec"].get("containers") or ():
        requests = (container.get("resources") or {}).get("requests") or {}
        cpu += quantity(requests.get("cpu", 0))
        mem += quantity(requests.get("memory", 0), memory=True)
    return cpu, mem


def _condition(pod: JSON, kind: str, key: str = "status") -> Any:
    for condition in pod["status"].get("conditions") or ():
        if condition["type"] == kind:
            return condition.get(key)
    return None


def _set_condition(pod: JSON, kind: str, value: str, reason: str | None = None, message: str | None = None) -> None:
    conditions = pod["status"].setdefault("conditions", [])
    condition = next((c for c in conditions if c["type"] == kind), None)
    if condition is None:
        condition = {"type": kind, "lastProbeTime": None}
        conditions.append(condition)
    if condition.get("status") != value:
        condition["lastTransitionTime"] = now_iso()
    condition["status"] = value
    for key, text in (("reason", reason), ("message", message)):
        if text is None:
            condition.pop(key, None)
        else:
            condition[key] = text


def _rank(pod: JSON) -> tuple[Any, ...]:
    """``ActivePodsWithRanks``: pods deleted first sort first (unassigned, pending, not ready, lower
    pod-deletion-cost, ready for less time, more restarts, newer)."""
    status = pod["status"]
    phase_rank = {"Pending": 0, "Unknown": 1, "Running": 2}.get(status.get("phase", ""), 0)
    ready = _condition(pod, "Ready") == "True"
    cost = int((pod["metadata"].get("annotations") or {}).get("controller.kubernetes.io/pod-deletion-cost", 0))
    ready_since = _condition(pod, "Ready", "lastTransitionTime") or "" if ready else ""
    restarts = sum(c.get("restartCount", 0) for c in status.get("containerStatuses") or ())
    return (
        bool(pod["spec"].get("nodeName")),
        phase_rank,
        ready,
        cost,
        _negate(ready_since),
        -restarts,
        _negate(pod["metadata"].get("creationTimestamp", "")),
    )


def _negate(timestamp: str) -> tuple[int, ...]:
    """Sort later timestamps first (ready for less time, newer)."""
    return tuple(-ord(c) for c in timestamp)


__all__ = [
    "Cluster",
    "ClusterConfig",
    "Gone",
    "Store",
    "Watcher",
    "gone_status",
    "now_iso",
    "quantity",
    "status_object",
]
