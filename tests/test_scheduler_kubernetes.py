"""The Kubernetes scheduler: against the Kubernetes emulator (watches dropped with 410, API failures, kills,
crash loops, image pulls, OOM kills, evictions, unschedulable pods), plus table tests of its pure parts."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from tests.emulators.runner import running_emulator
from tests.support import Changes, eventually
from waiter.scheduler.base import Instance, InstanceFlag, KillOutcome, SchedulerError, ServiceSpec
from waiter.scheduler.kubernetes import KubernetesScheduler
from waiter.scheduler.kubernetes_auth import connection, from_kubeconfig
from waiter.scheduler.kubernetes_client import Credentials, KubernetesClient, KubernetesError
from waiter.scheduler.kubernetes_objects import (
    PodProblem,
    PodTemplate,
    deployment_error,
    pod_failures,
    pod_instance,
    replicaset,
    replicaset_name,
    split_instance_id,
)
from waiter.settings import KubernetesSchedulerConfig, SettingsError, load_settings

SID = "waiter-service-kube-1"
NS = "waiter"
SERVER = f'exec {sys.executable} -m http.server "$PORT0" --bind "$POD_IP"'
HOG = f"exec {sys.executable} -c 'b = bytes(300 << 20).replace(bytes(1), bytes([1])); import time; time.sleep(60)'"
RS_PATH = f"/apis/apps/v1/namespaces/{NS}/replicasets"
PODS_PATH = f"/api/v1/namespaces/{NS}/pods"


def make_spec(cmd: str = SERVER, **overrides: Any) -> ServiceSpec:
    values: dict[str, Any] = {"service_id": SID, "cpus": 0.1, "mem": 64.0, "run_as_user": "alice", **overrides}
    return ServiceSpec(cmd=cmd, **values)


class Emulator:
    """One Kubernetes emulator run as a child process, with its API and its emulator-only controls."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url, self.session = url, session

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        async with self.session.request(method, self.url + path, json=body) as resp:
            assert resp.status < 300, await resp.text()
            return await resp.json(content_type=None)

    async def pods(self) -> list[dict[str, Any]]:
        return list((await self.call("GET", PODS_PATH))["items"])

    async def replicas(self) -> int:
        return int((await self.call("GET", f"{RS_PATH}/{replicaset_name(SID)}"))["spec"]["replicas"])

    def scheduler(self, **config: Any) -> KubernetesScheduler:
        values: dict[str, Any] = {
            "api_url": self.url,
            "namespace": NS,
            "retry_attempts": 3,
            "retry_backoff_ms": 20,
            "request_timeout_ms": 5000,
            **config,
        }
        return KubernetesScheduler(KubernetesSchedulerConfig(**values), cluster_name="test", environ={})


MakeEmulator = Callable[..., Awaitable[Emulator]]
Start = Callable[..., Awaitable[KubernetesScheduler]]


@pytest.fixture
async def make_emulator(tmp_path: Path) -> AsyncIterator[MakeEmulator]:
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())

        async def make(*args: str) -> Emulator:
            options = ("--work-dir", str(tmp_path / "cluster"), "--crash-backoff-secs", "0.1", *args)
            url = await stack.enter_async_context(running_emulator("kubernetes", *options))
            return Emulator(url, session)

        yield make


@pytest.fixture
async def started() -> AsyncIterator[Start]:
    schedulers: list[KubernetesScheduler] = []

    async def start(emulator: Emulator, **config: Any) -> KubernetesScheduler:
        scheduler = emulator.scheduler(**config)
        await scheduler.start()
        schedulers.append(scheduler)
        return scheduler

    yield start
    for scheduler in schedulers:
        await scheduler.close()


def active(scheduler: KubernetesScheduler) -> tuple[Instance, ...]:
    state = scheduler.service_state(SID)
    return state.active if state else ()


def alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


async def pids(emulator: Emulator) -> dict[str, int]:
    """Pod name -> its container's process id, for pods whose container runs."""
    listed = (await emulator.call("GET", "/emulator/pods"))["pods"]
    return {p["name"]: p["pid"] for p in listed if p["pid"] is not None and p["name"]}


# -- against the emulator ------------------------------------------------------------------------------------------


async def test_watch_dropped_with_410_is_recovered_without_losing_an_instance(
    make_emulator: MakeEmulator, started: Start
) -> None:
    emulator = await make_emulator()
    scheduler = await started(emulator)
    seen: list[int] = []
    scheduler.subscribe(lambda _: seen.append(len(active(scheduler))))
    changes = Changes(scheduler)
    await scheduler.create_service(make_spec(), 2)
    await changes.until(lambda: len(active(scheduler)) == 2)
    before = {i.id for i in active(scheduler)}
    seen.clear()

    # The re-list after the 410 is slow, and a container dies while the router has no watch: the list must show it.
    await emulator.call("POST", "/emulator/faults", {"delay-ms": 500, "method": "GET", "path": PODS_PATH, "count": 1})
    assert (await emulator.call("POST", "/emulator/watches/expire"))["expired"] == 2
    victim = next(iter(await pids(emulator)))
    await emulator.call("POST", f"/emulator/pods/{NS}/{victim}/kill", {"signal": "KILL"})
    await changes.until(lambda: any(i.id.startswith(f"{SID}.{victim}-") for i in scheduler.service_state(SID).failed))

    # Watches work again: an instance started now shows up.
    await scheduler.scale_service(SID, 3)
    await changes.until(lambda: len(active(scheduler)) == 3)
    assert min(seen) >= 1 and seen.count(0) == 0  # a restarted container is gone for a moment, the others never
    survivors = {i.id for i in active(scheduler)}
    assert len(before & survivors) == 1  # the one whose container kept running kept its id
    assert any(i.id == f"{SID}.{victim}-1" for i in active(scheduler))  # the victim's next incarnation


async def test_bookmarks_keep_a_quiet_watch_resumable_after_compaction(
    make_emulator: MakeEmulator, started: Start
) -> None:
    """The router's watches see nothing of another cluster's writes, but bookmarks move their version on: when a
    watch ends and resumes after a compaction, it resumes where the bookmarks said, without a 410 and a re-list."""
    emulator = await make_emulator("--bookmark-secs", "0.1")
    await started(emulator, watch_timeout_secs=1)
    other = replicaset(make_spec(service_id="waiter-service-other"), 0, PodTemplate(NS, "another-cluster", "img"))
    await emulator.call("POST", RS_PATH, other)
    for n in range(5):  # writes the router's selector does not see
        patch = {"metadata": {"annotations": {"n": str(n)}}}
        async with emulator.session.patch(
            f"{emulator.url}{RS_PATH}/waiter-service-other",
            json=patch,
            headers={"Content-Type": "application/merge-patch+json"},
        ) as resp:
            assert resp.status == 200, await resp.text()

    async def watches_after(count: int) -> bool:
        return int((await emulator.call("GET", "/emulator/stats"))["watches"]) >= count + 2

    before = await emulator.call("GET", "/emulator/stats")
    await eventually(lambda: watches_after(before["watches"]), "both watches to end and resume", timeout=10)
    await emulator.call("POST", "/emulator/compact")
    compacted = await emulator.call("GET", "/emulator/stats")
    await eventually(lambda: watches_after(compacted["watches"]), "both watches to resume again", timeout=10)
    after = await emulator.call("GET", "/emulator/stats")
    assert (after["expired"], after["lists"]) == (0, before["lists"])


async def test_watch_reconnects_with_backoff_after_api_failures(make_emulator: MakeEmulator, started: Start) -> None:
    emulator = await make_emulator()
    scheduler = await started(emulator)
    changes = Changes(scheduler)
    await scheduler.create_service(make_spec(), 1)
    await changes.until(lambda: len(active(scheduler)) == 1)

    await emulator.call("POST", "/emulator/faults", {"status": 500, "method": "GET", "path": "/api", "count": 4})
    await emulator.call("POST", "/emulator/watches/expire")
    await scheduler.scale_service(SID, 2)
    await changes.until(lambda: len(active(scheduler)) == 2)
    assert (await emulator.call("GET", "/emulator/pods"))["pods"]


async def test_kill_deletes_the_chosen_pod_and_lowers_replicas(make_emulator: MakeEmulator, started: Start) -> None:
    emulator = await make_emulator()
    scheduler = await started(emulator)
    changes = Changes(scheduler)
    await scheduler.create_service(make_spec(), 3)
    await changes.until(lambda: len(active(scheduler)) == 3)
    await eventually(lambda: _count(pids(emulator), 3), "three running containers")
    running = await pids(emulator)
    oldest = active(scheduler)[0]  # the pod the ReplicaSet controller would delete last
    pod = split_instance_id(SID, oldest.id)
    assert pod is not None

    result = await scheduler.kill_instance(SID, oldest.id, message="idle")
    assert result.outcome is KillOutcome.KILLED, result.message
    assert await emulator.replicas() == 2
    assert oldest.id not in {i.id for i in active(scheduler)} and len(active(scheduler)) == 2

    async def settled() -> bool:
        names = {p["metadata"]["name"] for p in await emulator.pods()}
        return names == set(running) - {pod[0]}

    await eventually(settled, "the ReplicaSet to keep exactly the two other pods")
    await eventually(lambda: not alive(running[pod[0]]), "the killed container to exit")
    assert all(alive(running[name]) for name in running if name != pod[0])
    assert (await scheduler.kill_instance(SID, oldest.id)).outcome is KillOutcome.ALREADY_KILLED


async def test_kills_terminate_gracefully_unless_forced(
    make_emulator: MakeEmulator, started: Start, tmp_path: Path
) -> None:
    emulator = await make_emulator()
    scheduler = await started(emulator)
    changes = Changes(scheduler)
    cmd = (
        f'echo $$ > "{tmp_path}/$WAITER_INSTANCE_ID.pid"; '
        f"trap 'echo term > \"{tmp_path}/$WAITER_INSTANCE_ID.term\"; exit 0' TERM; "
        "while :; do sleep 0.05; done"
    )
    await scheduler.create_service(make_spec(cmd, termination_grace_period_secs=30), 2)
    await changes.until(lambda: len(active(scheduler)) == 2)
    gentle, forced = active(scheduler)
    for instance in (gentle, forced):
        await eventually(lambda i=instance: (tmp_path / f"{i.id}.pid").exists(), "the pid file")  # type: ignore[misc]
    pids = {i.id: int((tmp_path / f"{i.id}.pid").read_text()) for i in (gentle, forced)}

    assert (await scheduler.kill_instance(SID, gentle.id)).success
    await eventually(lambda: (tmp_path / f"{gentle.id}.term").exists(), "SIGTERM, within the 30 s grace")
    assert (await scheduler.kill_instance(SID, forced.id, force=True)).success
    await eventually(lambda: not alive(pids[forced.id]), "the forced kill")
    assert not (tmp_path / f"{forced.id}.term").exists()  # SIGKILL: no chance to trap anything


async def _count(pending: Awaitable[dict[str, int]], n: int) -> bool:
    return len(await pending) == n


@pytest.mark.parametrize(
    ("spec", "args", "config", "expected"),
    [
        pytest.param(
            {"cmd": "exit 3"},
            (),
            {},
            "Invalid startup command (every instance exited with code 3)",
            id="CrashLoopBackOff",
        ),
        pytest.param(
            {"cmd": HOG, "mem": 48.0},
            (),
            {},
            "Not enough memory allocated",
            id="OOMKilled",
        ),
        pytest.param(
            {"image": "registry.example/missing:1"},
            ("--missing-image", "registry.example/missing:1"),
            {},
            "Unable to pull the container image registry.example/missing:1: ",
            id="ImagePullBackOff",
        ),
        pytest.param(
            {"cpus": 100.0},
            (),
            {"offer_wait_secs": 0.3},
            "No Kubernetes node could place an instance needing 100 cpus and 64 MiB within 0.3 seconds: "
            "0/1 nodes are available: 1 Insufficient cpu.",
            id="unschedulable",
        ),
    ],
)
async def test_pods_that_cannot_run_become_a_deployment_error(
    make_emulator: MakeEmulator,
    started: Start,
    spec: dict[str, Any],
    args: tuple[str, ...],
    config: dict[str, Any],
    expected: str,
) -> None:
    emulator = await make_emulator(*args)
    scheduler = await started(emulator, **config)
    changes = Changes(scheduler)
    await scheduler.create_service(make_spec(**spec), 1)
    await changes.until(lambda: (scheduler.service_state(SID).error or "").startswith(expected), timeout=20)
    if "mem" in spec:
        failed = scheduler.service_state(SID).failed
        assert failed and InstanceFlag.MEMORY_LIMIT_EXCEEDED.value in failed[0].flags
        assert failed[0].exit_code == 137


async def test_evicted_pod_is_a_failed_instance_and_is_replaced(make_emulator: MakeEmulator, started: Start) -> None:
    emulator = await make_emulator()
    scheduler = await started(emulator)
    changes = Changes(scheduler)
    await scheduler.create_service(make_spec(), 1)
    await changes.until(lambda: len(active(scheduler)) == 1)
    (victim,) = active(scheduler)
    pod = split_instance_id(SID, victim.id)
    assert pod is not None

    await emulator.call("POST", f"/emulator/pods/{NS}/{pod[0]}/evict")
    await changes.until(lambda: any(i.id == victim.id for i in scheduler.service_state(SID).failed))
    failed = next(i for i in scheduler.service_state(SID).failed if i.id == victim.id)
    assert failed.message is not None and failed.message.startswith("Evicted: The node was low on resource: memory")
    await changes.until(lambda: len(active(scheduler)) == 1 and active(scheduler)[0].id != victim.id)
    assert scheduler.service_state(SID).requested == 1


async def test_api_errors_are_status_objects_naming_the_field(make_emulator: MakeEmulator) -> None:
    emulator = await make_emulator()
    client = KubernetesClient(Credentials(api_url=emulator.url))
    try:
        body = replicaset(make_spec(), -1, PodTemplate(namespace=NS, cluster_name="test", image="img"))
        with pytest.raises(KubernetesError) as invalid:
            await client.create(RS_PATH, body)
        assert (invalid.value.status, invalid.value.reason) == (422, "Invalid")
        assert "spec.replicas: Invalid value: -1: must be greater than or equal to 0" in str(invalid.value)
        assert (await emulator.call("GET", RS_PATH))["items"] == []  # nothing was created

        body["spec"]["replicas"] = 1
        created = await client.create(RS_PATH, body)
        assert created is not None and await client.create(RS_PATH, body) is None  # 409 AlreadyExists
        stale = {"metadata": {"resourceVersion": "1"}, "spec": {"replicas": 5}}
        with pytest.raises(KubernetesError) as conflict:
            await client.merge_patch(f"{RS_PATH}/{replicaset_name(SID)}", stale)
        assert (conflict.value.status, conflict.value.reason) == (409, "Conflict")
        assert await emulator.replicas() == 1

        await emulator.call("POST", "/emulator/faults", {"status": 500, "count": 2, "method": "GET"})
        assert await client.get(f"{RS_PATH}/{replicaset_name(SID)}") is not None  # retried past two 500s
    finally:
        await client.close()


async def test_scale_and_kill_of_unknown_services(make_emulator: MakeEmulator, started: Start) -> None:
    emulator = await make_emulator()
    scheduler = await started(emulator)
    with pytest.raises(SchedulerError, match="Kubernetes has no ReplicaSet waiter-service-missing in namespace waiter"):
        await scheduler.scale_service("waiter-service-missing", 1)
    result = await scheduler.kill_instance("waiter-service-missing", "waiter-service-missing.p-0")
    assert result.outcome is KillOutcome.NO_SUCH_INSTANCE
    with pytest.raises(SchedulerError, match="service-id 'Bad_Id' cannot name a Kubernetes ReplicaSet"):
        await scheduler.create_service(make_spec(service_id="Bad_Id"), 1)
    assert scheduler.service_ids() == [] and (await emulator.call("GET", RS_PATH))["items"] == []


async def test_bearer_token_from_a_file_is_sent_and_reread(make_emulator: MakeEmulator, tmp_path: Path) -> None:
    emulator = await make_emulator("--token", "s3cret")
    token = tmp_path / "token"
    token.write_text("wrong\n")
    client = KubernetesClient(Credentials(api_url=emulator.url, token_file=token))
    try:
        with pytest.raises(KubernetesError) as refused:
            await client.list(PODS_PATH, "")
        assert (refused.value.status, refused.value.reason) == (401, "Unauthorized")
        token.write_text("s3cret\n")
        items, version = await client.list(PODS_PATH, "")
        assert items == [] and int(version) > 0
    finally:
        await client.close()


# -- pure parts ----------------------------------------------------------------------------------------------------


def test_replicaset_carries_the_service_and_the_cluster() -> None:
    spec = make_spec(ports=2, termination_grace_period_secs=7, env={"GREETING": "hi"}, image="my/image:2")
    rs = replicaset(spec, 2, PodTemplate(namespace="ns", cluster_name="prod", image="default:1", base_port=31000))
    meta, template = rs["metadata"], rs["spec"]["template"]
    assert (meta["name"], meta["namespace"], rs["spec"]["replicas"]) == (SID, "ns", 2)
    assert meta["annotations"]["waiter/service-id"] == template["metadata"]["annotations"]["waiter/service-id"] == SID
    assert meta["labels"]["waiter/cluster"] == template["metadata"]["labels"]["waiter/cluster"] == "prod"
    assert rs["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    container = template["spec"]["containers"][0]
    assert container["image"] == "my/image:2" and container["command"][:2] == ["/bin/sh", "-c"]
    assert container["command"][2].endswith(SERVER)
    env = {v["name"]: v.get("value", v.get("valueFrom")) for v in container["env"]}
    port0 = container["ports"][0]["containerPort"]
    assert 31000 <= port0 < 32000 and container["ports"][1]["containerPort"] == port0 + 1
    assert (env["PORT0"], env["PORT1"], env["GREETING"], env["WAITER_CLUSTER"]) == (
        str(port0),
        str(port0 + 1),
        "hi",
        "prod",
    )
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert container["resources"] == {"limits": {"memory": "64Mi"}, "requests": {"cpu": "0.1", "memory": "64Mi"}}
    assert template["spec"]["terminationGracePeriodSeconds"] == 7


def test_long_service_ids_get_short_distinct_names() -> None:
    first, second = "waiter-service-" + "a" * 60 + "-1", "waiter-service-" + "a" * 60 + "-2"
    names = {replicaset_name(first), replicaset_name(second)}
    assert len(names) == 2 and all(len(n) <= 57 and n[-1].isalnum() for n in names)
    assert replicaset_name(SID) == SID


def _pod(restarts: int = 0, last: dict[str, Any] | None = None, **status: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "waiter-app", "restartCount": restarts, "state": {"running": {}}}
    if last is not None:
        container["lastState"] = {"terminated": last}
    return {
        "metadata": {
            "name": "rs-abcde",
            "namespace": NS,
            "annotations": {"waiter/service-id": SID},
            "creationTimestamp": "2024-05-01T10:00:00Z",
        },
        "spec": {"containers": [{"name": "waiter-app", "ports": [{"containerPort": 31000}]}]},
        "status": {"phase": "Running", "podIP": "10.0.0.1", "containerStatuses": [container], **status},
    }


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        (_pod(), []),
        (
            _pod(2, {"exitCode": 3, "reason": "Error", "startedAt": "2024-05-01T10:00:05Z"}),
            [(f"{SID}.rs-abcde-1", 3, frozenset(), "Container error: exited with code 3")],
        ),
        (
            _pod(1, {"exitCode": 137, "reason": "OOMKilled"}),
            [
                (
                    f"{SID}.rs-abcde-0",
                    137,
                    frozenset({InstanceFlag.MEMORY_LIMIT_EXCEEDED.value}),
                    "OOMKilled: the container went over its memory limit, exit code 137",
                )
            ],
        ),
        (
            _pod(phase="Failed", reason="Evicted", message="The node was low on resource: memory."),
            [(f"{SID}.rs-abcde-0", None, frozenset(), "Evicted: The node was low on resource: memory.")],
        ),
    ],
    ids=["running", "crashed", "oom-killed", "evicted"],
)
def test_pod_failures(pod: dict[str, Any], expected: list[tuple[Any, ...]]) -> None:
    got = [(i.id, i.exit_code, i.flags, i.message) for i in pod_failures(SID, pod)]
    assert got == expected
    assert all(i.failed for i in pod_failures(SID, pod))


def test_pod_instance_and_instance_ids() -> None:
    instance = pod_instance(SID, _pod(4))
    assert (instance.id, instance.host, instance.port) == (f"{SID}.rs-abcde-4", "10.0.0.1", 31000)
    assert split_instance_id(SID, instance.id) == ("rs-abcde", 4)
    assert split_instance_id(SID, "other.rs-abcde-4") is None


@pytest.mark.parametrize(
    ("problems", "running", "waited", "expected"),
    [
        ([PodProblem("crash-loop", "", 3)] * 2, 0, None, "Invalid startup command (every instance exited with code 3)"),
        ([PodProblem("crash-loop", "", 3)], 1, None, None),
        ([PodProblem("crash-loop", "", 137, oom=True)], 0, None, "Not enough memory allocated"),
        (
            [PodProblem("crash-loop", "", 1), PodProblem("crash-loop", "", 2)],
            0,
            None,
            "Invalid startup command (the containers keep exiting: CrashLoopBackOff)",
        ),
        (
            [PodProblem("image", "ErrImagePull: not found")],
            0,
            None,
            "Unable to pull the container image img:1: ErrImagePull: not found",
        ),
        ([PodProblem("unschedulable", "0/3 nodes are available")], 0, None, None),
        (
            [PodProblem("unschedulable", "0/3 nodes are available")],
            0,
            60.0,
            "No Kubernetes node could place an instance needing 0.5 cpus and 128 MiB within 60 seconds: "
            "0/3 nodes are available",
        ),
        ([], 0, None, None),
    ],
    ids=["crash-loop", "one-runs", "oom", "codes-differ", "image", "unschedulable-not-yet", "unschedulable", "none"],
)
def test_deployment_error(problems: list[PodProblem], running: int, waited: float | None, expected: str | None) -> None:
    assert deployment_error(problems, running, "img:1", (0.5, 128.0), waited) == expected


def test_in_cluster_defaults_and_kubeconfig(tmp_path: Path) -> None:
    secrets = tmp_path / "sa"
    secrets.mkdir()
    (secrets / "namespace").write_text("team-a\n")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    credentials, namespace = connection(KubernetesSchedulerConfig(), env, secrets)
    assert (credentials.api_url, credentials.token_file, namespace) == (
        "https://10.96.0.1:443",
        secrets / "token",
        "team-a",
    )
    assert credentials.ca_file == secrets / "ca.crt"
    explicit, ns = connection(KubernetesSchedulerConfig(api_url="http://k:8080", namespace="x"), env, secrets)
    assert (explicit.api_url, ns) == ("http://k:8080", "x")

    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "current-context: dev\n"
        "contexts: [{name: dev, context: {cluster: c1, user: u1, namespace: apps}}]\n"
        "clusters: [{name: c1, cluster: {server: 'https://k8s:6443', certificate-authority: ca.pem}}]\n"
        "users: [{name: u1, user: {token: abc}}]\n"
    )
    credentials, namespace = from_kubeconfig(kubeconfig, "")
    assert (credentials.api_url, credentials.token, credentials.ca_file, namespace) == (
        "https://k8s:6443",
        "abc",
        tmp_path / "ca.pem",
        "apps",
    )
    with pytest.raises(SchedulerError, match="has no context 'prod'"):
        from_kubeconfig(kubeconfig, "prod")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"api-url": "k8s:6443"}, "scheduler.kubernetes.api-url is 'k8s:6443' but must be an http:// or https:// URL"),
        ({"namespace": "Team_A"}, "scheduler.kubernetes.namespace is 'Team_A' but must be a Kubernetes namespace name"),
        (
            {"api-url": "http://k", "shell": "sh -c"},
            "scheduler.kubernetes.shell is 'sh -c' but must be a non-empty list",
        ),
        (
            {"api-url": "http://k", "pod-base-port": 80},
            "scheduler.kubernetes.pod-base-port is 80 but must be an integer",
        ),
        ({}, "scheduler.kubernetes.api-url is not set but is required when scheduler.kind is kubernetes"),
        (
            {"api-url": "http://k", "retry-attempts": 0},
            "scheduler.kubernetes.retry-attempts is 0 but must be an integer in the range [1, 100]",
        ),
        (
            {"api-url": "http://k", "retry-backoff-ms": 60_001},
            "scheduler.kubernetes.retry-backoff-ms is 60001 but must be an integer in the range [1, 60000]",
        ),
        (
            {"api-url": "http://k", "request-timeout-ms": 9},
            "scheduler.kubernetes.request-timeout-ms is 9 but must be an integer in the range [10, 600000]",
        ),
    ],
)
def test_settings_errors_name_the_key(section: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings(None, {"scheduler": {"kind": "kubernetes", "kubernetes": section}})
