"""/waiter-async/status|result|complete/... (waiter.async_requests): any router proxies them to the instance the
path names, once it checked that instance belongs to the named service."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web

from waiter.async_requests import PREFIX, AsyncPath, backend_location, parse
from waiter.auth import Access, access
from waiter.errors import WaiterError
from waiter.upstream import UpstreamError
from waiter.version import SERVER_HEADER

if TYPE_CHECKING:
    from waiter.api.admin import Handler
    from waiter.router import Router

log = logging.getLogger(__name__)
Headers = tuple[tuple[str, str], ...]
_DROP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "location"})


def _target(router: Router, raw_path: str) -> AsyncPath:
    found = parse(raw_path)
    if found is None:
        raise WaiterError(
            404,
            f"{raw_path} is not an async request path: /waiter-async/status|result|complete/<request-id>/"
            "<router-id>/<service-id>/<host>/<port>/<location>.",
        )
    service = router.registry.get(found.service_id)
    known = service is not None and any(
        t.instance.host == found.host and t.instance.port == found.port for t in service.tracker.tracked.values()
    )
    if not known:
        raise WaiterError(
            410,
            f"The instance {found.host}:{found.port} of service {found.service_id} that ran this async request is "
            "gone.",
            service_id=found.service_id,
        )
    return found


@access(Access.AUTHENTICATED)
async def async_request(router: Router, request: web.BaseRequest, _h: Headers) -> web.Response:
    target = _target(router, request.raw_path)
    if target.kind == "complete":
        # The slot is free now, whatever the backend says (on another router: at the owner's next status check).
        await router.complete_async(target.request_id, target.router_id)
    try:
        response = await router.pool.request(
            target.host,
            target.port,
            request.method,
            target.location,
            [("x-cid", target.request_id)],
            None,
            idle_timeout=30.0,
        )
        async with response:
            body = await response.read_all(1 << 24)
            status, headers = response.status, response.headers
    except UpstreamError as exc:
        where = f"{target.host}:{target.port}"
        log.warning("async request %s: the instance at %s did not answer: %s", target.request_id, where, exc)
        raise WaiterError(
            502, f"The instance at {where} that ran this async request did not answer.", service_id=target.service_id
        ) from None
    out = {k: v for k, v in headers if k.lower() not in _DROP}
    location = next((v for k, v in headers if k.lower() == "location"), None)
    if location is not None:
        path = backend_location(location, target.location.split("?", 1)[0])
        # The status URL points at the result: that is served through the router too.
        out["location"] = target.with_kind("result", path) if path is not None else location
    out["server"] = SERVER_HEADER
    out.setdefault("x-waiter-service-id", target.service_id)
    return web.Response(status=status, body=body, headers=out)


PREFIXES: list[tuple[str, dict[str, Handler]]] = [
    (PREFIX, {"GET": async_request, "DELETE": async_request, "POST": async_request})
]
