"""Service controls (docs/api.md §1.1, §3.6): ``/apps/{id}/override`` changes how a service scales without a new
service id, ``/apps/{id}/suspend|resume`` stops and restarts serving it. Both are shared through the state, so
every router applies them, and shown in ``/apps/{id}``. Only the service's owners (its run-as-user, an owner of one
of its tokens) or a token admin may change them: the service-owner policy of the endpoints (waiter.auth.policy).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from waiter.api.common import json_response, read_json
from waiter.coordinator import OVERRIDES, SUSPENDED
from waiter.descriptor import DescriptorError
from waiter.errors import WaiterError, iso_millis
from waiter.service import Service
from waiter.state import StateUnavailable
from waiter.validation import validate_service

if TYPE_CHECKING:
    from waiter.router import Router

# What an override may change: how the service scales, expires and idles, never what runs (that is a new version).
OVERRIDABLE = frozenset(
    {
        "min-instances",
        "max-instances",
        "scale-factor",
        "scale-up-factor",
        "scale-down-factor",
        "jitter-threshold",
        "expired-instance-restart-rate",
        "instance-expiry-mins",
        "idle-timeout-mins",
    }
)


def _service(router: Router, service_id: str) -> Service:
    service = router.registry.get(service_id)
    if service is None:
        raise WaiterError(404, "Service not found", error_class="waiter.ServiceUnknown", service_id=service_id)
    return service


def _manager(router: Router, request: web.BaseRequest) -> str:
    """The caller, who may change the service: the front door checked the endpoint's service-owner policy (its
    run-as-user, an owner of one of its tokens, or a token admin) before the handler ran."""
    return router.caller_of(request).user


def _stamp(user: str, **fields: Any) -> dict[str, Any]:
    return {**fields, "last-updated-by": user, "time": iso_millis(time.time())}


async def _set(router: Router, kind: str, service: Service, record: dict[str, Any] | None) -> None:
    if router.coordinator is None:
        raise WaiterError(503, "The router is starting; try again in a moment.")
    try:
        await router.coordinator.set_control(kind, service, record)
    except StateUnavailable as exc:
        raise WaiterError(503, f"The change could not be shared with the other routers: {exc}") from None


def shown(service: Service) -> dict[str, Any]:
    """The /apps/{id} fields of the controls: both always present, as Waiter shows them."""
    return {
        "service-description-overrides": service.override or {"overrides": {}},
        "service-suspended-state": service.suspension or {"suspended": False},
    }


async def get_override(router: Router, request: web.BaseRequest, service_id: str) -> web.Response:
    service = _service(router, service_id)
    return json_response({"service-id": service.id, **(service.override or {"overrides": {}})})


async def post_override(router: Router, request: web.BaseRequest, service_id: str) -> web.Response:
    service = _service(router, service_id)
    user = _manager(router, request)
    body = await read_json(request, router.settings.max_api_body_bytes)
    if not isinstance(body, dict) or not body:
        raise WaiterError(400, "The override must be a non-empty JSON object of service parameters.")
    refused = sorted(set(body) - OVERRIDABLE)
    if refused:
        raise WaiterError(
            400,
            f"Cannot override {', '.join(refused)}: an override may change only {', '.join(sorted(OVERRIDABLE))}.\n"
            "Change anything else with a new version of the token.",
        )
    merged = {**service.base.effective, **body}
    try:
        validate_service(merged, max_cpus=router.settings.max_cpus, max_mem=router.settings.max_mem)
    except DescriptorError as exc:
        raise WaiterError(400, str(exc)) from None
    await _set(router, OVERRIDES, service, _stamp(user, overrides=body))
    return json_response({"service-id": service.id, "success": True, **(service.override or {})})


async def delete_override(router: Router, request: web.BaseRequest, service_id: str) -> web.Response:
    service = _service(router, service_id)
    await _set(router, OVERRIDES, service, None)
    return json_response({"service-id": service.id, "success": True, "overrides": {}})


async def suspend(router: Router, request: web.BaseRequest, service_id: str) -> web.Response:
    service = _service(router, service_id)
    user = _manager(router, request)
    await _set(router, SUSPENDED, service, _stamp(user, suspended=True))
    return json_response({"service-id": service.id, "success": True, **(service.suspension or {})})


async def resume(router: Router, request: web.BaseRequest, service_id: str) -> web.Response:
    service = _service(router, service_id)
    await _set(router, SUSPENDED, service, None)
    return json_response({"service-id": service.id, "success": True, "suspended": False})


def suspended_error(service: Service) -> WaiterError:
    return WaiterError(503, "Service has been suspended", error_class="waiter.Suspended", service_id=service.id)
