"""A Marathon emulator: Marathon's v2 REST API over tasks that are real local processes (a test fixture).

Speaks the JSON of Marathon 1.x as ``docs/cluster-apis.md`` §1 records it: AppInfo with counts and deployments
always embedded and tasks / lastTaskFailure on request, Task objects and their states, ``Marathon-Deployment-Id``
headers with deploymentResult bodies, 201 on create, 409 for an existing app or a deployment lock, 404 and 422
messages. Tasks run on one emulated agent (see ``marathon_cluster``). Run it on its own from the project root::

    python -m tests.emulators.marathon --port 8080 --work-dir /tmp/marathon-emulator

Emulator-only controls (never part of Marathon) for tests, outside ``/v2``:

* ``POST /emulator/faults`` ``{"status": 409|500|..., "count": n, "delay-ms": m, "method": "PUT", "path": "/v2/apps"}``:
  the next ``n`` matching ``/v2`` requests wait ``delay-ms`` and then, if ``status`` is set, fail with it (a 409 as a
  deployment lock). ``DELETE /emulator/faults`` clears them.
* ``GET /emulator/faults``: the faults still pending.
* ``GET /emulator/tasks``: every task's process id and sandbox.
* ``POST /emulator/tasks/{task-id}/kill`` ``{"signal": "KILL"}``: the process dies from outside (TASK_FAILED);
  ``POST /emulator/tasks/{task-id}/lose``: its agent "loses" it (SIGKILL, reported as TASK_LOST);
  ``POST /emulator/tasks/{task-id}/oom``: its memory limit kills it ("Memory limit exceeded: ...", TASK_FAILED);
  ``POST /emulator/tasks/{task-id}/unreachable`` ``{"for-ms": n}``: listed as TASK_UNREACHABLE for a while.
* ``POST /emulator/behaviours`` ``{"health-kills": true, ...}``: switch real-Marathon behaviours (``Behaviours`` in
  ``marathon_cluster``; ``--behaviour NAME=VALUE`` at start).
* ``POST /emulator/leader-election`` ``{"status": 503|502, "for-ms": n}``: for that long every ``/v2`` request
  meets a leader election: 503 from a Marathon that knows no leader, 502 from one proxying to a leader that is gone.

Killing a task the app does not have: a well-formed id answers 404 without ``scale``, and with ``scale=true`` 200
and a deployment that changes nothing (Marathon scales by the tasks it found, none); a malformed id answers
``malformed-task-id-status`` (500 by default, as Marathon's id parser throws).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from tests.emulators.behaviours import switch
from tests.emulators.marathon_cluster import WELL_FORMED_SUFFIX, App, Cluster, ClusterConfig, Task, safe_path
from tests.emulators.marathon_http import (
    CLUSTER,
    LOCK_MESSAGE,
    SETTINGS,
    EmulatorSettings,
    Refused,
    add_controls,
    auth_and_faults,
    error,
    flag,
    marathon_errors,
    read_json,
    task_json,
)
from tests.emulators.marathon_validation import invalid_json, normalise, validate
from tests.emulators.runner import emulator_arguments, listening_socket, run, serve_until_stopped, work_dir

# -- helpers -------------------------------------------------------------------------------------------------------


def embeds(request: web.Request) -> set[str]:
    """``embed=apps.tasks`` / ``app.tasks`` -> {"tasks"}; ``failures`` is the old name of lastTaskFailure."""
    names = {value.split(".", 1)[-1] for value in request.query.getall("embed", [])}
    return {"lastTaskFailure" if n == "failures" else n for n in names}


def app_info(cluster: Cluster, app: App, embed: set[str]) -> dict[str, Any]:
    tasks = list(app.tasks.values())
    with_health = bool(app.definition.get("healthChecks"))
    healthy = [t for t in tasks if t.health and t.health.get("alive")]
    body: dict[str, Any] = {
        **app.definition,
        "version": app.version,
        "versionInfo": {"lastScalingAt": app.scaled_at, "lastConfigChangeAt": app.config_changed_at},
        "tasksStaged": sum(1 for t in tasks if t.state in ("TASK_STAGING", "TASK_STARTING")),
        "tasksRunning": sum(1 for t in tasks if t.state == "TASK_RUNNING"),
        "tasksHealthy": len(healthy),
        "tasksUnhealthy": sum(1 for t in tasks if t.health and not t.health.get("alive")),
        "deployments": [{"id": d.id} for d in cluster.locks(app.id)],
    }
    if "tasks" in embed:
        body["tasks"] = [t.to_json(cluster.config, with_health) for t in tasks]
    if "lastTaskFailure" in embed and app.last_failure:
        body["lastTaskFailure"] = app.last_failure
    if "readiness" in embed:
        body["readinessCheckResults"] = []
    return body


def deployment_result(deployment_id: str, version: str, status: int = 200) -> web.Response:
    return web.json_response(
        {"deploymentId": deployment_id, "version": version},
        status=status,
        headers={"Marathon-Deployment-Id": deployment_id},
    )


def check_unlocked(cluster: Cluster, app_id: str, force: bool) -> None:
    locks = cluster.locks(app_id)
    if locks and not force:
        raise Refused(error(409, LOCK_MESSAGE, deployments=[{"id": d.id} for d in locks]))


def find_app(cluster: Cluster, app_id: str) -> App:
    app = cluster.apps.get(app_id)
    if app is None:
        raise Refused(error(404, f"App '{app_id}' does not exist"))
    return app


def checked(body: Any, app_id: str | None = None) -> dict[str, Any]:
    """A complete, valid app definition from a request body (422 with details otherwise)."""
    if not isinstance(body, dict):
        raise Refused(error(400, "Invalid JSON", details=invalid_json("an app must be a JSON object")))
    definition = normalise({**body, "id": app_id} if app_id else body)
    problems = validate(definition)
    if problems:
        raise Refused(error(422, "Object is not valid", details=problems))
    return definition


# -- /v2/apps ------------------------------------------------------------------------------------------------------


async def list_apps(request: web.Request) -> web.Response:
    cluster = request.app[CLUSTER]
    wanted_id, wanted_cmd = request.query.get("id", ""), request.query.get("cmd", "")
    label = request.query.get("label", "")
    apps = [
        app
        for app in cluster.apps.values()
        if wanted_id.lower() in app.id.lower()
        and wanted_cmd in str(app.definition.get("cmd") or "")
        and _has_label(app, label)
    ]
    embed = embeds(request)
    return web.json_response({"apps": [app_info(cluster, app, embed) for app in apps]})


def _has_label(app: App, selector: str) -> bool:
    if not selector:
        return True
    key, _, value = selector.partition("==")
    labels = app.definition.get("labels") or {}
    return key in labels and (not value or labels[key] == value)


async def create_app(request: web.Request) -> web.Response:
    cluster = request.app[CLUSTER]
    definition = checked(await read_json(request))
    app_id = definition["id"]
    if app_id in cluster.apps:
        return error(409, f"An app with id [{app_id}] already exists.")
    check_unlocked(cluster, app_id, force=False)
    app = cluster.create(definition)
    deployment = cluster.deploy(app_id, "StartApplication", app.version)
    body = app_info(cluster, app, set())
    body["deployments"] = [{"id": deployment.id}]
    headers = {"Location": f"{request.url.origin()}/v2/apps{app_id}", "Marathon-Deployment-Id": deployment.id}
    return web.json_response(body, status=201, headers=headers)


async def app_resource(request: web.Request) -> web.StreamResponse:
    """Everything under /v2/apps/{app-id}: the app itself, its tasks, one task, its restart."""
    rest = "/" + request.match_info["rest"].strip("/")
    if match := re.fullmatch(r"(.+)/tasks/([^/]+)", rest):
        if request.method == "DELETE":
            return await kill_task(request, match.group(1), match.group(2))
    elif match := re.fullmatch(r"(.+)/tasks", rest):
        if request.method == "GET":
            return app_tasks(request, match.group(1))
        if request.method == "DELETE":
            return kill_tasks(request, match.group(1))
    elif match := re.fullmatch(r"(.+)/restart", rest):
        if request.method == "POST":
            return restart_app(request, match.group(1))
    else:
        handlers: dict[str, Callable[[web.Request, str], Awaitable[web.Response]]] = {
            "GET": get_app,
            "PUT": update_app,
            "PATCH": update_app,
            "DELETE": delete_app,
        }
        if request.method in handlers:
            return await handlers[request.method](request, rest)
    return error(405, f"{request.method} is not allowed on {request.path}")


async def get_app(request: web.Request, app_id: str) -> web.Response:
    cluster = request.app[CLUSTER]
    app = find_app(cluster, app_id)
    return web.json_response({"app": app_info(cluster, app, embeds(request))})


async def update_app(request: web.Request, app_id: str) -> web.Response:
    cluster = request.app[CLUSTER]
    body = await read_json(request)
    if isinstance(body, dict) and body.get("id") not in (None, app_id, app_id.lstrip("/")):
        return error(422, "Object is not valid", details=[{"path": "/id", "errors": ["must match the app id"]}])
    force = flag(request, "force", False)
    app = cluster.apps.get(app_id)
    if app is None:
        if request.method == "PATCH":
            return error(404, f"App '{app_id}' does not exist")
        check_unlocked(cluster, app_id, force)
        created = cluster.create(checked(body, app_id))
        deployment = cluster.deploy(app_id, "StartApplication", created.version)
        return deployment_result(deployment.id, deployment.version, 201)
    partial = flag(request, "partialUpdate", True)
    base = app.definition if partial else {}
    definition = checked({**base, **(body if isinstance(body, dict) else {})}, app_id)
    check_unlocked(cluster, app_id, force)
    changes = {k: v for k, v in definition.items() if app.definition.get(k) != v}
    action = cluster.update(app, changes)
    deployment = cluster.deploy(app_id, action, app.version)
    return deployment_result(deployment.id, deployment.version)


async def delete_app(request: web.Request, app_id: str) -> web.Response:
    cluster = request.app[CLUSTER]
    app = find_app(cluster, app_id)
    check_unlocked(cluster, app_id, flag(request, "force", True))
    cluster.delete(app)
    deployment = cluster.deploy(app_id, "StopApplication")
    return deployment_result(deployment.id, deployment.version)


def restart_app(request: web.Request, app_id: str) -> web.Response:
    cluster = request.app[CLUSTER]
    app = find_app(cluster, app_id)
    check_unlocked(cluster, app_id, flag(request, "force", False))
    cluster.restart(app)
    deployment = cluster.deploy(app_id, "RestartApplication")
    return deployment_result(deployment.id, deployment.version)


# -- tasks ---------------------------------------------------------------------------------------------------------


def app_tasks(request: web.Request, app_id: str) -> web.Response:
    cluster = request.app[CLUSTER]
    app = find_app(cluster, app_id)
    return web.json_response({"tasks": [task_json(cluster, t) for t in app.tasks.values()]})


def kill_flags(request: web.Request) -> tuple[bool, bool, bool]:
    scale, wipe = flag(request, "scale", False), flag(request, "wipe", False)
    if scale and wipe:
        raise Refused(error(400, "You cannot use scale and wipe at the same time."))
    return scale, wipe, flag(request, "force", False)


def kill_some(request: web.Request, app: App, tasks: list[Task]) -> web.Response:
    cluster = request.app[CLUSTER]
    scale, _, force = kill_flags(request)
    if scale:
        check_unlocked(cluster, app.id, force)
    killed = [task_json(cluster, t) for t in tasks]
    for task in tasks:
        cluster.kill(task, scale=scale)
    if scale:
        deployment = cluster.deploy(app.id, "ScaleApplication", app.version)
        return deployment_result(deployment.id, deployment.version)
    return web.json_response({"tasks": killed})


async def kill_task(request: web.Request, app_id: str, task_id: str) -> web.Response:
    cluster = request.app[CLUSTER]
    app = find_app(cluster, app_id)
    well_formed = re.fullmatch(rf"(.+?)\.({WELL_FORMED_SUFFIX.pattern})", task_id)
    if well_formed is None:
        status = cluster.behaviours.malformed_task_id_status
        return error(status, f"Unexpected error: invalid task id '{task_id}'")
    task = app.tasks.get(task_id)
    if task is None:
        scale, _, force = kill_flags(request)
        if not scale or well_formed.group(1) != safe_path(app_id):
            return error(404, f"Task '{task_id}' does not exist")
        check_unlocked(cluster, app.id, force)
        deployment = cluster.deploy(app.id, "ScaleApplication", app.version)  # kills none, scales by none
        return deployment_result(deployment.id, deployment.version)
    response = kill_some(request, app, [task])
    if response.headers.get("Marathon-Deployment-Id"):
        return response
    return web.json_response({"task": task_json(cluster, task)})


def kill_tasks(request: web.Request, app_id: str) -> web.Response:
    app = find_app(request.app[CLUSTER], app_id)
    host = request.query.get("host")
    config = request.app[CLUSTER].config
    return kill_some(request, app, [t for t in app.tasks.values() if host in (None, config.agent_host)])


async def list_tasks(request: web.Request) -> web.Response:
    cluster = request.app[CLUSTER]
    status = request.query.get("status")
    tasks = [t for t in cluster.tasks.values() if status is None or t.state == f"TASK_{status.upper()}"]
    return web.json_response({"tasks": [task_json(cluster, t) for t in tasks]})


async def delete_tasks(request: web.Request) -> web.Response:
    cluster = request.app[CLUSTER]
    body = await read_json(request)
    ids = body.get("ids") if isinstance(body, dict) else None
    if not isinstance(ids, list):
        return error(400, "Invalid JSON", details=invalid_json('expected {"ids": [task ids]}'))
    unknown = [i for i in ids if i not in cluster.tasks]
    if unknown:
        return error(400, f"Invalid task id '{unknown[0]}'. [Task does not exist]")
    by_app: dict[str, list[Task]] = {}
    for task_id in ids:
        by_app.setdefault(cluster.tasks[task_id].app_id, []).append(cluster.tasks[task_id])
    responses = [kill_some(request, find_app(cluster, app_id), tasks) for app_id, tasks in by_app.items()]
    if responses and responses[-1].headers.get("Marathon-Deployment-Id"):
        return responses[-1]
    return web.json_response({"tasks": [task_json(cluster, cluster.tasks[i]) for i in ids if i in cluster.tasks]})


# -- deployments, queue, info -------------------------------------------------------------------------------------


async def list_deployments(request: web.Request) -> web.Response:
    return web.json_response([d.to_json() for d in request.app[CLUSTER].deployments.values()])


async def cancel_deployment(request: web.Request) -> web.Response:
    cluster = request.app[CLUSTER]
    deployment_id = request.match_info["id"]
    if cluster.deployments.pop(deployment_id, None) is None:
        return error(404, f"DeploymentPlan {deployment_id} does not exist")
    if flag(request, "force", False):
        return web.Response(status=202)
    rollback = cluster.deploy("/", "RollbackDeployment")  # the emulator rolls nothing back; see module doc
    cluster.deployments.pop(rollback.id, None)
    return deployment_result(rollback.id, rollback.version)


async def queue(request: web.Request) -> web.Response:
    cluster = request.app[CLUSTER]
    now = time.monotonic()
    entries = [
        {
            "app": app_info(cluster, app, set()),
            "count": int(app.definition["instances"]) - len(app.live),
            "role": "*",
            "delay": {"timeLeftSeconds": max(0.0, app.launch_after - now), "overdue": now >= app.launch_after},
            "since": app.version,
            "processedOffersSummary": {"processedOffersCount": 0, "unusedOffersCount": 0},
        }
        for app in cluster.apps.values()
        if len(app.live) < int(app.definition["instances"])
    ]
    return web.json_response({"queue": entries})


async def info(request: web.Request) -> web.Response:
    cluster, settings = request.app[CLUSTER], request.app[SETTINGS]
    return web.json_response(
        {
            "name": "marathon",
            "version": "1.11.24-emulator",
            "elected": True,
            "leader": settings.leader,
            "frameworkId": cluster.config.framework_id,
            "marathon_config": {
                "master": "emulated",
                "mesos_role": "*",
                "mesos_user": cluster.config.mesos_user,
                "task_launch_timeout": 300000,
            },
            "http_config": {"http_port": int(settings.leader.rsplit(":", 1)[-1] or 0)},
        }
    )


async def leader(request: web.Request) -> web.Response:
    return web.json_response({"leader": request.app[SETTINGS].leader})


async def ping(request: web.Request) -> web.Response:
    return web.Response(text="pong")


# -- assembly ------------------------------------------------------------------------------------------------------


def build_app(config: ClusterConfig, settings: EmulatorSettings) -> web.Application:
    app = web.Application(middlewares=[marathon_errors, auth_and_faults])
    app[SETTINGS] = settings

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        cluster = Cluster(config)
        switch(cluster.behaviours, settings.behaviours)
        await cluster.start()
        app[CLUSTER] = cluster
        yield
        await cluster.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/ping", ping)
    app.router.add_get("/v2/info", info)
    app.router.add_get("/v2/leader", leader)
    app.router.add_get("/v2/apps", list_apps)
    app.router.add_post("/v2/apps", create_app)
    app.router.add_route("*", "/v2/apps/{rest:.+}", app_resource)
    app.router.add_get("/v2/tasks", list_tasks)
    app.router.add_post("/v2/tasks/delete", delete_tasks)
    app.router.add_get("/v2/deployments", list_deployments)
    app.router.add_delete("/v2/deployments/{id}", cancel_deployment)
    app.router.add_get("/v2/queue", queue)
    add_controls(app)
    return app


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = emulator_arguments(
        "tests.emulators.marathon",
        __doc__,
        port=8080,
        host_help="address to listen on, and the tasks' host",
        work_dir_help="where task sandboxes go",
    )
    parser.add_argument("--port-range", default="31000-31999", help="ports handed to tasks, LOW-HIGH")
    parser.add_argument("--username", help="require HTTP basic auth with this user (and --password)")
    parser.add_argument("--password", help="the basic auth password")
    parser.add_argument("--kill-grace-secs", type=float, default=3.0, help="SIGTERM->SIGKILL without an app's own")
    parser.add_argument("--mesos-user", default="marathon", help="who tasks of apps without a user run as")
    parser.add_argument(
        "--behaviour",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="switch a real-Marathon behaviour at start (as POST /emulator/behaviours does), e.g. instance-ids=true",
    )
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    low, _, high = args.port_range.partition("-")
    config = ClusterConfig(
        work_dir=work_dir(args.work_dir, "marathon"),
        port_range=(int(low), int(high or low)),
        agent_host=args.host,
        default_kill_grace_secs=args.kill_grace_secs,
        mesos_user=args.mesos_user,
    )
    sock = listening_socket(args.host, args.port)
    settings = EmulatorSettings(
        args.username,
        args.password,
        leader=f"{args.host}:{sock.getsockname()[1]}",
        behaviours=dict(b.split("=", 1) for b in args.behaviour),
    )
    await serve_until_stopped(build_app(config, settings), sock)


def main(argv: list[str] | None = None) -> int:
    return run("marathon", parse_args(argv), serve)


if __name__ == "__main__":
    sys.exit(main())
