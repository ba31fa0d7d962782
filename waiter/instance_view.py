"""An instance as Waiter's JSON shows it (docs/api.md §7.4): used by the API's views and by the record a deleted
service leaves behind (waiter.registry), so it sits below both."""

from __future__ import annotations

from typing import Any

from waiter.errors import iso_millis
from waiter.instances import TrackedInstance
from waiter.scheduler.base import Instance, InstanceFlag


def instance_json(
    instance: Instance, tracked: TrackedInstance | None = None, *, expired: bool = False
) -> dict[str, Any]:
    healthy = bool(tracked and tracked.healthy)
    flags = set(instance.flags)
    if expired:
        flags.add(InstanceFlag.EXPIRED)
    body: dict[str, Any] = {
        "id": instance.id,
        "service-id": instance.service_id,
        "started-at": iso_millis(instance.started_at),
        "healthy?": healthy,
        "status": "Healthy" if healthy else "Unhealthy",
        "host": instance.host,
        "port": instance.port,
        "extra-ports": list(instance.extra_ports),
        "log-directory": instance.log_directory,
        "flags": sorted(flags),
        "killed?": instance.killed,
        "failed?": instance.failed,
    }
    if tracked is not None and tracked.last_status is not None:
        body["health-check-status"] = tracked.last_status
    if instance.exit_code is not None:
        body["exit-code"] = instance.exit_code
    if instance.message:
        body["message"] = instance.message
    body.update(instance.extras)
    return body
