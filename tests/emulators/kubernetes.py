"""A Kubernetes API emulator: apps/v1 ReplicaSets and v1 Pods over pods that are real local processes (a test fixture).

Speaks the subset of the API the Kubernetes scheduler uses, with the JSON the real API server sends, as
``docs/kubernetes-api.md`` records it: lists with a ``resourceVersion``, watches (``?watch=1``) that replay from a
version, send ``BOOKMARK`` events and end after ``timeoutSeconds``, ``410 Expired`` for a version that is gone, ``409``
for a name that exists, a stale ``resourceVersion`` or a failed precondition, ``404``, and ``422`` validation
failures, every failure as a ``Status`` object. Run it on its own from the project root::

    python -m tests.emulators.kubernetes --port 6443 --work-dir /tmp/kubernetes-emulator

Emulator-only controls (never part of Kubernetes) for tests, outside the API's paths:

* ``POST /emulator/faults`` ``{"status": 500|429|..., "count": n, "delay-ms": m, "method": "GET", "path": "/api"}``:
  the next ``n`` matching API requests wait ``delay-ms`` and then, if ``status`` is set, fail with it (a slow or
  failing API server). ``DELETE /emulator/faults`` clears them.
* ``POST /emulator/watches/expire``: compaction: every open watch ends with a 410 ``ERROR`` event, and every
  version before now is gone.
* ``POST /emulator/compact``: every version before now is gone, open watches go on (a watch resumed from an old
  version gets 410). ``GET /emulator/stats``: how many lists and watches were asked, and how many watches got 410.
* ``GET /emulator/pods``: every container's pod, process id and sandbox.
* ``POST /emulator/pods/{namespace}/{name}/kill`` ``{"signal": "KILL"}``: the container's process dies from outside
  (the kubelet restarts it); ``POST .../evict``: the node evicts the pod (phase ``Failed``, reason ``Evicted``).
* ``PUT /emulator/images/missing`` ``{"images": [...]}``: images that cannot be pulled (``ImagePullBackOff``).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.emulators.faults import Fault, take_fault
from tests.emulators.kubernetes_cluster import (
    JSON,
    Cluster,
    ClusterConfig,
    Gone,
    Watcher,
    gone_status,
    quantity,
    status_object,
)
from tests.emulators.runner import emulator_arguments, listening_socket, run, serve_until_stopped, work_dir

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_LABEL_NAME = re.compile(r"([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
RESOURCES = {"pods": ("", "v1", "Pod", "PodList"), "replicasets": ("apps", "apps/v1", "ReplicaSet", "ReplicaSetList")}


class Refused(Exception):
    def __init__(self, code: int, reason: str, message: str, details: JSON | None = None) -> None:
        super().__init__(message)
        self.body = status_object(code, reason, message, details)


@dataclass
class EmulatorSettings:
    token: str | None = None
    bookmark_secs: float = 1.0
    faults: list[Fault] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=lambda: {"lists": 0, "watches": 0, "expired": 0})


CLUSTER = web.AppKey("cluster", Cluster)
SETTINGS = web.AppKey("settings", EmulatorSettings)


def _details(resource: str, name: str) -> JSON:
    return {"name": name, "group": RESOURCES[resource][0], "kind": resource}


def _qualified(resource: str) -> str:
    group = RESOURCES[resource][0]
    return f"{resource}.{group}" if group else resource


def not_found(resource: str, name: str) -> Refused:
    return Refused(404, "NotFound", f'{_qualified(resource)} "{name}" not found', _details(resource, name))


def conflict(resource: str, name: str, why: str) -> Refused:
    return Refused(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {_qualified(resource)} "{name}": {why}',
        _details(resource, name),
    )


# -- selectors, validation ---------------------------------------------------------------------------------------


def label_matcher(selector: str) -> Callable[[JSON], bool]:
    """``a=b,c!=d,e`` as a predicate on an object's labels (equality-based selectors only)."""
    terms: list[tuple[str, str, str]] = []
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            terms.append((key.strip(), "!=", value.strip()))
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            terms.append((key.strip(), "=", value.strip()))
        else:
            terms.append((term.lstrip("!"), "!" if term.startswith("!") else "exists", ""))

    def matches(obj: JSON) -> bool:
        labels = obj["metadata"].get("labels") or {}
        for key, op, value in terms:
            if (op == "=" and labels.get(key) != value) or (op == "!=" and labels.get(key) == value):
                return False
            if (op == "exists" and key not in labels) or (op == "!" and key in labels):
                return False
        return True

    return matches


def invalid(resource: str, name: str, causes: list[tuple[str, str]]) -> Refused:
    """422 Invalid with one cause per bad field, worded as the API server words them."""
    kind = RESOURCES[resource][2]
    group = RESOURCES[resource][0]
    texts = [f"{path}: {message}" for path, message in causes]
    joined = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    details = {
        "name": name,
        "group": group,
        "kind": kind,
        "causes": [{"reason": "FieldValueInvalid", "message": m, "field": p} for p, m in causes],
    }
    return Refused(422, "Invalid", f'{kind}{"." + group if group else ""} "{name}" is invalid: {joined}', details)


def validate_replicaset(rs: JSON) -> None:
    meta, spec = rs.get("metadata") or {}, rs.get("spec") or {}
    name = str(meta.get("name") or "")
    causes: list[tuple[str, str]] = []
    if not name:
        causes.append(("metadata.name", "Required value: name or generateName is required"))
    elif len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        causes.append(
            (
                "metadata.name",
                f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of '
                "lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
                "character",
            )
        )
    for where, labels in (
        ("metadata.labels", meta.get("labels")),
        ("spec.template.metadata.labels", ((spec.get("template") or {}).get("metadata") or {}).get("labels")),
    ):
        for key, value in (labels or {}).items():
            if not _LABEL_NAME.fullmatch(str(key)):
                causes.append((where, f'Invalid value: "{key}": name part must consist of alphanumeric characters'))
            if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
                causes.append(
                    (
                        where,
                        f'Invalid value: "{value}": a valid label must be an empty string or consist '
                        "of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                        "alphanumeric character",
                    )
                )
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or replicas < 0:
        causes.append(("spec.replicas", f"Invalid value: {replicas}: must be greater than or equal to 0"))
    match = (spec.get("selector") or {}).get("matchLabels")
    template = spec.get("template") or {}
    template_labels = (template.get("metadata") or {}).get("labels") or {}
    if not match:
        causes.append(("spec.selector", "Required value"))
    elif any(template_labels.get(k) != v for k, v in match.items()):
        causes.append(
            (
                "spec.template.metadata.labels",
                f"Invalid value: {template_labels}: `selector` does not match template `labels`",
            )
        )
    pod_spec = template.get("spec") or {}
    if pod_spec.get("restartPolicy", "Always") != "Always":
        causes.append(
            (
                "spec.template.spec.restartPolicy",
                f'Unsupported value: "{pod_spec["restartPolicy"]}": supported values: "Always"',
            )
        )
    containers = pod_spec.get("containers") or []
    if not containers:
        causes.append(("spec.template.spec.containers", "Required value"))
    for i, container in enumerate(containers):
        where = f"spec.template.spec.containers[{i}]"
        if not container.get("name"):
            causes.append((f"{where}.name", "Required value"))
        if not container.get("image"):
            causes.append((f"{where}.image", "Required value"))
        for j, port in enumerate(container.get("ports") or ()):
            value = port.get("containerPort")
            if not isinstance(value, int) or not 1 <= value <= 65535:
                causes.append(
                    (
                        f"{where}.ports[{j}].containerPort",
                        f"Invalid value: {value}: must be between 1 and 65535, inclusive",
                    )
                )
        for kind in ("requests", "limits"):
            for resource, value in ((container.get("resources") or {}).get(kind) or {}).items():
                try:
                    quantity(value, memory=resource == "memory")
                except ValueError:
                    causes.append(
                        (f"{where}.resources.{kind}[{resource}]", f'Invalid value: "{value}": must be a quantity')
                    )
    grace = pod_spec.get("terminationGracePeriodSeconds", 30)
    if not isinstance(grace, int) or grace < 0:
        causes.append(
            (
                "spec.template.spec.terminationGracePeriodSeconds",
                f"Invalid value: {grace}: must be greater than or equal to 0",
            )
        )
    if causes:
        raise invalid("replicasets", name, causes)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


async def read_json(request: web.Request) -> Any:
    text = await request.text()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError as error:
        raise Refused(400, "BadRequest", f"the body of the request was in an unknown format: {error}") from error


# -- handlers ------------------------------------------------------------------------------------------------------


def _list_body(cluster: Cluster, resource: str, namespace: str | None, selector: str) -> JSON:
    matches = label_matcher(selector)
    items = []
    for obj in cluster.store.items(resource):
        if namespace in (None, obj["metadata"].get("namespace")) and matches(obj):
            item = copy.deepcopy(obj)
            item.pop("kind", None)
            item.pop("apiVersion", None)
            items.append(item)
    _, version, _, list_kind = RESOURCES[resource]
    return {
        "kind": list_kind,
        "apiVersion": version,
        "metadata": {"resourceVersion": str(cluster.store.version)},
        "items": items,
    }


async def collection(request: web.Request) -> web.StreamResponse:
    resource = request.match_info["resource"]
    namespace = request.match_info.get("namespace")
    cluster = request.app[CLUSTER]
    if request.method == "POST":
        if namespace is None or resource != "replicasets":
            raise Refused(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        return create(request, cluster, namespace, await read_json(request))
    selector = request.query.get("labelSelector", "")
    stats = request.app[SETTINGS].stats
    if request.query.get("watch") in ("1", "true"):
        stats["watches"] += 1
        return await watch(request, cluster, resource, namespace, selector)
    stats["lists"] += 1
    return web.json_response(_list_body(cluster, resource, namespace, selector))


def create(request: web.Request, cluster: Cluster, namespace: str, body: Any) -> web.Response:
    if not isinstance(body, dict) or body.get("kind") not in (None, "ReplicaSet"):
        raise Refused(400, "BadRequest", "the body must be a ReplicaSet object")
    meta = body.setdefault("metadata", {})
    if meta.get("namespace") not in (None, namespace):
        raise Refused(
            400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request"
        )
    meta["namespace"] = namespace
    body.update(kind="ReplicaSet", apiVersion="apps/v1")
    body.setdefault("spec", {}).setdefault("replicas", 1)
    for key in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "generation"):
        meta.pop(key, None)
    validate_replicaset(body)
    name = meta["name"]
    if cluster.store.get("replicasets", namespace, name) is not None:
        raise Refused(409, "AlreadyExists", f'replicasets.apps "{name}" already exists', _details("replicasets", name))
    return web.json_response(cluster.create("replicasets", body), status=201)


async def watch(
    request: web.Request, cluster: Cluster, resource: str, namespace: str | None, selector: str
) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    raw = request.query.get("resourceVersion", "")
    try:
        since = int(raw) if raw else None
    except ValueError as error:
        raise Refused(400, "BadRequest", f'invalid resource version "{raw}"') from error
    timeout = float(request.query.get("timeoutSeconds") or 1800)
    bookmarks = request.query.get("allowWatchBookmarks") == "true"
    watcher = Watcher(resource, namespace, label_matcher(selector))
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    try:
        replay = cluster.store.watch(watcher, since)
    except Gone as gone:
        settings.stats["expired"] += 1
        # As the API server does: 200, then one ERROR event carrying the 410 Status, then the end.
        await response.prepare(request)
        await response.write(json.dumps({"type": "ERROR", "object": gone_status(gone)}).encode() + b"\n")
        return response
    _, version, kind, _ = RESOURCES[resource]
    try:
        await response.prepare(request)
        for event in replay:
            await response.write(json.dumps(event).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                async with asyncio.timeout(min(left, settings.bookmark_secs)):
                    event = await watcher.queue.get()
            except TimeoutError:
                if bookmarks and time.monotonic() < deadline:
                    mark = {
                        "kind": kind,
                        "apiVersion": version,
                        "metadata": {"resourceVersion": str(cluster.store.version)},
                    }
                    await response.write(json.dumps({"type": "BOOKMARK", "object": mark}).encode() + b"\n")
                continue
            if event is None:
                break
            await response.write(json.dumps(event).encode() + b"\n")
    except ConnectionResetError:
        pass
    finally:
        cluster.store.watchers.discard(watcher)
    return response


def _existing(cluster: Cluster, resource: str, namespace: str, name: str) -> JSON:
    obj = cluster.store.get(resource, namespace, name)
    if obj is None:
        raise not_found(resource, name)
    return obj


async def item(request: web.Request) -> web.Response:
    resource, namespace, name = (request.match_info[k] for k in ("resource", "namespace", "name"))
    cluster = request.app[CLUSTER]
    obj = _existing(cluster, resource, namespace, name)
    if request.method == "GET":
        return web.json_response(obj)
    if request.method == "DELETE":
        return delete(request, cluster, resource, obj, await read_json(request) or {})
    if resource != "replicasets":
        raise Refused(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
    body = await read_json(request)
    if not isinstance(body, dict):
        raise Refused(400, "BadRequest", "the body must be a JSON object")
    if request.method == "PATCH":
        kind = request.content_type
        if kind not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            raise Refused(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - "
                f"accepted media types include: application/merge-patch+json, "
                f"application/strategic-merge-patch+json (this emulator), not {kind}",
            )
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        updated = merge_patch(obj, body)
    else:
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if not wanted:
            raise invalid(
                resource, name, [("metadata.resourceVersion", "Invalid value: 0x0: must be specified for an update")]
            )
        updated = body
    if wanted is not None and str(wanted) != obj["metadata"]["resourceVersion"]:
        raise conflict(
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    for key in ("uid", "creationTimestamp", "name", "namespace", "generation"):
        updated["metadata"][key] = obj["metadata"].get(key)
    updated["status"] = obj.get("status")
    validate_replicaset(updated)
    if updated.get("spec") != obj.get("spec"):
        updated["metadata"]["generation"] = int(obj["metadata"].get("generation", 1)) + 1
    return web.json_response(cluster.update(resource, updated))


def delete(request: web.Request, cluster: Cluster, resource: str, obj: JSON, options: Any) -> web.Response:
    name = obj["metadata"]["name"]
    if not isinstance(options, dict):
        raise Refused(400, "BadRequest", "DeleteOptions must be a JSON object")
    preconditions = options.get("preconditions") or {}
    for key in ("uid", "resourceVersion"):
        wanted = preconditions.get(key)
        if wanted is not None and str(wanted) != str(obj["metadata"].get(key)):
            raise conflict(
                resource,
                name,
                f"Precondition failed: {key.upper() if key == 'uid' else key} in "
                f"precondition: {wanted}, {key} in object meta: {obj['metadata'].get(key)}",
            )
    grace = options.get("gracePeriodSeconds", request.query.get("gracePeriodSeconds"))
    if resource == "pods":
        return web.json_response(cluster.delete_pod(obj, None if grace is None else int(grace)))
    cluster.delete_replicaset(obj)
    details = {**_details(resource, name), "uid": obj["metadata"]["uid"]}
    return web.json_response(
        {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}
    )


async def version(request: web.Request) -> web.Response:
    return web.json_response({"major": "1", "minor": "29", "gitVersion": "v1.29.0-emulator", "platform": "linux/amd64"})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


# -- controls ------------------------------------------------------------------------------------------------------


async def add_fault(request: web.Request) -> web.Response:
    request.app[SETTINGS].faults.append(Fault.from_json(await read_json(request) or {}))
    return web.json_response({"faults": len(request.app[SETTINGS].faults)})


async def clear_faults(request: web.Request) -> web.Response:
    request.app[SETTINGS].faults.clear()
    return web.json_response({"faults": 0})


async def expire_watches(request: web.Request) -> web.Response:
    return web.json_response({"expired": request.app[CLUSTER].expire_watches()})


async def compact(request: web.Request) -> web.Response:
    request.app[CLUSTER].store.compact()
    return web.json_response({"oldest": request.app[CLUSTER].store.oldest})


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[SETTINGS].stats)


async def pods(request: web.Request) -> web.Response:
    return web.json_response({"pods": request.app[CLUSTER].processes()})


async def interfere(request: web.Request) -> web.Response:
    cluster = request.app[CLUSTER]
    pod = _existing(cluster, "pods", request.match_info["namespace"], request.match_info["name"])
    if request.match_info["what"] == "evict":
        return web.json_response(cluster.evict(pod))
    body = await read_json(request) or {}
    name = str(body.get("signal", "KILL")).upper().removeprefix("SIG")
    if not cluster.kill_container(pod, signal.Signals[f"SIG{name}"]):
        raise Refused(409, "Conflict", f"pod {pod['metadata']['name']} has no running container")
    return web.json_response(pod)


async def missing_images(request: web.Request) -> web.Response:
    body = await read_json(request) or {}
    cluster = request.app[CLUSTER]
    cluster.missing_images = {str(i) for i in body.get("images") or ()}
    return web.json_response({"images": sorted(cluster.missing_images)})


# -- assembly ------------------------------------------------------------------------------------------------------


@web.middleware
async def api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Refused as refused:
        return web.json_response(refused.body, status=refused.body["code"])


@web.middleware
async def auth_and_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith(("/api", "/version")):
        return await handler(request)
    settings = request.app[SETTINGS]
    if settings.token is not None and request.headers.get("Authorization") != f"Bearer {settings.token}":
        raise Refused(401, "Unauthorized", "Unauthorized")
    fault = take_fault(settings.faults, request)
    if fault is not None:
        await asyncio.sleep(fault.delay_ms / 1000)
        if fault.status:
            reasons = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}
            raise Refused(
                fault.status, reasons.get(fault.status, "InternalError"), f"Emulated fault: HTTP {fault.status}"
            )
    return await handler(request)


def build_app(config: ClusterConfig, settings: EmulatorSettings, missing: set[str]) -> web.Application:
    app = web.Application(middlewares=[api_errors, auth_and_faults])
    app[SETTINGS] = settings

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        cluster = Cluster(config)
        cluster.missing_images = set(missing)
        await cluster.start()
        app[CLUSTER] = cluster
        yield
        await cluster.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/version", version)
    app.router.add_get("/healthz", healthz)
    for prefix in ("/api/v1", "/apis/apps/v1"):
        resource = "pods" if prefix == "/api/v1" else "replicasets"
        app.router.add_get(f"{prefix}/{{resource:{resource}}}", collection)
        app.router.add_route("*", f"{prefix}/namespaces/{{namespace}}/{{resource:{resource}}}", collection)
        app.router.add_route("*", f"{prefix}/namespaces/{{namespace}}/{{resource:{resource}}}/{{name}}", item)
    app.router.add_post("/emulator/faults", add_fault)
    app.router.add_delete("/emulator/faults", clear_faults)
    app.router.add_post("/emulator/watches/expire", expire_watches)
    app.router.add_post("/emulator/compact", compact)
    app.router.add_get("/emulator/stats", stats)
    app.router.add_get("/emulator/pods", pods)
    app.router.add_post("/emulator/pods/{namespace}/{name}/{what:kill|evict}", interfere)
    app.router.add_put("/emulator/images/missing", missing_images)
    return app


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = emulator_arguments(
        "tests.emulators.kubernetes",
        __doc__,
        port=6443,
        host_help="address to listen on",
        work_dir_help="where pods' files go",
    )
    parser.add_argument("--token", help="require this bearer token")
    parser.add_argument("--node-cpus", type=float, default=64.0, help="the node's allocatable cpus")
    parser.add_argument("--node-memory-mb", type=float, default=256 * 1024.0, help="the node's allocatable MiB")
    parser.add_argument("--crash-backoff-secs", type=float, default=10.0, help="CrashLoopBackOff's first delay")
    parser.add_argument("--bookmark-secs", type=float, default=1.0, help="a quiet watch's bookmark period")
    parser.add_argument("--missing-image", action="append", default=[], help="an image that cannot be pulled")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    config = ClusterConfig(
        work_dir=work_dir(args.work_dir, "kubernetes"),
        node_cpus=args.node_cpus,
        node_memory_mb=args.node_memory_mb,
        crash_backoff_secs=args.crash_backoff_secs,
    )
    settings = EmulatorSettings(token=args.token, bookmark_secs=args.bookmark_secs)
    app = build_app(config, settings, set(args.missing_image))
    await serve_until_stopped(app, listening_socket(args.host, args.port), shutdown_timeout=0.5)


def main(argv: list[str] | None = None) -> int:
    return run("kubernetes", parse_args(argv), serve)


if __name__ == "__main__":
    sys.exit(main())
