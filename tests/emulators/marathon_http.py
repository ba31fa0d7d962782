"""The Marathon emulator's plumbing: shared keys and helpers, basic auth, fault injection and emulator controls.

The controls live outside ``/v2`` and are never part of Marathon: see ``tests.emulators.marathon``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.emulators.behaviours import switch
from tests.emulators.faults import Fault, take_fault
from tests.emulators.marathon_cluster import Cluster, Task
from tests.emulators.marathon_validation import invalid_json

CLUSTER = web.AppKey("cluster", Cluster)
LOCK_MESSAGE = (
    "App is locked by one or more deployments. Override with the option '?force=true'. "
    "View details at '/v2/deployments/<DEPLOYMENT_ID>'."
)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class EmulatorSettings:
    username: str | None = None
    password: str | None = None
    leader: str = ""
    faults: list[Fault] = field(default_factory=list)
    behaviours: dict[str, str] = field(default_factory=dict)  # switched at start
    election_until: float = 0.0  # monotonic: a leader election goes on until then
    election_status: int = 503


SETTINGS = web.AppKey("settings", EmulatorSettings)


def error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"message": message, **extra}, status=status)


class Refused(Exception):
    """Answer with this Marathon error instead of going on."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def flag(request: web.Request, name: str, default: bool) -> bool:
    """Booleans in query strings, parsed case-insensitively as Marathon does."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() not in ("true", "false"):
        raise Refused(error(400, f"Query parameter '{name}' is '{raw}' but must be true or false."))
    return raw.lower() == "true"


async def read_json(request: web.Request) -> Any:
    text = await request.text()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise Refused(error(400, "Invalid JSON", details=invalid_json(str(exc)))) from exc


def task_json(cluster: Cluster, task: Task) -> dict[str, Any]:
    app = cluster.apps.get(task.app_id)
    return task.to_json(cluster.config, bool(app and app.definition.get("healthChecks")))


async def add_fault(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        return error(400, "a fault is a JSON object")
    request.app[SETTINGS].faults.append(Fault.from_json(body))
    return web.json_response({"faults": len(request.app[SETTINGS].faults)})


async def clear_faults(request: web.Request) -> web.Response:
    request.app[SETTINGS].faults.clear()
    return web.json_response({"faults": 0})


async def emulator_tasks(request: web.Request) -> web.Response:
    tasks = request.app[CLUSTER].tasks.values()
    return web.json_response(
        {
            "tasks": [
                {
                    "id": t.id,
                    "appId": t.app_id,
                    "state": t.state,
                    "pid": t.process.pid if t.process else None,
                    "user": t.user,
                    "sandbox": str(t.sandbox),
                }
                for t in tasks
            ]
        }
    )


async def interfere(request: web.Request) -> web.Response:
    cluster = request.app[CLUSTER]
    task = cluster.tasks.get(request.match_info["task"])
    if task is None:
        return error(404, f"Task '{request.match_info['task']}' does not exist")
    if request.match_info["what"] == "lose":
        cluster.interfere(task, signal.SIGKILL, lost=True)
    elif request.match_info["what"] == "oom":
        cluster.interfere(task, signal.SIGKILL, out_of_memory=True)
    else:
        body = await read_json(request) if request.can_read_body else {}
        name = str(body.get("signal", "KILL")).upper().removeprefix("SIG")
        cluster.interfere(task, signal.Signals[f"SIG{name}"])
    return web.json_response({"task": task_json(cluster, task)})


async def list_faults(request: web.Request) -> web.Response:
    faults = request.app[SETTINGS].faults
    return web.json_response({"faults": [vars(f) for f in faults]})


async def set_behaviours(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        return error(400, "behaviours are a JSON object")
    try:
        return web.json_response(switch(request.app[CLUSTER].behaviours, body))
    except ValueError as exc:
        return error(400, str(exc))


async def leader_election(request: web.Request) -> web.Response:
    body = await read_json(request)
    settings = request.app[SETTINGS]
    settings.election_status = int(body.get("status", 503))
    settings.election_until = time.monotonic() + float(body.get("for-ms", 1000)) / 1000
    return web.json_response({"status": settings.election_status})


async def unreachable(request: web.Request) -> web.Response:
    cluster = request.app[CLUSTER]
    task = cluster.tasks.get(request.match_info["task"])
    if task is None:
        return error(404, f"Task '{request.match_info['task']}' does not exist")
    body = await read_json(request) if request.can_read_body else {}
    task.reachable_again_at = time.monotonic() + float(body.get("for-ms", 1000)) / 1000
    return web.json_response({"task": task_json(cluster, task)})


def add_controls(app: web.Application) -> None:
    app.router.add_post("/emulator/behaviours", set_behaviours)
    app.router.add_post("/emulator/leader-election", leader_election)
    app.router.add_post("/emulator/tasks/{task}/unreachable", unreachable)
    app.router.add_get("/emulator/faults", list_faults)
    app.router.add_post("/emulator/faults", add_fault)
    app.router.add_delete("/emulator/faults", clear_faults)
    app.router.add_get("/emulator/tasks", emulator_tasks)
    app.router.add_post("/emulator/tasks/{task}/{what:kill|lose|oom}", interfere)


@web.middleware
async def marathon_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Refused as refused:
        return refused.response


@web.middleware
async def auth_and_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    if not request.path.startswith("/v2/"):
        return await handler(request)
    if settings.username is not None:
        expected = base64.b64encode(f"{settings.username}:{settings.password or ''}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            return web.json_response(
                {"message": "Invalid username or password."},
                status=401,
                headers={"WWW-Authenticate": 'Basic realm="Mesosphere Marathon"'},
            )
    if time.monotonic() < settings.election_until:
        if settings.election_status == 502:
            return error(502, "Could not proxy the request to the leader: the connection was refused")
        return error(503, "Could not determine the current leader")
    fault = take_fault(settings.faults, request)
    if fault is not None:
        await asyncio.sleep(fault.delay_ms / 1000)
        if fault.status == 409:
            return error(409, LOCK_MESSAGE, deployments=[{"id": "emulated-fault-deployment"}])
        if fault.status:
            extra = {} if fault.details is None else {"details": fault.details}
            return error(fault.status, fault.message or f"Emulated fault: HTTP {fault.status}", **extra)
    return await handler(request)
