"""The Mesos master emulator's scheduler API: ``POST /api/v1/scheduler``, frameworks, offers and status updates.

Follows ``docs/cluster-apis.md`` §2: the master's status codes in their order, RecordIO-framed JSON events
with the real nesting (``{"offers": {"offers": [...]}}``, ``{"error": {"message"}}``), one subscription per
framework, status updates carrying a uuid and resent until acknowledged (one at a time per task, as an agent's
status update manager does), implicit and explicit reconciliation, offer filters (``refuse_seconds``), REVIVE and
SUPPRESS, and the failover timeout: a framework that stays away longer loses its tasks and its id.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.emulators.mesos_agent import TERMINAL, Agent, Task, grace_of, task_resources
from waiter.scheduler.mesos_proto import encode_record, port_ranges

JSON = "application/json"
PROTOBUF = "application/x-protobuf"
CALLS = {
    "SUBSCRIBE",
    "TEARDOWN",
    "ACCEPT",
    "DECLINE",
    "ACCEPT_INVERSE_OFFERS",
    "DECLINE_INVERSE_OFFERS",
    "REVIVE",
    "KILL",
    "SHUTDOWN",
    "ACKNOWLEDGE",
    "ACKNOWLEDGE_OPERATION_STATUS",
    "RECONCILE",
    "RECONCILE_OPERATIONS",
    "MESSAGE",
    "REQUEST",
    "SUPPRESS",
    "UPDATE_FRAMEWORK",
}


@dataclass
class Config:
    hostname: str = "127.0.0.1"
    cpus: float = 8.0
    mem: float = 16384.0
    ports: tuple[int, int] = (31000, 31999)
    work_dir: Path = Path("mesos-emulator")
    heartbeat_secs: float = 15.0
    allocation_secs: float = 1.0  # offers are made this often (and at once after a change)
    update_retry_secs: float = 10.0  # an unacknowledged status update is sent again after this
    leader: str | None = None  # set: this master does not lead and redirects to the leader


@dataclass
class Framework:
    id: str
    info: dict[str, Any]
    stream: asyncio.Queue[bytes | None] | None = None
    stream_id: str = ""
    subscriptions: int = 0
    suppressed: bool = False
    refused_until: float = 0.0
    failover_timer: asyncio.TimerHandle | None = None
    calls: collections.Counter[str] = field(default_factory=collections.Counter)
    # task id -> its unacknowledged updates, oldest first; only the head is sent (the agent's status queue)
    pending: dict[str, collections.deque[dict[str, Any]]] = field(default_factory=dict)
    sent_at: dict[str, float] = field(default_factory=dict)

    @property
    def role(self) -> str:
        roles = self.info.get("roles") or [self.info.get("role") or "*"]
        return str(roles[0])

    def send(self, event: dict[str, Any]) -> None:
        if self.stream is not None:
            self.stream.put_nowait(encode_record(json.dumps(event).encode()))


def _id(value: str) -> dict[str, str]:
    return {"value": value}


def _value(obj: Any, key: str) -> str | None:
    inner = obj.get(key) if isinstance(obj, dict) else None
    return str(inner["value"]) if isinstance(inner, dict) and "value" in inner else None


class Master:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.agent = Agent(config.hostname, config.cpus, config.mem, config.ports, config.work_dir, self._on_status)
        self.tasks = self.agent.tasks
        self.frameworks: dict[str, Framework] = {}
        self.removed: set[str] = set()
        self.offers: dict[str, tuple[str, float, float, list[int]]] = {}  # id -> framework, cpus, mem, ports
        self.heartbeats = True
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._offer_counter = 0

    # -- the HTTP API --

    async def scheduler(self, request: web.Request) -> web.StreamResponse:
        if self.config.leader:
            raise web.HTTPTemporaryRedirect(f"//{self.config.leader}/api/v1/scheduler")
        if request.method != "POST":
            raise web.HTTPMethodNotAllowed(request.method, ["POST"])
        content_type = request.headers.get("Content-Type")
        if not content_type:
            raise web.HTTPBadRequest(text="Expecting 'Content-Type' to be present")
        media = content_type.split(";")[0].strip().lower()
        if media not in (JSON, PROTOBUF):
            raise web.HTTPUnsupportedMediaType(text=f"Expecting 'Content-Type' of {JSON} or {PROTOBUF}")
        if media == PROTOBUF:
            raise web.HTTPUnsupportedMediaType(text=f"This emulator speaks only {JSON}")
        try:
            call = json.loads(await request.read())
        except ValueError as error:
            raise web.HTTPBadRequest(text=f"Failed to parse body into Call: {error}") from None
        if not isinstance(call, dict) or call.get("type") not in CALLS:
            raise web.HTTPBadRequest(text="Failed to validate scheduler::Call: Expecting 'type' to be present")
        if call["type"] == "SUBSCRIBE":
            return await self.subscribe(request, call)
        framework = self._caller(request, call)
        framework.calls[call["type"]] += 1
        self.dispatch(framework, call)
        return web.Response(status=200 if call["type"] == "UPDATE_FRAMEWORK" else 202)

    def _caller(self, request: web.Request, call: dict[str, Any]) -> Framework:
        framework_id = _value(call, "framework_id")
        if framework_id is None:
            raise web.HTTPBadRequest(text="Failed to validate scheduler::Call: Expecting 'framework_id' to be present")
        framework = self.frameworks.get(framework_id)
        if framework is None:
            raise web.HTTPBadRequest(text="Framework cannot be found")
        if framework.stream is None:
            raise web.HTTPForbidden(text="Framework is not subscribed")
        stream_id = request.headers.get("Mesos-Stream-Id")
        if stream_id != framework.stream_id:
            raise web.HTTPBadRequest(
                text=f"The stream ID '{stream_id}' included in this request didn't match the stream ID currently "
                f"associated with framework ID {framework_id}"
            )
        return framework

    async def subscribe(self, request: web.Request, call: dict[str, Any]) -> web.StreamResponse:
        accept = request.headers.get("Accept", "*/*")
        if not any(media in accept for media in (JSON, "application/*", "*/*")):
            raise web.HTTPNotAcceptable(text=f"Expecting 'Accept' to allow {JSON} or {PROTOBUF}")
        if "Mesos-Stream-Id" in request.headers:
            raise web.HTTPBadRequest(text="Subscribe calls should not include the 'Mesos-Stream-Id' header")
        info = call.get("subscribe", {}).get("framework_info")
        if not isinstance(info, dict) or not info.get("user") or not info.get("name"):
            raise web.HTTPBadRequest(text="Failed to validate scheduler::Call: 'framework_info' lacks 'user' or 'name'")
        framework_id = _value(info, "id")
        if framework_id != _value(call, "framework_id"):
            raise web.HTTPBadRequest(
                text="Failed to validate scheduler::Call: 'framework_id' differs from 'subscribe.framework_info.id'"
            )
        stream_id = str(uuid.uuid4())
        response = web.StreamResponse(headers={"Content-Type": JSON, "Mesos-Stream-Id": stream_id})
        response.enable_chunked_encoding()
        await response.prepare(request)
        if framework_id in self.removed:
            error = {"type": "ERROR", "error": {"message": "Framework has been removed"}}
            await response.write(encode_record(json.dumps(error).encode()))
            return response
        framework = self._register(framework_id, info, stream_id)
        queue = framework.stream
        assert queue is not None
        try:
            while (record := await queue.get()) is not None:
                await response.write(record)
        except ConnectionError:
            pass  # the framework went away; the failover timeout starts below
        finally:
            if framework.stream is queue:
                self._disconnected(framework)
        return response

    def _register(self, framework_id: str | None, info: dict[str, Any], stream_id: str) -> Framework:
        framework_id = framework_id or f"{uuid.uuid4()}-0000"
        framework = self.frameworks.get(framework_id)
        if framework is None:
            framework = self.frameworks[framework_id] = Framework(framework_id, info)
        if framework.stream is not None:
            framework.stream.put_nowait(None)  # one subscription per framework: the old stream closes
        if framework.failover_timer is not None:
            framework.failover_timer.cancel()
            framework.failover_timer = None
        framework.info = {**info, "id": _id(framework_id)}
        framework.stream = asyncio.Queue()
        framework.stream_id = stream_id
        framework.subscriptions += 1
        framework.suppressed = False
        framework.calls["SUBSCRIBE"] += 1
        subscribed = {"framework_id": _id(framework_id), "heartbeat_interval_seconds": self.config.heartbeat_secs}
        framework.send({"type": "SUBSCRIBED", "subscribed": subscribed})
        framework.sent_at.clear()  # unacknowledged updates go out again on the new stream
        self._resend_updates(framework)
        self._wake.set()
        return framework

    def _disconnected(self, framework: Framework) -> None:
        framework.stream = None
        for offer_id in [o for o, (fid, *_rest) in self.offers.items() if fid == framework.id]:
            del self.offers[offer_id]
        timeout = float(framework.info.get("failover_timeout", 0.0))
        loop = asyncio.get_running_loop()
        framework.failover_timer = loop.call_later(timeout, self._remove, framework)

    def _remove(self, framework: Framework) -> None:
        """The framework is gone for good (failover timeout or TEARDOWN): its tasks are killed."""
        self.frameworks.pop(framework.id, None)
        self.removed.add(framework.id)
        if framework.stream is not None:
            framework.stream.put_nowait(None)
            framework.stream = None
        for task in self.tasks.values():
            if task.framework_id == framework.id and not task.terminal:
                self.agent.kill(task, 0.0)

    # -- calls --

    def dispatch(self, framework: Framework, call: dict[str, Any]) -> None:
        kind = call["type"]
        body = call.get(kind.lower()) or {}
        if kind == "ACCEPT":
            self._accept(framework, body)
        elif kind == "DECLINE":
            for offer_id in body.get("offer_ids") or ():
                self.offers.pop(str(offer_id["value"]), None)
            self._refuse(framework, body)
        elif kind == "KILL":
            self._kill(framework, body)
        elif kind == "ACKNOWLEDGE":
            self._acknowledge(framework, body)
        elif kind == "RECONCILE":
            self._reconcile(framework, body.get("tasks") or [])
        elif kind == "REVIVE":
            framework.suppressed = False
            framework.refused_until = 0.0
            self._wake.set()
        elif kind == "SUPPRESS":
            framework.suppressed = True
        elif kind == "TEARDOWN":
            self._remove(framework)

    def _refuse(self, framework: Framework, body: dict[str, Any]) -> None:
        refuse = float((body.get("filters") or {}).get("refuse_seconds", 5.0))
        framework.refused_until = time.monotonic() + refuse
        self._wake.set()

    def _accept(self, framework: Framework, body: dict[str, Any]) -> None:
        offer_ids = [str(o["value"]) for o in body.get("offer_ids") or ()]
        invalid = [o for o in offer_ids if self.offers.get(o, ("",))[0] != framework.id]
        cpus = mem = 0.0
        ports: set[int] = set()
        for offer_id in offer_ids:
            if offer_id not in invalid:
                _fid, offer_cpus, offer_mem, offer_ports = self.offers.pop(offer_id)
                cpus, mem = cpus + offer_cpus, mem + offer_mem
                ports.update(offer_ports)
        for operation in body.get("operations") or ():
            if operation.get("type") != "LAUNCH":
                continue
            for info in operation.get("launch", {}).get("task_infos") or ():
                task_id = _value(info, "task_id") or ""
                if invalid:
                    reason = f"Task launched with invalid offers: Offer {invalid[0]} is no longer valid"
                    self._update(framework.id, task_id, "TASK_LOST", reason, "REASON_INVALID_OFFERS", "SOURCE_MASTER")
                    continue
                need_cpus, need_mem, need_ports = task_resources(info)
                problem = self._launch_problem(info, task_id, cpus - need_cpus, mem - need_mem, ports, need_ports)
                if problem:
                    self._update(framework.id, task_id, "TASK_ERROR", problem, "REASON_TASK_INVALID", "SOURCE_MASTER")
                    continue
                cpus, mem = cpus - need_cpus, mem - need_mem
                ports.difference_update(need_ports)
                self.agent.launch(framework.id, info, need_cpus, need_mem, tuple(need_ports))
        self._refuse(framework, body)

    def _launch_problem(
        self, info: dict[str, Any], task_id: str, cpus_left: float, mem_left: float, ports: set[int], need: list[int]
    ) -> str | None:
        if not task_id or task_id in self.tasks:
            return f"Task has duplicate or missing ID: {task_id!r}"
        if not (info.get("command") or {}).get("value"):
            return "Task has no 'command.value' (this emulator runs commands only)"
        if cpus_left < -1e-9 or mem_left < -1e-9 or not set(need) <= ports:
            return "Task uses more resources than available in the offers"
        return None

    def _kill(self, framework: Framework, body: dict[str, Any]) -> None:
        task_id = _value(body, "task_id") or ""
        task = self.tasks.get(task_id)
        if task is None or task.framework_id != framework.id:
            self._reconcile(framework, [{"task_id": _id(task_id)}])
            return
        if task.terminal:
            return
        self.agent.kill(task, grace_of(body, task.kill_grace))

    def _acknowledge(self, framework: Framework, body: dict[str, Any]) -> None:
        task_id = _value(body, "task_id") or ""
        queue = framework.pending.get(task_id)
        if queue and queue[0]["uuid"] == body.get("uuid"):
            acked = queue.popleft()
            framework.sent_at.pop(task_id, None)
            if not queue:
                del framework.pending[task_id]
                task = self.tasks.get(task_id)
                if acked["state"] in TERMINAL and task is not None and task.terminal:
                    del self.tasks[task_id]  # the master forgets a task once its end was acknowledged
            self._resend_updates(framework)

    def _reconcile(self, framework: Framework, entries: list[dict[str, Any]]) -> None:
        if entries:
            wanted = [_value(entry, "task_id") or "" for entry in entries]
        else:
            wanted = [t.id for t in self.tasks.values() if t.framework_id == framework.id and not t.terminal]
        for task_id in wanted:
            task = self.tasks.get(task_id)
            known = task is not None and task.framework_id == framework.id
            state = task.state if known and task is not None else "TASK_LOST"
            message = "Reconciliation: Latest task state" if known else "Reconciliation: Task is unknown"
            framework.send(
                {
                    "type": "UPDATE",
                    "update": {
                        "status": self._status(
                            task_id, state, message, "REASON_RECONCILIATION", "SOURCE_MASTER", with_uuid=False
                        )
                    },
                }
            )

    # -- status updates --

    def _status(
        self, task_id: str, state: str, message: str | None, reason: str | None, source: str, *, with_uuid: bool
    ) -> dict[str, Any]:
        status: dict[str, Any] = {
            "task_id": _id(task_id),
            "state": state,
            "source": source,
            "agent_id": _id(self.agent.id),
            "timestamp": time.time(),
        }
        if source == "SOURCE_EXECUTOR":
            status["executor_id"] = _id(task_id)
        if message:
            status["message"] = message
        if reason:
            status["reason"] = reason
        if with_uuid:
            status["uuid"] = base64.b64encode(uuid.uuid4().bytes).decode()
        return status

    def _on_status(self, task: Task, state: str, message: str | None, reason: str | None, source: str) -> None:
        self._update(task.framework_id, task.id, state, message, reason, source)
        if task.terminal:
            self._wake.set()  # its resources are free again

    def _update(
        self, framework_id: str, task_id: str, state: str, message: str | None, reason: str | None, source: str
    ) -> None:
        """A reliable update: queued per task and sent (again) until acknowledged."""
        framework = self.frameworks.get(framework_id)
        if framework is None:
            return  # removed: nobody to tell
        status = self._status(task_id, state, message, reason, source, with_uuid=True)
        framework.pending.setdefault(task_id, collections.deque()).append(status)
        self._resend_updates(framework)

    def _resend_updates(self, framework: Framework) -> None:
        now = time.monotonic()
        for task_id, queue in framework.pending.items():
            sent = framework.sent_at.get(task_id)
            if framework.stream is not None and (sent is None or now - sent >= self.config.update_retry_secs):
                framework.sent_at[task_id] = now
                framework.send({"type": "UPDATE", "update": {"status": queue[0]}})

    # -- offers --

    def allocate(self) -> None:
        now = time.monotonic()
        for framework in self.frameworks.values():
            if framework.stream is None or framework.suppressed or now < framework.refused_until:
                continue
            if any(o[0] == framework.id for o in self.offers.values()):
                continue
            cpus, mem, ports = self.agent.free(o[1:] for o in self.offers.values())
            if cpus < 0.01 and mem < 32:
                return
            self._offer_counter += 1
            offer_id = f"{self.agent.id}-O{self._offer_counter}"
            self.offers[offer_id] = (framework.id, cpus, mem, ports)
            framework.send({"type": "OFFERS", "offers": {"offers": [self._offer_json(framework, offer_id)]}})

    def _offer_json(self, framework: Framework, offer_id: str) -> dict[str, Any]:
        _fid, cpus, mem, ports = self.offers[offer_id]
        allocation = {"role": framework.role}
        resources: list[dict[str, Any]] = [
            {"name": "cpus", "type": "SCALAR", "scalar": {"value": cpus}},
            {"name": "mem", "type": "SCALAR", "scalar": {"value": mem}},
        ]
        if ports:
            resources.append({"name": "ports", "type": "RANGES", "ranges": {"range": port_ranges(ports)}})
        return {
            "id": _id(offer_id),
            "framework_id": _id(framework.id),
            "agent_id": _id(self.agent.id),
            "hostname": self.agent.hostname,
            "allocation_info": allocation,
            "resources": [{**r, "role": "*", "allocation_info": allocation} for r in resources],
            "attributes": [],
            "executor_ids": [],
        }

    def rescind_all(self) -> None:
        for offer_id, (framework_id, *_rest) in list(self.offers.items()):
            del self.offers[offer_id]
            framework = self.frameworks.get(framework_id)
            if framework is not None:
                framework.send({"type": "RESCIND", "rescind": {"offer_id": _id(offer_id)}})
        self._wake.set()

    # -- background loops and shutdown --

    async def _allocation_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.allocation_secs):
                    await self._wake.wait()
            self._wake.clear()
            self.allocate()

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_secs)
            for framework in self.frameworks.values():
                if self.heartbeats:
                    framework.send({"type": "HEARTBEAT"})

    async def _retry_loop(self) -> None:
        while True:
            await asyncio.sleep(min(self.config.update_retry_secs, 1.0))
            for framework in self.frameworks.values():
                self._resend_updates(framework)

    async def start(self, app: web.Application) -> None:
        if not self.config.leader:
            for loop in (self._allocation_loop, self._heartbeat_loop, self._retry_loop):
                self._loops.append(asyncio.create_task(loop(), name=loop.__name__))

    async def shutdown(self, app: web.Application) -> None:
        """Close every event stream (so their handlers end) and kill every task; no process outlives us."""
        for framework in self.frameworks.values():
            if framework.stream is not None:
                framework.stream.put_nowait(None)
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await self.agent.shutdown()

    def state(self) -> dict[str, Any]:
        return {
            "agent": {
                "id": self.agent.id,
                "hostname": self.agent.hostname,
                "cpus": self.agent.cpus,
                "mem": self.agent.mem,
                "ports": list(self.agent.ports),
            },
            "frameworks": [
                {
                    "id": f.id,
                    "name": f.info.get("name"),
                    "connected": f.stream is not None,
                    "subscriptions": f.subscriptions,
                    "suppressed": f.suppressed,
                    "calls": dict(f.calls),
                    "failover_timeout": f.info.get("failover_timeout", 0.0),
                    "role": f.role,
                }
                for f in self.frameworks.values()
            ],
            "removed": sorted(self.removed),
            "tasks": [
                {
                    "id": t.id,
                    "framework_id": t.framework_id,
                    "state": t.state,
                    "ports": list(t.ports),
                    "pid": t.process.pid if t.process else None,
                    "sandbox": str(t.sandbox),
                }
                for t in self.tasks.values()
            ],
            "offers": [{"id": i, "framework_id": o[0], "cpus": o[1], "mem": o[2]} for i, o in self.offers.items()],
        }
