"""One local scheduler shared by several routers on this machine, over a small HTTP API.

``waiter-router --workers N`` runs the local scheduler in the supervising process and serves it with
``agent_app``; each worker talks to it through ``AgentScheduler``, which implements the ``Scheduler`` protocol
like any cluster back-end: calls are HTTP requests, and the snapshot is kept current by a long poll that returns
as soon as any service changes. Instances therefore belong to the supervisor and survive a worker's crash.

The agent listens on a Unix socket only (``unix:/path``), mode 0600 in a directory of mode 0700: whoever can run
commands through it is already this user. A TCP port would let any local process start commands through it.

API (JSON): ``GET /v1/state?after=N&wait-ms=M`` -> {"version", "services": {id: state}} once version > N;
``POST /v1/services`` {spec, instances}; ``PUT /v1/services/{id}`` {instances};
``POST /v1/services/{id}/kill`` {instance-id, force, replace, message, flags, failed}; ``DELETE /v1/services/{id}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from waiter.aio import raise_if_cancelling, stop
from waiter.scheduler.base import (
    Instance,
    KillOutcome,
    KillResult,
    Listener,
    Scheduler,
    SchedulerError,
    ServiceSpec,
    ServiceState,
)
from waiter.text import failure_reason

log = logging.getLogger(__name__)

UNIX = "unix:"
_AGENT_DIR_PREFIX = "waiter-agent-"
_SOCKET = "agent.sock"
# Long polls are woken at shutdown, so what is left in flight then is a call the scheduler is answering.
_SHUTDOWN_SECS = 2.0
_GONE_PROBE_SECS = 0.5  # a connect to a unix socket is refused at once when nothing listens


def instance_to_json(instance: Instance) -> dict[str, Any]:
    data = dataclasses.asdict(instance)
    data["flags"] = sorted(instance.flags)
    data["extra_ports"] = list(instance.extra_ports)
    data["extras"] = dict(instance.extras)
    return data


def instance_from_json(data: Mapping[str, Any]) -> Instance:
    fields = dict(data)
    fields["flags"] = frozenset(fields.get("flags", ()))
    fields["extra_ports"] = tuple(fields.get("extra_ports", ()))
    return Instance(**fields)


def state_to_json(state: ServiceState) -> dict[str, Any]:
    return {
        "service_id": state.service_id,
        "requested": state.requested,
        "active": [instance_to_json(i) for i in state.active],
        "failed": [instance_to_json(i) for i in state.failed],
        "killed": [instance_to_json(i) for i in state.killed],
        "error": state.error,
    }


def state_from_json(data: Mapping[str, Any]) -> ServiceState:
    return ServiceState(
        service_id=data["service_id"],
        requested=int(data["requested"]),
        active=tuple(instance_from_json(i) for i in data["active"]),
        failed=tuple(instance_from_json(i) for i in data["failed"]),
        killed=tuple(instance_from_json(i) for i in data["killed"]),
        error=data.get("error"),
    )


def spec_to_json(spec: ServiceSpec) -> dict[str, Any]:
    data = dataclasses.asdict(spec)
    data["env"] = dict(spec.env)
    return data


# -- the server side, in the supervising process ---------------------------------------------------------------


class _Versions:
    """A change counter with waiters: long polls return as soon as the scheduler reports any change."""

    def __init__(self) -> None:
        self.version = 0
        self.closed = False
        self._changed = asyncio.Event()

    def bump(self, _service_id: str) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def close(self) -> None:
        """Answer every long poll now (shutdown) and every later one at once."""
        self.closed = True
        self._changed.set()

    async def wait_past(self, version: int, timeout: float) -> None:
        if self.version > version or self.closed:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._changed.wait()


def agent_app(scheduler: Scheduler) -> web.Application:
    versions = _Versions()
    scheduler.subscribe(versions.bump)
    app = web.Application()

    def snapshot() -> dict[str, Any]:
        services = {}
        for sid in scheduler.service_ids():
            state = scheduler.service_state(sid)
            if state is not None:
                services[sid] = state_to_json(state)
        return {"version": versions.version, "services": services}

    async def get_state(request: web.Request) -> web.Response:
        after = int(request.query.get("after", "-1"))
        await versions.wait_past(after, int(request.query.get("wait-ms", "0")) / 1000)
        return web.json_response(snapshot())

    async def call(coro: Any) -> Any:
        try:
            return await coro
        except SchedulerError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None

    async def create(request: web.Request) -> web.Response:
        body = await request.json()
        spec = ServiceSpec(**body["spec"])
        created = await call(scheduler.create_service(spec, int(body["instances"])))
        return web.json_response({"created": created})

    async def scale(request: web.Request) -> web.Response:
        body = await request.json()
        await call(scheduler.scale_service(request.match_info["sid"], int(body["instances"])))
        return web.json_response({})

    async def kill(request: web.Request) -> web.Response:
        b = await request.json()
        result = await call(
            scheduler.kill_instance(
                request.match_info["sid"],
                b["instance-id"],
                force=bool(b.get("force")),
                replace=bool(b.get("replace")),
                message=b.get("message"),
                flags=frozenset(b.get("flags", ())),
                failed=bool(b.get("failed")),
            )
        )
        return web.json_response({"outcome": result.outcome.value, "message": result.message})

    async def delete(request: web.Request) -> web.Response:
        return web.json_response({"deleted": await call(scheduler.delete_service(request.match_info["sid"]))})

    # The workers' metrics texts (waiter.api.metrics): each worker puts its own and gets every worker's back.
    metrics: dict[str, str] = {}

    async def put_metrics(request: web.Request) -> web.Response:
        metrics[request.match_info["rid"]] = await request.text()
        return web.json_response(metrics)

    async def on_shutdown(_app: web.Application) -> None:
        versions.close()

    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/v1/state", get_state)
    app.router.add_post("/v1/services", create)
    app.router.add_put("/v1/services/{sid}", scale)
    app.router.add_post("/v1/services/{sid}/kill", kill)
    app.router.add_delete("/v1/services/{sid}", delete)
    app.router.add_put("/v1/metrics/{rid}", put_metrics)
    return app


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def remove_dead_agent_dirs(parent: Path, *, min_age_secs: float = 60.0) -> int:
    """Remove this user's agent directories whose socket nobody listens on (a supervisor killed by SIGKILL
    cannot remove its own); young ones are spared, their supervisor may be about to bind. Returns how many."""
    removed = 0
    for directory in parent.glob(f"{_AGENT_DIR_PREFIX}*"):
        try:
            info = directory.stat()
        except OSError:
            continue
        if info.st_uid != os.getuid() or time.time() - info.st_mtime < min_age_secs:
            continue
        if not _listening(directory / _SOCKET):
            shutil.rmtree(directory, ignore_errors=True)
            removed += 1
    return removed


async def serve_agent(scheduler: Scheduler) -> tuple[web.AppRunner, str]:
    """Serve ``scheduler`` on a new private Unix socket; returns the runner (clean it up) and the agent's URL."""
    parent = Path(tempfile.gettempdir())
    await asyncio.to_thread(remove_dead_agent_dirs, parent)
    # mode 0700: only this user can reach the socket
    directory = Path(tempfile.mkdtemp(prefix=_AGENT_DIR_PREFIX, dir=parent))
    path = directory / _SOCKET
    runner = web.AppRunner(agent_app(scheduler), access_log=None, shutdown_timeout=_SHUTDOWN_SECS)
    await runner.setup()
    await web.UnixSite(runner, str(path)).start()
    path.chmod(0o600)
    return runner, f"{UNIX}{path}"


async def stop_agent(runner: web.AppRunner, url: str) -> None:
    """Stop serving and remove the socket and its directory."""
    await runner.cleanup()
    path = url.removeprefix(UNIX)
    with contextlib.suppress(OSError):
        os.unlink(path)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(path))


# -- the client side, in each router ---------------------------------------------------------------------------


class AgentScheduler:
    """The ``Scheduler`` protocol over the agent's HTTP API."""

    kind = "agent"

    def __init__(self, url: str, *, request_timeout: float = 30.0, poll_wait: float = 10.0) -> None:
        if not url.startswith(UNIX):
            raise SchedulerError(f"scheduler.agent.url is {url!r} but must be the agent's socket, unix:/path.")
        self.url = url
        self._socket = url.removeprefix(UNIX)
        self.directory = Path(self._socket).parent  # private to this user (see the module's doc)
        self.request_timeout = request_timeout
        self.poll_wait = poll_wait
        self._listeners: list[Listener] = []
        self._states: dict[str, ServiceState] = {}
        self._version = -1
        self._session: aiohttp.ClientSession | None = None
        self._poller: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            base_url="http://agent", connector=aiohttp.UnixConnector(self._socket), timeout=aiohttp.ClientTimeout(None)
        )
        self._poller = asyncio.create_task(self._poll(), name="agent state")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.request_timeout):
                await self._synced.wait()

    async def close(self) -> None:
        await stop([self._poller])
        if self._session is not None:
            await self._session.close()

    async def _poll(self) -> None:
        assert self._session is not None
        backoff = 0.1
        while True:
            try:
                params = {"after": str(self._version), "wait-ms": str(int(self.poll_wait * 1000))}
                timeout = aiohttp.ClientTimeout(total=self.poll_wait + self.request_timeout)
                async with self._session.get("/v1/state", params=params, timeout=timeout) as resp:
                    resp.raise_for_status()
                    body = await resp.json()
                self._apply(body)
                backoff = 0.1
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise_if_cancelling()
                log.warning("scheduler agent at %s unreachable (%s); retrying in %.1f s", self.url, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def gone(self) -> str | None:
        """Why no instance can start or be replaced any more, when nothing listens on the agent's socket (its
        supervisor died, and the instances it ran with it); None while it listens or cannot tell (a slow agent)."""
        try:
            async with asyncio.timeout(_GONE_PROBE_SECS):
                _, writer = await asyncio.open_unix_connection(self._socket)
        except (ConnectionRefusedError, FileNotFoundError):
            return f"the scheduler agent at {self.url}, which ran its instances, is gone"
        except (OSError, TimeoutError):
            return None
        writer.close()
        return None

    def _apply(self, body: Mapping[str, Any]) -> None:
        states = {sid: state_from_json(s) for sid, s in body["services"].items()}
        changed = {sid for sid in states.keys() | self._states.keys() if states.get(sid) != self._states.get(sid)}
        self._states = states
        self._version = int(body["version"])
        self._synced.set()
        for sid in changed:
            for listener in self._listeners:
                listener(sid)

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        assert self._session is not None, "start() the scheduler first"
        timeout = aiohttp.ClientTimeout(total=self.request_timeout)
        try:
            async with self._session.request(method, path, json=body, timeout=timeout) as resp:
                if resp.status >= 400:
                    raise SchedulerError(f"The scheduler agent refused {method} {path}: {await resp.text()}")
                return await resp.json()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("scheduler agent at %s: %s %s failed: %s", self.url, method, path, exc)
            raise SchedulerError(
                f"The scheduler agent at {self.url} did not answer {method} {path}: {failure_reason(exc)}."
            ) from exc

    async def exchange_metrics(self, router_id: str, text: str) -> dict[str, str]:
        """Hand this worker's metrics text to the supervisor; every worker's last text comes back."""
        assert self._session is not None, "start() the scheduler first"
        timeout = aiohttp.ClientTimeout(total=self.request_timeout)
        try:
            async with self._session.put(f"/v1/metrics/{router_id}", data=text.encode(), timeout=timeout) as resp:
                resp.raise_for_status()
                texts: dict[str, str] = await resp.json()
                return texts
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("scheduler agent at %s did not take the metrics: %s", self.url, exc)
            raise SchedulerError(
                f"The scheduler agent at {self.url} did not take the metrics: {failure_reason(exc)}."
            ) from exc

    async def create_service(self, spec: ServiceSpec, instances: int) -> bool:
        result = await self._request("POST", "/v1/services", {"spec": spec_to_json(spec), "instances": instances})
        return bool(result["created"])

    async def scale_service(self, service_id: str, instances: int) -> None:
        await self._request("PUT", f"/v1/services/{service_id}", {"instances": instances})

    async def kill_instance(
        self,
        service_id: str,
        instance_id: str,
        *,
        force: bool = False,
        replace: bool = False,
        message: str | None = None,
        flags: frozenset[str] = frozenset(),
        failed: bool = False,
    ) -> KillResult:
        body = {
            "instance-id": instance_id,
            "force": force,
            "replace": replace,
            "message": message,
            "flags": sorted(flags),
            "failed": failed,
        }
        result = await self._request("POST", f"/v1/services/{service_id}/kill", body)
        return KillResult(KillOutcome(result["outcome"]), str(result["message"]))

    async def delete_service(self, service_id: str) -> bool:
        return bool((await self._request("DELETE", f"/v1/services/{service_id}"))["deleted"])

    def service_ids(self) -> list[str]:
        return list(self._states)

    def service_state(self, service_id: str) -> ServiceState | None:
        return self._states.get(service_id)
