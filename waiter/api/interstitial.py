"""GET /waiter-interstitial<path>: the page a browser sees while its service starts (waiter.interstitial)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aiohttp import web

from waiter.api.views import service_status
from waiter.auth import Access, access
from waiter.interstitial import PREFIX, original, page, with_bypass
from waiter.version import SERVER_HEADER

if TYPE_CHECKING:
    from waiter.api.admin import Handler
    from waiter.router import Router

Headers = tuple[tuple[str, str], ...]


@access(Access.AUTHENTICATED)
async def interstitial_page(router: Router, request: web.BaseRequest, headers: Headers) -> web.Response:
    host = request.headers.get("host")
    caller = router.caller_of(request)
    resolved, options = router.resolve_for(headers, host, caller)
    router.check_maintenance(resolved)
    service = router.serving(resolved, options, headers, host, user=caller.user)  # started, if the first did not
    target, now = original(request.raw_path), time.time()
    if service.tracker.healthy_count() > 0 or now >= service.registered_at + service.interstitial_secs:
        return web.Response(status=303, headers={"location": with_bypass(target, now), "server": SERVER_HEADER})
    name = str(resolved.core.get("name") or (resolved.source_tokens[0][0] if resolved.source_tokens else service.id))
    body = page(name, service.id, service_status(service), now - service.registered_at, service.interstitial_secs)
    return web.Response(
        text=body,
        content_type="text/html",
        headers={"server": SERVER_HEADER, "cache-control": "no-store", "x-waiter-service-id": service.id},
    )


PREFIXES: list[tuple[str, dict[str, Handler]]] = [(PREFIX, {"GET": interstitial_page})]
