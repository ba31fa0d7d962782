"""The router's own endpoints: /status, /settings, /apps, /apps/{id}, /service-id (waiter-api.md §1)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from waiter.api.views import service_detail, service_summary
from waiter.errors import WaiterError
from waiter.version import SERVER_HEADER

if TYPE_CHECKING:
    from waiter.router import Router

Handler = Callable[["Router", web.BaseRequest, tuple[tuple[str, str], ...]], Awaitable[web.StreamResponse]]


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body, indent=2),
        content_type="application/json",
        headers={"server": SERVER_HEADER},
    )


def query_true(request: web.BaseRequest, name: str) -> bool:
    return any(v.lower() == "true" for v in request.query.getall(name, []))


def included(request: web.BaseRequest, name: str) -> bool:
    return name in request.query.getall("include", [])


def _base_url(request: web.BaseRequest) -> str:
    return f"{request.scheme}://{request.host}"


async def status(router: Router, request: web.BaseRequest, _h: tuple[tuple[str, str], ...]) -> web.Response:
    if router.draining:
        return json_response({"message": "Router is in drain mode."}, 503)
    return json_response({"status": "ok", "router-id": router.settings.router_id})


async def settings(router: Router, request: web.BaseRequest, _h: tuple[tuple[str, str], ...]) -> web.Response:
    body = router.settings.public()
    body["token-file-errors"] = router.tokens.errors
    return json_response(body)


async def apps(router: Router, request: web.BaseRequest, _h: tuple[tuple[str, str], ...]) -> web.Response:
    effective = query_true(request, "effective-parameters") or included(request, "effective-parameters")
    healthy = included(request, "healthy-instances")
    token = request.query.get("token")
    base = _base_url(request)
    services = sorted(router.registry.services.values(), key=lambda s: s.id)
    if token is not None:
        services = [s for s in services if any(t == token for t, _ in s.resolved.source_tokens)]
    return json_response([service_summary(s, base, effective=effective, healthy_instances=healthy) for s in services])


async def app_detail(router: Router, request: web.BaseRequest, _h: tuple[tuple[str, str], ...]) -> web.Response:
    service_id = request.path[len("/apps/") :].rstrip("/")
    service = router.registry.get(service_id)
    if service is None:
        raise WaiterError(404, "Service not found", error_class="waiter.ServiceUnknown", service_id=service_id)
    effective = query_true(request, "effective-parameters") or included(request, "effective-parameters")
    return json_response(service_detail(service, router.settings.router_id, effective=effective))


async def service_id(router: Router, request: web.BaseRequest, headers: tuple[tuple[str, str], ...]) -> web.Response:
    resolved, _ = router.resolver.resolve(headers, request.headers.get("host"))
    router.check_maintenance(resolved)
    router.registry.register(resolved)
    return web.Response(text=resolved.service_id, headers={"server": SERVER_HEADER})


async def welcome(router: Router, request: web.BaseRequest, _h: tuple[tuple[str, str], ...]) -> web.Response:
    return web.Response(
        text=f"Welcome to Waiter (router {router.settings.router_id}).\n", headers={"server": SERVER_HEADER}
    )


async def favicon(router: Router, request: web.BaseRequest, _h: tuple[tuple[str, str], ...]) -> web.Response:
    return web.Response(status=204)


EXACT: dict[str, Handler] = {
    "/": welcome,
    "/favicon.ico": favicon,
    "/status": status,
    "/settings": settings,
    "/apps": apps,
    "/apps/": apps,
    "/service-id": service_id,
    "/app-name": service_id,
}

# Paths that are always the router's own, whatever the Host and headers (waiter-api.md §0.2 rule 1).
ALWAYS_API = frozenset({"/service-id", "/app-name"})


def find(path: str) -> Handler | None:
    handler = EXACT.get(path)
    if handler is not None:
        return handler
    if path.startswith("/apps/") and path.count("/") <= 3:
        return app_detail
    return None


async def dispatch(
    router: Router, request: web.BaseRequest, headers: tuple[tuple[str, str], ...]
) -> web.StreamResponse:
    handler = find(request.path)
    if handler is None:
        raise WaiterError(404, "Not found")
    if request.method not in ("GET", "HEAD") and handler is not favicon:
        raise WaiterError(405, f"Method {request.method} is not allowed on {request.path}; use GET.")
    return await handler(router, request, headers)
