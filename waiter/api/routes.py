"""The admin API's route table, declared in one place and built once by the composition root (waiter.app).

Each endpoint module declares its own ``EXACT`` (path -> method -> handler) and ``PREFIXES`` (tried in order when
no exact path matches); ``admin_routes`` gathers them, with no registration at import time, and refuses to build a
table holding an endpoint that declared no access policy (waiter.auth), so no endpoint can skip authorization.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from waiter.api import admin, async_api, dashboard, interstitial, metrics, services, state, tokens
from waiter.api.admin import Handler
from waiter.auth import Access, policy_of
from waiter.errors import WaiterError

if TYPE_CHECKING:
    from waiter.router import Router

Methods = Mapping[str, Handler]


@dataclass(frozen=True)
class RouteTable:
    exact: dict[str, Methods]
    prefixes: tuple[tuple[str, Methods], ...]

    def find(self, path: str) -> Methods | None:
        handlers = self.exact.get(path)
        if handlers is not None:
            return handlers
        for prefix, methods in self.prefixes:
            if path.startswith(prefix):
                return methods
        return None

    def routes(self) -> list[tuple[str, str, Handler]]:
        """Every (path or prefix, method, handler) of the table."""
        table = [*self.exact.items(), *self.prefixes]
        return [(path, method, handler) for path, methods in table for method, handler in methods.items()]

    def policy(self, path: str, method: str) -> Access:
        """Who may call ``method path``; paths and methods the table does not have need an authenticated caller
        (they are answered 404 or 405 after authentication, so unknown paths reveal nothing to strangers)."""
        methods = self.find(path)
        handler = methods.get("GET" if method == "HEAD" else method) if methods is not None else None
        found = policy_of(handler) if handler is not None else None
        return found or Access.AUTHENTICATED

    async def dispatch(
        self, router: Router, request: web.BaseRequest, headers: tuple[tuple[str, str], ...]
    ) -> web.StreamResponse:
        methods = self.find(request.path)
        if methods is None:
            raise WaiterError(404, "Not found")
        handler = methods.get("GET" if request.method == "HEAD" else request.method)
        if handler is None:
            allowed = ", ".join(sorted(methods))
            raise WaiterError(
                405,
                f"Method {request.method} is not allowed on {request.path}; use {allowed}.",
                headers={"allow": allowed},
            )
        return await handler(router, request, headers)


def admin_routes() -> RouteTable:
    table = RouteTable(
        exact={
            **admin.EXACT,
            "/metrics": {"GET": metrics.metrics},
            **services.EXACT,
            **tokens.EXACT,
            **state.EXACT,
            **dashboard.EXACT,
        },
        prefixes=(
            *services.PREFIXES,
            *state.PREFIXES,
            *interstitial.PREFIXES,
            *dashboard.PREFIXES,
            *async_api.PREFIXES,
        ),
    )
    undeclared = [f"{method} {path}" for path, method, handler in table.routes() if policy_of(handler) is None]
    if undeclared:
        raise RuntimeError(f"Endpoints without an access policy (decorate them with @access): {undeclared}")
    return table
