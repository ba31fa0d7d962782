"""The router's own endpoints and their dispatch: /status, /settings, /service-id (docs/api.md §1)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from waiter.api.common import json_response
from waiter.auth import Access, access
from waiter.messages import MESSAGES
from waiter.version import SERVER_HEADER

if TYPE_CHECKING:
    from waiter.router import Router

Handler = Callable[["Router", web.BaseRequest, tuple[tuple[str, str], ...]], Awaitable[web.StreamResponse]]


@access(Access.PUBLIC)
async def status(router: Router, request: web.BaseRequest, _h: tuple[tuple[str, str], ...]) -> web.Response:
    if router.draining:
        return json_response({"message": "Router is in drain mode."}, 503)
    return json_response(
        {
            "status": "ok",
            "router-id": router.settings.router_id,
            "tokens": router.tokens.counts(),
            "token-file-errors": router.tokens.file_problems(),
            "token-store": router.tokens.store_status(),
            "shared-state": router.shared_state_status(),
        }
    )


@access(Access.AUTHENTICATED)
async def settings(router: Router, request: web.BaseRequest, _h: tuple[tuple[str, str], ...]) -> web.Response:
    body = router.settings.public()
    body["messages"] = dict(MESSAGES)
    return json_response(body)


@access(Access.AUTHENTICATED)
async def service_id(router: Router, request: web.BaseRequest, headers: tuple[tuple[str, str], ...]) -> web.Response:
    resolved, _ = router.resolve_for(headers, request.headers.get("host"), router.caller_of(request))
    router.check_maintenance(resolved)
    router.registry.register(resolved)
    return web.Response(text=resolved.service_id, headers={"server": SERVER_HEADER})


@access(Access.PUBLIC)
async def welcome(router: Router, request: web.BaseRequest, _h: tuple[tuple[str, str], ...]) -> web.Response:
    return web.Response(
        text=f"Welcome to Waiter (router {router.settings.router_id}).\n", headers={"server": SERVER_HEADER}
    )


@access(Access.PUBLIC)
async def favicon(router: Router, request: web.BaseRequest, _h: tuple[tuple[str, str], ...]) -> web.Response:
    return web.Response(status=204)


@access(Access.AUTHENTICATED)
async def waiter_auth(router: Router, request: web.BaseRequest, _h: tuple[tuple[str, str], ...]) -> web.Response:
    """Who the router takes the caller for."""
    caller = router.caller_of(request)
    headers = {
        "server": SERVER_HEADER,
        "x-waiter-auth-user": caller.user,
        "x-waiter-auth-principal": caller.principal,
        "x-waiter-auth-method": caller.method,
    }
    return web.Response(text=caller.user, headers=headers)


# path -> method -> handler; every handler declares its policy (waiter.auth.policy). The table of every module's
# endpoints is built by waiter.api.routes.
EXACT: dict[str, dict[str, Handler]] = {
    "/": {"GET": welcome},
    "/favicon.ico": {"GET": favicon},
    "/status": {"GET": status},
    "/settings": {"GET": settings},
    "/service-id": {"GET": service_id},
    "/app-name": {"GET": service_id},
    "/waiter-auth": {"GET": waiter_auth},
}

# Paths that are always the router's own, whatever the Host and headers (docs/api.md §0.2 rule 1).
ALWAYS_API = {"/service-id", "/app-name", "/waiter-ping", "/token", "/tokens", "/waiter-auth"}
# Path prefixes that are always the router's own (rule 2).
API_PREFIXES = ("/waiter-interstitial/", "/waiter-async/")


def service_id_of(path: str) -> str | None:
    """The service a /apps/{id}... path names."""
    if not path.startswith("/apps/"):
        return None
    return path[len("/apps/") :].split("/", 1)[0] or None
