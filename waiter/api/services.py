"""Services as clients see them: /apps, /apps/{id}, instance signals, /waiter-ping, /state (docs/api.md §1.6-1.10)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from waiter.api import control, logs, watch
from waiter.api.common import base_url, included, json_response, query_true, request_cid
from waiter.api.filters import Filter, lookup
from waiter.api.views import Cluster, inactive_detail, service_detail, service_status, service_summary
from waiter.auth import Access, access
from waiter.debug import log_path
from waiter.errors import WaiterError, iso_millis, render_error_parts
from waiter.service import Service
from waiter.state import StateUnavailable
from waiter.upstream import UpstreamError
from waiter.version import SERVER_HEADER, __version__

if TYPE_CHECKING:
    from waiter.api.admin import Handler
    from waiter.router import Router

log = logging.getLogger(__name__)

Headers = tuple[tuple[str, str], ...]


def current_for_tokens(router: Router, service: Service) -> list[str]:
    """Tokens that reach this service now."""
    return router.current_for(service)[0]


def cluster_view(router: Router) -> Cluster:
    coordinator, autoscaler = router.coordinator, router.autoscaler
    minute_secs = router.settings.lifecycle.minute_secs
    view = coordinator.view
    return Cluster(
        outstanding_elsewhere=view.outstanding_elsewhere,
        total_elsewhere=view.total_elsewhere,
        last_request_time=view.last_request_time,
        scaling_states=(
            {sid: d.scaling_state for sid, d in autoscaler.decisions.items()} if autoscaler.is_leader else {}
        ),
        num_routers=max(1, len(view.routers)),
        minute_secs=minute_secs,
    )


_NOT_FILTERS = frozenset({"effective-parameters", "include", "token", "token-version", "star-mode", "run-as-user"})


def _selected(router: Router, request: web.BaseRequest) -> list[Service]:
    filters = [Filter.of(key, pattern) for key, pattern in request.query.items() if key not in _NOT_FILTERS]
    services = sorted(router.registry.services.values(), key=lambda s: s.id)
    query = request.query
    if "token" in query:
        wanted = Filter.of("token", query["token"])
        services = [s for s in services if any(wanted.matches(t) for t, _ in s.resolved.source_tokens)]
    if "token-version" in query:
        wanted = Filter.of("token-version", query["token-version"])
        services = [s for s in services if any(wanted.matches(v) for _, v in s.resolved.source_tokens)]
    if "run-as-user" in query:
        wanted = Filter.of("run-as-user", query["run-as-user"])
        services = [s for s in services if wanted.matches(s.resolved.effective.get("run-as-user"))]
    for wanted in filters:
        services = [s for s in services if wanted.matches(lookup(s.resolved.effective, wanted.name))]
    return services


@access(Access.AUTHENTICATED)
async def apps(router: Router, request: web.BaseRequest, _h: Headers) -> web.Response:
    effective = query_true(request, "effective-parameters") or included(request, "effective-parameters")
    healthy = included(request, "healthy-instances")
    base = base_url(request)
    cluster = cluster_view(router)
    body = []
    for service in _selected(router, request):
        item = service_summary(service, base, cluster, effective=effective, healthy_instances=healthy)
        item["current-for-tokens"] = current_for_tokens(router, service)
        body.append(item)
    return json_response(body)


def _unknown(service_id: str) -> WaiterError:
    return WaiterError(404, "Service not found", error_class="waiter.ServiceUnknown", service_id=service_id)


def _split(path: str) -> list[str]:
    return [p for p in path[len("/apps/") :].split("/") if p]


@access(Access.AUTHENTICATED)
async def app_get(router: Router, request: web.BaseRequest, _h: Headers) -> web.Response:
    parts = _split(request.path)
    if len(parts) == 2 and parts[1] == "override":
        return await control.get_override(router, request, parts[0])
    if len(parts) == 2 and parts[1] == "logs":
        return await logs.logs(router, request, parts[0])
    if len(parts) != 1:
        if len(parts) == 4 and parts[1] == "instance":
            return json_response({"message": "Method not allowed"}, 405)
        raise WaiterError(404, "Not found")
    effective = query_true(request, "effective-parameters") or included(request, "effective-parameters")
    service = router.registry.get(parts[0])
    if service is None:
        record = await router.inactive_service(parts[0])
        if record is None:
            raise _unknown(parts[0])
        body = inactive_detail(record, router.settings.router_id, cluster_view(router), effective=effective)
        sources = record["service"].get("source-tokens", [])
        body["current-for-tokens"] = [t for t, _ in sources if router.resolver.token_service_id(t) == parts[0]]
        return json_response(body)
    body = service_detail(service, router.settings.router_id, cluster_view(router), effective=effective)
    body["current-for-tokens"] = current_for_tokens(router, service)
    body.update(control.shown(service))
    base = base_url(request)
    for listed in body["instances"].values():
        for instance in listed:
            if instance.get("log-directory"):
                instance["log-url"] = base + log_path(service.id, instance["id"], instance["host"])
    return json_response(body)


def _timeout_ms(request: web.BaseRequest, *, positive: bool) -> int | None:
    raw = request.query.get("timeout")
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise _TimeoutError(raw) from None
    if positive and value <= 0:
        raise _TimeoutError(raw)
    return value


class _TimeoutError(Exception):
    def __init__(self, raw: str) -> None:
        super().__init__(raw)
        self.raw = raw


@access(Access.SERVICE_OWNER)
async def app_delete(router: Router, request: web.BaseRequest, _h: Headers) -> web.Response:
    parts = _split(request.path)
    if len(parts) == 2 and parts[1] == "override":
        return await control.delete_override(router, request, parts[0])
    if len(parts) != 1:
        raise WaiterError(404, "Not found")
    service_id = parts[0]
    try:
        timeout = _timeout_ms(request, positive=False)
    except _TimeoutError as exc:
        raise WaiterError(400, f"timeout is {exc.raw!r} but must be an integer number of milliseconds.") from None
    with contextlib.suppress(StateUnavailable):
        await router.coordinator.forget(service_id)
    if not await router.registry.delete(service_id):
        return json_response(
            {
                "service-id": service_id,
                "success": False,
                "result": "no-such-service-exists",
                "message": f"Service {service_id} does not exist.",
            },
            404,
        )
    body: dict[str, Any] = {
        "service-id": service_id,
        "success": True,
        "result": "deleted",
        "message": f"Deleted {service_id}",
    }
    if timeout is not None and timeout > 0:
        body["routers-agree"] = await _routers_forgot(router, service_id, timeout / 1000)
    return json_response(body)


async def _routers_forgot(router: Router, service_id: str, timeout: float) -> bool:
    """Wait until no live router still counts the service (each publishes the services it knows every tick)."""
    coordinator = router.coordinator
    if router.registry.get(service_id) is not None:
        return False
    if not coordinator.state.shared:
        return True
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            stats = await coordinator.state.all_stats()
        except StateUnavailable:
            return False
        if not any(service_id in services for services in stats.values()):
            return True
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(coordinator.publish_interval)


@access(Access.SERVICE_OWNER)
async def app_post(router: Router, request: web.BaseRequest, _h: Headers) -> web.Response:
    parts = _split(request.path)
    if len(parts) == 2 and parts[1] in ("override", "suspend", "resume"):
        handler = {"override": control.post_override, "suspend": control.suspend, "resume": control.resume}
        return await handler[parts[1]](router, request, parts[0])
    if len(parts) != 4 or parts[1] != "instance" or parts[3] not in ("kill", "expire"):
        raise WaiterError(404, "Not found")
    service_id, _, instance_id, signal = parts
    try:
        _timeout_ms(request, positive=True)
    except _TimeoutError as exc:
        return json_response({"message": f"Invalid timeout specified: {exc.raw}"}, 400)
    service = router.registry.get(service_id)
    if service is None or instance_id not in service.tracker.tracked:
        response = {"success": False, "message": f"Instance {instance_id} of service {service_id} is not running."}
        return json_response({"signal-response": response}, 404)
    if signal == "expire":
        service.expire(instance_id)
        if router.coordinator is not None:
            with contextlib.suppress(StateUnavailable):
                await router.coordinator.share_expired(instance_id)
        return json_response({"signal-response": {"success": True, "message": f"Flagged {instance_id} as expired"}})
    force = query_true(request, "force")
    service.tracker.retire(instance_id)
    result = await router.registry.scheduler.kill_instance(
        service_id, instance_id, force=force, message="Killed through the API"
    )
    status = 200 if result.success else 400
    return json_response({"signal-response": {"success": result.success, "message": result.message}}, status)


@access(Access.AUTHENTICATED)
async def ping(router: Router, request: web.BaseRequest, headers: Headers) -> web.Response:
    """Start the service if needed and GET its health check through the normal queue (docs/api.md §1.9)."""
    cid = request_cid(request)
    caller = router.caller_of(request)
    try:
        resolved, options = router.resolve_for(headers, request.headers.get("host"), caller)
    except WaiterError as err:
        return json_response({"ping-response": _error_result("descriptor-error", request.path, err, cid)})
    router.check_maintenance(resolved)
    host = request.headers.get("host")
    service = router.serving(resolved, options, headers, host, fallback=included(request, "fallback"), user=caller.user)
    if service.suspended:
        raise control.suspended_error(service)
    wait_ms = options.timeout_ms or 300_000
    ping_response = await _ping(router, service, options.queue_timeout_ms or wait_ms, wait_ms, request, cid)
    body: dict[str, Any] = {
        "ping-response": ping_response,
        "service-description": dict(resolved.core),
    }
    if "service-state" not in request.query.getall("exclude", []):
        if "instance" in ping_response:
            # An instance answered the health check; the tracker's own probe may not have passed it yet. (A 503 the
            # router made, a deployment error or a queue timeout, has no instance to wait for.)
            await service.tracker.wait_healthy(5.0)
        body["service-state"] = {
            "service-id": service.id,
            "exists?": True,
            "healthy?": service.tracker.healthy_count() > 0,
            "status": service_status(service),
        }
    return json_response(body)


_PING_ACCEPT = "application/json;q=1.0, */*;q=0.9"


class _PingRequest:
    """The health-check request a ping makes, as error rendering sees it (waiter.errors.RequestInfo)."""

    method = "GET"
    query_string = ""

    def __init__(self, path: str) -> None:
        self.path = path
        self.headers = {"accept": _PING_ACCEPT}


def _error_result(result: str, path: str, err: WaiterError, cid: str) -> dict[str, Any]:
    """A router-made error in a ping's result: status, headers and JSON body as a client would have received them."""
    rendered = render_error_parts(_PingRequest(path), err, cid)
    headers = {k.lower(): v for k, v in rendered.headers.items()}
    headers["content-type"] = rendered.content_type
    return {"result": result, "status": rendered.status, "headers": headers, "body": rendered.body.decode()}


async def _ping(
    router: Router, service: Service, queue_ms: int, wait_ms: int, request: web.BaseRequest, cid: str
) -> dict[str, Any]:
    headers = [
        ("accept", _PING_ACCEPT),
        ("user-agent", f"waiter-ping/{__version__}"),
        ("x-cid", cid),
    ]
    try:
        async with asyncio.timeout(wait_ms / 1000):
            instance = await service.acquire(queue_ms)
            try:
                upstream = await router.pool.request(
                    instance.host,
                    instance.port,
                    "GET",
                    service.spec.health_check_url,
                    headers,
                    None,
                    idle_timeout=wait_ms / 1000,
                )
                async with upstream:
                    data = await upstream.read_all(1 << 20)
            finally:
                service.release(instance.id)
    except TimeoutError:
        return {"result": "timed-out", "status": 503, "body": ""}
    except WaiterError as err:
        result = "received-response" if err.for_service else "waiter-response"
        return _error_result(result, service.spec.health_check_url, err, cid)
    except UpstreamError as exc:
        log.warning("ping of service %s: its health check request failed: %s", service.id, exc)
        body = f"The health check request to an instance of service {service.id} failed; the router's log has why."
        return {"result": "ping-internal-error", "status": 502, "body": body}
    return {
        "result": "received-response",
        "status": upstream.status,
        "headers": {k.lower(): v for k, v in upstream.headers},
        "body": data.decode("utf-8", "replace"),
        "instance": {"host": instance.host, "id": instance.id, "port": instance.port},
    }


def _healthy_instances(router: Router) -> dict[str, Any]:
    """service id -> its healthy instances, for /apps/instances (services the caller may see, like /apps)."""
    listing: dict[str, Any] = {}
    for service in sorted(router.registry.services.values(), key=lambda s: s.id):
        healthy = [t.instance for t in service.tracker.tracked.values() if t.healthy]
        listing[service.id] = {
            "service-id": service.id,
            "healthy-instances": [
                {"id": i.id, "host": i.host, "port": i.port, "started-at": iso_millis(i.started_at)}
                for i in sorted(healthy, key=lambda i: (i.started_at, i.id))
            ],
        }
    return listing


@access(Access.AUTHENTICATED)
async def instances(router: Router, request: web.BaseRequest, _h: Headers) -> web.StreamResponse:
    """Every service's healthy instances; with ``watch=true`` a stream of them as they change (waiter.api.watch)."""
    if query_true(request, "watch"):

        async def snapshot() -> dict[str, Any]:
            return _healthy_instances(router)

        return await watch.stream(request, snapshot, lambda: router.draining)
    return json_response(list(_healthy_instances(router).values()))


EXACT: dict[str, dict[str, Handler]] = {
    "/apps": {"GET": apps},
    "/apps/": {"GET": apps},
    "/apps/instances": {"GET": instances},
    "/waiter-ping": {"GET": ping},
}
PREFIXES: list[tuple[str, dict[str, Handler]]] = [
    ("/apps/", {"GET": app_get, "DELETE": app_delete, "POST": app_post}),
]
__all__ = ["EXACT", "PREFIXES", "SERVER_HEADER"]
