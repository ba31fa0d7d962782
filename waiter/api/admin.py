"""The router's own endpoints and their dispatch: /status, /settings, /service-id (docs/api.md §1)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from waiter.api.common import json_response
from waiter.errors import WaiterError
from waiter.lifecycle import MESSAGES
from waiter.version import SERVER_HEADER

if TYPE_CHECKING:
    from waiter.router import Router

Handler = Callable[["Router", web.BaseRequest, tuple[tuple[str, str], ...]], Awaitable[web.StreamResponse]]


async def status(router: Router, request: web.BaseRequest, _h: tuple[tuple[str, str], ...]) -> web.Response:
    if router.draining:
        return json_response({"message": "Router is in drain mode."}, 503)
    return json_response(
        {
            "status": "ok",
            "router-id": router.settings.router_id,
            "token-file-errors": router.tokens.file_problems(),
            "token-store": router.tokens.store_status(),
            "shared-state": router.shared_state_status(),
        }
    )


async def settings(router: Router, request: web.BaseRequest, _h: tuple[tuple[str, str], ...]) -> web.Response:
    body = router.settings.public()
    body["messages"] = dict(MESSAGES)
    return json_response(body)


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


# path -> method -> handler. Other modules add their endpoints here (see waiter.api.services).
EXACT: dict[str, dict[str, Handler]] = {
    "/": {"GET": welcome},
    "/favicon.ico": {"GET": favicon},
    "/status": {"GET": status},
    "/settings": {"GET": settings},
    "/service-id": {"GET": service_id},
    "/app-name": {"GET": service_id},
}
# Prefix routes, tried in order when no exact path matches: (prefix, method -> handler).
PREFIXES: list[tuple[str, dict[str, Handler]]] = []

# Paths that are always the router's own, whatever the Host and headers (docs/api.md §0.2 rule 1).
ALWAYS_API = {"/service-id", "/app-name", "/waiter-ping", "/token", "/tokens"}
# Path prefixes that are always the router's own (rule 2).
API_PREFIXES = ("/waiter-interstitial/",)


def find(path: str) -> dict[str, Handler] | None:
    handlers = EXACT.get(path)
    if handlers is not None:
        return handlers
    for prefix, handlers in PREFIXES:
        if path.startswith(prefix):
            return handlers
    return None


async def dispatch(
    router: Router, request: web.BaseRequest, headers: tuple[tuple[str, str], ...]
) -> web.StreamResponse:
    handlers = find(request.path)
    if handlers is None:
        raise WaiterError(404, "Not found")
    method = "GET" if request.method == "HEAD" else request.method
    handler = handlers.get(method)
    if handler is None:
        allowed = ", ".join(sorted(handlers))
        raise WaiterError(
            405, f"Method {request.method} is not allowed on {request.path}; use {allowed}.", headers={"allow": allowed}
        )
    return await handler(router, request, headers)


def _register() -> None:
    from waiter.api import interstitial, metrics, services, state, tokens

    EXACT["/metrics"] = {"GET": metrics.metrics}
    EXACT.update(services.EXACT)
    EXACT.update(tokens.EXACT)
    EXACT.update(state.EXACT)
    PREFIXES.extend(services.PREFIXES)
    PREFIXES.extend(state.PREFIXES)
    PREFIXES.extend(interstitial.PREFIXES)


_register()
