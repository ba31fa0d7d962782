"""/state: what this router knows, by component (docs/api.md §1.10). Waiter's tests read /state/maintainer for the
live routers; the other components are for people debugging a router."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from waiter.api.common import base_url, json_response
from waiter.auth import Access, access
from waiter.errors import WaiterError
from waiter.service import Service

if TYPE_CHECKING:
    from waiter.api.admin import Handler
    from waiter.router import Router

Headers = tuple[tuple[str, str], ...]


def routers(router: Router, base: str) -> dict[str, str]:
    """Every live router's URL (its heartbeat in the shared state), this one included."""
    found = {router.settings.router_id: base}
    if router.coordinator is not None:
        for rid, info in router.coordinator.view.routers.items():
            url = info.get("url")
            if isinstance(url, str) and rid != router.settings.router_id:
                found[rid] = url
    return dict(sorted(found.items()))


def _maintainer(router: Router, base: str) -> dict[str, Any]:
    coordinator = router.coordinator
    return {
        "routers": routers(router, base),
        "services": sorted(router.registry.services),
        "inactive-services": sorted(router.registry.inactive),
        "shared-state": router.shared_state_status(),
        "blocked-instances": sorted(coordinator.blocked) if coordinator else [],
    }


def _autoscaler(router: Router, base: str) -> dict[str, Any]:
    autoscaler = router.autoscaler
    if autoscaler is None:
        return {"leader?": False, "services": {}}
    return {
        "leader?": autoscaler.is_leader,
        "services": {
            sid: {
                "scaling-state": decision.scaling_state,
                "cause": decision.cause,
                "reason": decision.reason,
                **({"state": s.to_json()} if (s := autoscaler.states.get(sid)) else {}),
            }
            for sid, decision in sorted(autoscaler.decisions.items())
        },
    }


def _scheduler(router: Router, base: str) -> dict[str, Any]:
    scheduler = router.registry.scheduler
    services: dict[str, Any] = {}
    for sid in sorted(scheduler.service_ids()):
        state = scheduler.service_state(sid)
        if state is not None:
            services[sid] = {
                "requested": state.requested,
                "scheduled": state.scheduled,
                "active": [i.id for i in state.active],
                "failed": len(state.failed),
                "killed": len(state.killed),
                **({"error": state.error} if state.error else {}),
            }
    return {"kind": scheduler.kind, "services": services}


def _services(router: Router, base: str) -> dict[str, Any]:
    return {s.id: _service(s) for s in router.registry.services.values()}


def _service(service: Service) -> dict[str, Any]:
    res = service.reservations
    return {
        "outstanding": res.outstanding,
        "queued": res.queued,
        "in-flight": res.in_flight,
        "routable-instances": res.routable_ids(),
        "healthy-instances": service.tracker.healthy_count(),
        "tracked": {
            iid: {"healthy?": t.healthy, "expired?": t.expired, "failures": t.failures}
            for iid, t in service.tracker.tracked.items()
        },
        **({"deployment-error": service.deployment_error} if service.deployment_error else {}),
    }


COMPONENTS: dict[str, Callable[[Router, str], dict[str, Any]]] = {
    "maintainer": _maintainer,
    "autoscaler": _autoscaler,
    "scheduler": _scheduler,
    "services": _services,
}


@access(Access.AUTHENTICATED)
async def state(router: Router, request: web.BaseRequest, _h: Headers) -> web.Response:
    base = base_url(request)
    return json_response(
        {
            "router-id": router.settings.router_id,
            "routers": routers(router, base),
            "details": {name: f"{base}/state/{name}" for name in COMPONENTS},
        }
    )


@access(Access.AUTHENTICATED)
async def state_component(router: Router, request: web.BaseRequest, _h: Headers) -> web.Response:
    name = request.path[len("/state/") :].strip("/")
    component = COMPONENTS.get(name)
    if component is not None:
        body = component(router, base_url(request))
    elif (service := router.registry.get(name)) is not None:
        body = _service(service)
    else:
        known = ", ".join(COMPONENTS)
        raise WaiterError(404, f"No state component or service named {name}; components are {known}.")
    return json_response({"router-id": router.settings.router_id, "state": body})


EXACT: dict[str, dict[str, Handler]] = {"/state": {"GET": state}}
PREFIXES: list[tuple[str, dict[str, Handler]]] = [("/state/", {"GET": state_component})]
