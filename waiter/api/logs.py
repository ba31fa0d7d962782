"""GET /apps/{id}/logs?instance-id=I&host=H[&directory=D] (docs/api.md §1.7, §7.4): the files of an instance's
sandbox, for the people who manage the service. Only inside that sandbox: a directory outside it is a 400."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from waiter.api.common import base_url, json_response
from waiter.auth import Permissions
from waiter.debug import log_path
from waiter.errors import WaiterError
from waiter.scheduler.base import Instance
from waiter.service import Service

if TYPE_CHECKING:
    from waiter.router import Router


def _instance(service: Service, instance_id: str) -> Instance | None:
    state = service.scheduler.service_state(service.id)
    if state is None:
        return None
    return next((i for i in (*state.active, *state.failed, *state.killed) if i.id == instance_id), None)


async def logs(router: Router, request: web.BaseRequest, service_id: str) -> web.Response:
    service = router.registry.get(service_id)
    if service is None:
        raise WaiterError(404, "Service not found", error_class="waiter.ServiceUnknown", service_id=service_id)
    user = router.caller_of(request).user
    owner = service.resolved.effective.get("run-as-user")
    if user != owner and not Permissions.of(router.settings).is_admin(user):
        raise WaiterError(
            403,
            f"User '{user}' cannot read the logs of {service_id}: only its run-as-user '{owner}' or a token admin may.",
            service_id=service_id,
        )
    instance_id = request.query.get("instance-id", "")
    instance = _instance(service, instance_id) if instance_id else None
    if instance is None or not instance.log_directory:
        raise WaiterError(
            404,
            f"instance-id {instance_id!r} names no instance of {service_id} with a sandbox.",
            service_id=service_id,
        )
    relative = request.query.get("directory", "")
    found = await asyncio.to_thread(_listing, instance.log_directory, relative)
    if isinstance(found, tuple):
        raise WaiterError(found[0], found[1], service_id=service_id)
    base = base_url(request)
    entries: list[dict[str, Any]] = []
    for name, inner, size, uri in found:
        if size is None:
            url = base + log_path(service_id, instance.id, instance.host, inner)
            entries.append({"name": name, "type": "directory", "url": url})
        else:
            entries.append({"name": name, "type": "file", "size": size, "url": uri})
    return json_response(entries)


def _listing(sandbox: str, relative: str) -> list[tuple[str, str, int | None, str]] | tuple[int, str]:
    """(name, path inside the sandbox, size or None for a directory, file URI) of a sandbox directory's entries, or
    why it cannot be listed. Runs in a thread: it touches the file system."""
    root = Path(sandbox).resolve()
    folder = (root / relative).resolve()
    if not folder.is_relative_to(root):
        return 400, f"directory {relative!r} is outside the instance's sandbox {root}."
    if not folder.is_dir():
        return 404, f"directory {relative!r} does not exist in the instance's sandbox {root}."
    found: list[tuple[str, str, int | None, str]] = []
    for child in sorted(folder.iterdir()):
        inner = str(child.relative_to(root))
        if child.is_dir():
            found.append((child.name, inner, None, child.as_uri()))
        elif child.is_file():
            found.append((child.name, inner, child.stat().st_size, child.as_uri()))
    return found
