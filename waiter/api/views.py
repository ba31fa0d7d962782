"""JSON views of services and instances, shaped as Waiter's /apps answers them (docs/api.md §1.6, §1.7, §7.4)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from waiter.errors import iso_millis
from waiter.instance_view import instance_json
from waiter.lifecycle import is_expired
from waiter.scheduler.base import Instance
from waiter.service import Service


def service_status(service: Service) -> str:
    state = service.scheduler.service_state(service.id)
    if service.deployment_error is not None:
        return "Failing"
    if state is None or (state.requested == 0 and state.scheduled == 0):
        return "Inactive"
    if service.tracker.healthy_count() == 0:
        return "Starting"
    return "Running"


def scaling_state(service: Service) -> str:
    state = service.scheduler.service_state(service.id)
    if state is None:
        return "stable"
    if state.requested > state.scheduled:
        return "scale-up"
    if state.requested < state.scheduled:
        return "scale-down"
    return "stable"


@dataclass(frozen=True)
class Cluster:
    """What this router knows of the others, for /apps: their counts and how many routers there are."""

    outstanding_elsewhere: Mapping[str, int] = field(default_factory=dict)
    total_elsewhere: Mapping[str, int] = field(default_factory=dict)
    last_request_time: Mapping[str, float] = field(default_factory=dict)
    scaling_states: Mapping[str, str] = field(default_factory=dict)
    num_routers: int = 1
    minute_secs: float = 60.0  # the length of a minute of instance-expiry-mins (settings lifecycle.minute-secs)

    def expired(self, service: Service, now: float) -> set[str]:
        """The service's running instances that are expired now (flagged, or older than instance-expiry-mins)."""
        expiry = service.resolved.description.instance_expiry_mins
        return {
            iid
            for iid, t in service.tracker.tracked.items()
            if is_expired(t.instance, expiry, t.expired, now, self.minute_secs)
        }


def _common(service: Service, effective: bool, cluster: Cluster) -> dict[str, Any]:
    state = service.scheduler.service_state(service.id)
    running = state.scheduled if state else 0
    cpus, mem = service.resolved.description.cpus, service.resolved.description.mem
    body: dict[str, Any] = {
        "service-id": service.id,
        "status": service_status(service),
        "request-metrics": {
            "outstanding": service.reservations.outstanding + cluster.outstanding_elsewhere.get(service.id, 0),
            "total": service.total_requests + cluster.total_elsewhere.get(service.id, 0),
        },
        "resource-usage": {"cpus": running * cpus, "mem": running * mem},
        "service-description": dict(service.resolved.core),
        "last-request-time": iso_millis(
            max(service.last_request_time or 0.0, cluster.last_request_time.get(service.id, 0.0)) or None
        ),
        "scaling-state": cluster.scaling_states.get(service.id) or scaling_state(service),
    }
    sources = [{"token": t, "version": v} for t, v in service.resolved.source_tokens]
    if sources:
        body["source-tokens"] = [sources]
    if service.deployment_error:
        body["deployment-error-message"] = f"Deployment error: {service.deployment_error}"
    if effective:
        body["effective-parameters"] = dict(service.resolved.effective)
    return body


def service_summary(
    service: Service, base_url: str, cluster: Cluster, *, effective: bool, healthy_instances: bool
) -> dict[str, Any]:
    healthy = service.tracker.healthy_count()
    body = _common(service, effective, cluster)
    body["url"] = f"{base_url}/apps/{service.id}"
    body["instance-counts"] = {
        "healthy-instances": healthy,
        "unhealthy-instances": len(service.tracker.tracked) - healthy,
        "expired-instances": len(cluster.expired(service, time.time())),
    }
    if healthy_instances:
        body["instances"] = {
            "healthy-instances": [
                {
                    "id": t.instance.id,
                    "host": t.instance.host,
                    "port": t.instance.port,
                    "started-at": iso_millis(t.instance.started_at),
                }
                for t in service.tracker.tracked.values()
                if t.healthy
            ]
        }
    return body


def service_detail(service: Service, router_id: str, cluster: Cluster, *, effective: bool) -> dict[str, Any]:
    body = _common(service, effective, cluster)
    state = service.scheduler.service_state(service.id)
    tracked = service.tracker.tracked
    expired = cluster.expired(service, time.time())
    active = [instance_json(i, tracked.get(i.id), expired=i.id in expired) for i in (state.active if state else ())]
    active.sort(key=lambda i: (not i["healthy?"], i["started-at"] or "", i["id"]))

    def ended(instances: tuple[Instance, ...]) -> list[dict[str, Any]]:
        return [instance_json(i) for i in sorted(instances, key=lambda i: (i.started_at, i.id))][-10:]

    body.update(
        {
            "router-id": router_id,
            "num-routers": cluster.num_routers,
            "num-active-instances": len(active),
            "instances": {
                "active-instances": active,
                "failed-instances": ended(state.failed) if state else [],
                "killed-instances": ended(state.killed) if state else [],
            },
        }
    )
    return body


def inactive_detail(record: Mapping[str, Any], router_id: str, cluster: Cluster, *, effective: bool) -> dict[str, Any]:
    """/apps/{id} of a deleted service (Registry.inactive_record): Inactive, nothing running, what it had."""
    service = record["service"]
    body: dict[str, Any] = {
        "service-id": service["service-id"],
        "status": "Inactive",
        "request-metrics": {"outstanding": 0, "total": 0},
        "resource-usage": {"cpus": 0, "mem": 0},
        "service-description": dict(service["core"]),
        "last-request-time": iso_millis(record.get("last-request-time")),
        "scaling-state": "stable",
        "router-id": router_id,
        "num-routers": cluster.num_routers,
        "num-active-instances": 0,
        "instances": {
            "active-instances": [],
            "failed-instances": list(record.get("failed-instances", [])),
            "killed-instances": list(record.get("killed-instances", [])),
        },
    }
    sources = [{"token": t, "version": v} for t, v in service.get("source-tokens", [])]
    if sources:
        body["source-tokens"] = [sources]
    if effective:
        body["effective-parameters"] = dict(service["effective"])
    return body
