"""``/dashboard``: a live page of the services, fed by server-sent events (no build step, no CDN).

``GET /dashboard`` is the page (``waiter/dashboard/index.html``, its script and style under ``/dashboard/``);
``GET /dashboard/events`` streams one snapshot a second as ``data: <json>`` lines: every service with its status,
instances by state, queue and outstanding counts, and the leader's last decision; with ``?service=<id>`` also that
service's instances, last deployment error and recent scaling decisions with their reasons. Every route needs an
authenticated caller, like the admin API (waiter.auth's policies, checked before dispatch). A stream ends after
``STREAM_SECS`` (the browser reconnects).
"""

from __future__ import annotations

import asyncio
import json
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from waiter.api.metrics import instance_counts
from waiter.auth import Access, access
from waiter.errors import WaiterError

if TYPE_CHECKING:
    from waiter.api.admin import Handler
    from waiter.router import Router
    from waiter.service import Service

INTERVAL_SECS = 1.0
STREAM_SECS = 300.0
_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
_NO_STORE = {"cache-control": "no-store"}


def _static(name: str) -> bytes:
    return resources.files("waiter.dashboard").joinpath(name).read_bytes()


def _status(service: Service, healthy: int) -> str:
    if service.deployment_error:
        return "Failing"
    return "Running" if healthy else "Starting"


def snapshot(router: Router, selected: str | None) -> dict[str, Any]:
    """What the page shows, as JSON (pure reading of the router's state)."""
    autoscaler = router.autoscaler
    services = []
    for sid, service in sorted(router.registry.services.items()):
        counts = instance_counts(service)
        res = service.reservations
        decision = autoscaler.decisions.get(sid) if autoscaler.is_leader else None
        scheduled = service.scheduler.service_state(sid)
        services.append({
            "id": sid,
            "name": str(service.resolved.effective.get("name") or ""),
            "tokens": [name for name, _ in service.resolved.source_tokens],
            "status": _status(service, counts["healthy"]),
            "instances": counts,
            "requested": scheduled.requested if scheduled else 0,
            "outstanding": res.outstanding,
            "queued": res.queued,
            "requests": service.total_requests,
            "scaling": None if decision is None else {
                "state": decision.scaling_state, "cause": decision.cause, "reason": decision.reason,
                "target": round(decision.state.target, 2),
            },
        })
    body: dict[str, Any] = {"time": time.time(), "router-id": router.settings.router_id, "services": services}
    chosen = router.registry.services.get(selected) if selected else None
    if chosen is not None:
        body["service"] = _detail(router, chosen)
    return body


def _detail(router: Router, service: Service) -> dict[str, Any]:
    instances = [
        {
            "id": iid,
            "host": t.instance.host,
            "port": t.instance.port,
            "started-at": t.instance.started_at,
            "healthy": t.healthy,
            "expired": t.expired,
            "in-use": service.reservations.in_use(iid),
        }
        for iid, t in sorted(service.tracker.tracked.items(), key=lambda item: item[1].instance.started_at)
    ]
    history = router.autoscaler.history.get(service.id, ())
    return {
        "id": service.id,
        "deployment-error": service.deployment_error,
        "instances": instances,
        "decisions": [
            {"time": at, "state": d.scaling_state, "cause": d.cause, "scale-to": d.scale_to, "reason": d.reason}
            for at, d in reversed(history)
        ],
    }


@access(Access.AUTHENTICATED)
async def page(router: Router, request: web.BaseRequest, _h: tuple[tuple[str, str], ...]) -> web.Response:
    return web.Response(body=_static("index.html"), content_type="text/html", charset="utf-8", headers=_NO_STORE)


@access(Access.AUTHENTICATED)
async def asset(router: Router, request: web.BaseRequest, _h: tuple[tuple[str, str], ...]) -> web.StreamResponse:
    name = request.path.removeprefix("/dashboard/")
    if name == "events":
        return await events(router, request)
    kind = _FILES.get(name)
    if kind is None:
        raise WaiterError(404, f"The dashboard has no file {name!r}; it has {', '.join(sorted(_FILES))} and events.")
    return web.Response(body=_static(name), content_type=kind, charset="utf-8", headers=_NO_STORE)


async def events(router: Router, request: web.BaseRequest) -> web.StreamResponse:
    selected = request.query.get("service") or None
    response = web.StreamResponse(headers={"content-type": "text/event-stream", **_NO_STORE})
    await response.prepare(request)
    deadline = time.monotonic() + STREAM_SECS
    try:
        while time.monotonic() < deadline and not router.draining:  # a stopping router does not wait for pages
            data = json.dumps(snapshot(router, selected), separators=(",", ":"))
            await response.write(f"data: {data}\n\n".encode())
            await asyncio.sleep(INTERVAL_SECS)
    except ConnectionResetError:
        pass  # the page went away
    return response


EXACT: dict[str, dict[str, Handler]] = {"/dashboard": {"GET": page}}
PREFIXES: list[tuple[str, dict[str, Handler]]] = [("/dashboard/", {"GET": asset})]
