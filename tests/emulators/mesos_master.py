"""The Mesos master emulator's scheduler API: ``POST /api/v1/scheduler``, frameworks, offers and status updates.

Follows ``docs/cluster-apis.md`` §2: the master's status codes in their order, RecordIO-framed JSON events
with the real nesting (``{"offers": {"offers": [...]}}``, ``{"error": {"message"}}``), one subscription per
framework, status updates carrying a uuid and resent until acknowledged (one at a time per task, as an agent's
status update manager does), implicit and explicit reconciliation, offer filters (``refuse_seconds``), REVIVE and
SUPPRESS, and framework failover: a framework whose stream drops stays registered, disconnected, its tasks
running; subscribing again with its id within its ``failover_timeout`` gets it back, while past it the master
removes it, kills its tasks and answers a later SUBSCRIBE with that id with ERROR "Framework has been removed".
The operator API (``POST /api/v1``) answers GET_TASKS with every task and the labels it was launched with.

Several agents, each with part of its cpus and mem statically reserved for roles (``Config.reserved``); a framework
holding several roles gets one offer per agent and role, each resource with its ``allocation_info`` and reserved
ones with their ``reservations``. An ACCEPT is checked as the master's validation does: the tasks' resources must be
contained in the offered ones field by field (role, reservations, allocation), else TASK_ERROR "Task uses more
resources ... than available ...". Behaviours of a real master that tests switch on and off (``Behaviours``, the
``/emulator/behaviours`` control) are listed there.
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

from tests.emulators.behaviours import switch
from tests.emulators.mesos_agent import (
    TERMINAL,
    UNRESERVED,
    Agent,
    Held,
    Task,
    describe,
    grace_of,
    source_key,
)
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
    agents: int = 1  # each with cpus, mem and ports as above
    reserved: dict[str, tuple[float, float]] = field(default_factory=dict)  # role -> cpus, mem on every agent
    behaviours: dict[str, str] = field(default_factory=dict)  # switched at start, as the control does


@dataclass
class Behaviours:
    """What a real master does that tests switch on or off (POST /emulator/behaviours with these names, dashed)."""

    # 415 unless Content-Type is exactly application/json (http.cpp compares the whole value: no ";charset").
    exact_content_type: bool = True
    # A framework subscribing again closes its old stream with ERROR "Framework failed over" first.
    failover_error: bool = True
    # 503 "Master has not finished recovery" for every scheduler call (a new leader still reading its registry).
    recovering: bool = False
    # Signals that dump core are reported "Command terminated with signal ... (core dumped)".
    core_dumps: bool = False
    # After /emulator/master-failover, explicit reconciliation of a task whose agent has not re-registered gets
    # no answer, and implicit reconciliation leaves it out, until the agent re-registers this long after.
    reregister_after_secs: float = 1.0


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

    inverse_answers: dict[str, str] = field(default_factory=dict)  # inverse offer id -> accepted | declined

    @property
    def roles(self) -> list[str]:
        return [str(r) for r in self.info.get("roles") or [self.info.get("role") or "*"]]

    @property
    def role(self) -> str:
        return self.roles[0]

    def send(self, event: dict[str, Any]) -> None:
        if self.stream is not None:
            self.stream.put_nowait(encode_record(json.dumps(event).encode()))


def _id(value: str) -> dict[str, str]:
    return {"value": value}


def _value(obj: Any, key: str) -> str | None:
    inner = obj.get(key) if isinstance(obj, dict) else None
    return str(inner["value"]) if isinstance(inner, dict) and "value" in inner else None


@dataclass
class HeldOffer:
    framework_id: str
    agent: Agent
    role: str
    held: Held
    resources: list[dict[str, Any]]


class Master:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.behaviours = Behaviours()
        self.tasks: dict[str, Task] = {}  # every agent's tasks
        self.agents = [
            Agent(
                index,
                config.hostname,
                config.cpus,
                config.mem,
                _slice(config.ports, index, config.agents),
                config.work_dir,
                self._on_status,
                self.tasks,
                config.reserved,
            )
            for index in range(config.agents)
        ]
        self.frameworks: dict[str, Framework] = {}
        self.removed: set[str] = set()
        self.offers: dict[str, HeldOffer] = {}
        self.inverse_offers: dict[str, str] = {}  # id -> agent id
        self.reregistering_until: float = 0.0  # monotonic: agents re-register after a master failover
        self.heartbeats = True
        self.unavailable = 0  # calls answered 503 while recovering
        # call type -> (seconds, how many more): calls that reach the master late (/emulator/slow-calls), as a
        # call on its own connection may arrive after one sent later
        self.slow_calls: dict[str, tuple[float, int]] = {}
        self.set_behaviours(config.behaviours)
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._offer_counter = 0

    def set_behaviours(self, values: dict[str, Any]) -> dict[str, Any]:
        """Switch behaviours by their dashed names; all of them, as they are now."""
        switched = switch(self.behaviours, values)
        for agent in self.agents:
            agent.core_dumps = self.behaviours.core_dumps
        return switched

    @property
    def agent(self) -> Agent:
        """The first agent (the one the single-agent controls act on)."""
        return self.agents[0]

    def agent_of(self, agent_id: str) -> Agent | None:
        return next((a for a in self.agents if a.id == agent_id), None)

    # -- the HTTP API --

    async def scheduler(self, request: web.Request) -> web.StreamResponse:
        if self.config.leader:
            raise web.HTTPTemporaryRedirect(f"//{self.config.leader}/api/v1/scheduler")
        if self.behaviours.recovering:
            self.unavailable += 1
            raise web.HTTPServiceUnavailable(text="Master has not finished recovery")
        call = await self._read_call(request)
        if call.get("type") not in CALLS:
            raise web.HTTPBadRequest(text="Failed to validate scheduler::Call: Expecting 'type' to be present")
        if call["type"] == "SUBSCRIBE":
            return await self.subscribe(request, call)
        framework = self._caller(request, call)
        slow = self.slow_calls.get(call["type"])
        if slow is not None:
            delay, left = slow
            if left <= 1:
                del self.slow_calls[call["type"]]
            else:
                self.slow_calls[call["type"]] = (delay, left - 1)
            await asyncio.sleep(delay)
        framework.calls[call["type"]] += 1
        self.dispatch(framework, call)
        return web.Response(status=200 if call["type"] == "UPDATE_FRAMEWORK" else 202)

    async def operator(self, request: web.Request) -> web.Response:
        """The operator API (``POST /api/v1``), of which the emulator answers GET_TASKS: every task the master
        knows, with the labels it was launched with (a restarted scheduler reads its tasks' labels there)."""
        if self.config.leader:
            raise web.HTTPTemporaryRedirect(f"//{self.config.leader}/api/v1")
        call = await self._read_call(request)
        if call.get("type") != "GET_TASKS":
            raise web.HTTPNotImplemented(text=f"This emulator answers only GET_TASKS, not {call.get('type')!r}")
        tasks = [self._task_json(task) for task in self.tasks.values()]
        return web.json_response({"type": "GET_TASKS", "get_tasks": {"tasks": tasks}})

    def _task_json(self, task: Task) -> dict[str, Any]:
        """A ``Task`` message (mesos.proto) as the master lists it."""
        status = {"task_id": _id(task.id), "state": task.state, "agent_id": _id(task.agent_id)}
        return {
            "name": str(task.info.get("name", task.id)),
            "task_id": _id(task.id),
            "framework_id": _id(task.framework_id),
            "agent_id": _id(task.agent_id),
            "state": task.state,
            "resources": task.info.get("resources") or [],
            "statuses": [status],
            "labels": task.info.get("labels") or {"labels": []},
            "user": task.user,
        }

    async def _read_call(self, request: web.Request) -> dict[str, Any]:
        """The JSON call of a request, checked in the master's order: method, Content-Type, body."""
        if request.method != "POST":
            raise web.HTTPMethodNotAllowed(request.method, ["POST"])
        content_type = request.headers.get("Content-Type")
        if not content_type:
            raise web.HTTPBadRequest(text="Expecting 'Content-Type' to be present")
        media = content_type.strip().lower()
        if not self.behaviours.exact_content_type:
            media = media.split(";")[0].strip()
        if media not in (JSON, PROTOBUF):
            raise web.HTTPUnsupportedMediaType(text=f"Expecting 'Content-Type' of {JSON} or {PROTOBUF}")
        if media == PROTOBUF:
            raise web.HTTPUnsupportedMediaType(text=f"This emulator speaks only {JSON}")
        try:
            call = json.loads(await request.read())
        except ValueError as error:
            raise web.HTTPBadRequest(text=f"Failed to parse body into Call: {error}") from None
        if not isinstance(call, dict):
            raise web.HTTPBadRequest(text="Failed to validate Call: Expecting 'type' to be present")
        return call

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
        if framework.stream is not None:  # one subscription per framework: the old stream closes
            if self.behaviours.failover_error:
                framework.send({"type": "ERROR", "error": {"message": "Framework failed over"}})
            framework.stream.put_nowait(None)
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
        for offer_id in [o for o, held in self.offers.items() if held.framework_id == framework.id]:
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
                self._agent_of_task(task).kill(task, 0.0)

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
        elif kind in ("ACCEPT_INVERSE_OFFERS", "DECLINE_INVERSE_OFFERS"):
            answer = "accepted" if kind == "ACCEPT_INVERSE_OFFERS" else "declined"
            for inverse_id in body.get("inverse_offer_ids") or ():
                if str(inverse_id.get("value")) in self.inverse_offers:
                    framework.inverse_answers[str(inverse_id["value"])] = answer

    def _refuse(self, framework: Framework, body: dict[str, Any]) -> None:
        refuse = float((body.get("filters") or {}).get("refuse_seconds", 5.0))
        framework.refused_until = time.monotonic() + refuse
        self._wake.set()

    def _accept(self, framework: Framework, body: dict[str, Any]) -> None:
        offer_ids = [str(o["value"]) for o in body.get("offer_ids") or ()]
        invalid = [o for o in offer_ids if o not in self.offers or self.offers[o].framework_id != framework.id]
        held = [self.offers.pop(o) for o in offer_ids if o not in invalid]
        agents = {h.agent.id for h in held}
        offered: dict[tuple[str, str], float] = collections.defaultdict(float)
        offered_ports: dict[str, set[int]] = collections.defaultdict(set)
        for resource in (r for h in held for r in h.resources):
            _add(resource, offered, offered_ports)
        listing = [r for h in held for r in h.resources]
        for operation in body.get("operations") or ():
            if operation.get("type") != "LAUNCH":
                continue
            for info in operation.get("launch", {}).get("task_infos") or ():
                task_id = _value(info, "task_id") or ""
                agent_id = _value(info, "agent_id") or ""
                if invalid:
                    reason = f"Task launched with invalid offers: Offer {invalid[0]} is no longer valid"
                    self._update(framework.id, agent_id, task_id, "TASK_LOST", reason, "REASON_INVALID_OFFERS")
                    continue
                problem = self._launch_problem(info, task_id, agent_id, agents, offered, offered_ports, listing)
                if problem:
                    self._update(framework.id, agent_id, task_id, "TASK_ERROR", problem, "REASON_TASK_INVALID")
                    continue
                user = str((info.get("command") or {}).get("user") or framework.info.get("user"))
                agent = self.agent_of(agent_id)
                assert agent is not None
                agent.launch(framework.id, info, user)
        self._refuse(framework, body)

    def _launch_problem(
        self,
        info: dict[str, Any],
        task_id: str,
        agent_id: str,
        agents: set[str],
        offered: dict[tuple[str, str], float],
        offered_ports: dict[str, set[int]],
        listing: list[dict[str, Any]],
    ) -> str | None:
        """The master's validation of one task against what is left of the offers (which it then takes)."""
        if not task_id or task_id in self.tasks:
            return f"Task has duplicate or missing ID: {task_id!r}"
        if len(agents) != 1 or agent_id not in agents:
            return f"Task uses agent {agent_id!r} but the offers are from {sorted(agents)}"
        if not (info.get("command") or {}).get("value"):
            return "Task has no 'command.value' (this emulator runs commands only)"
        needed: dict[tuple[str, str], float] = collections.defaultdict(float)
        needed_ports: dict[str, set[int]] = collections.defaultdict(set)
        for resource in info.get("resources") or ():
            _add(resource, needed, needed_ports)
        short = any(amount > offered.get(key, 0.0) + 1e-9 for key, amount in needed.items())
        if short or any(not ports <= offered_ports.get(key, set()) for key, ports in needed_ports.items()):
            return (
                f"Task uses more resources {describe(info.get('resources') or [])} than available {describe(listing)}"
            )
        for key, amount in needed.items():
            offered[key] -= amount
        for key, ports in needed_ports.items():
            offered_ports[key] -= ports
        return None

    def _kill(self, framework: Framework, body: dict[str, Any]) -> None:
        task_id = _value(body, "task_id") or ""
        task = self.tasks.get(task_id)
        if task is None or task.framework_id != framework.id:
            self._reconcile(framework, [{"task_id": _id(task_id)}])
            return
        if task.terminal:
            return
        self._agent_of_task(task).kill(task, grace_of(body, task.kill_grace))

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
        reregistering = time.monotonic() < self.reregistering_until
        if entries:
            wanted = [_value(entry, "task_id") or "" for entry in entries]
        else:
            wanted = [t.id for t in self.tasks.values() if t.framework_id == framework.id and not t.terminal]
        for task_id in wanted:
            task = self.tasks.get(task_id)
            known = task is not None and task.framework_id == framework.id
            if known and reregistering:
                continue  # its agent has not re-registered with this (new) master: no answer yet
            agent_id = task.agent_id if task is not None else self.agent.id
            state = task.state if known and task is not None else "TASK_LOST"
            message = "Reconciliation: Latest task state" if known else "Reconciliation: Task is unknown"
            framework.send(
                {
                    "type": "UPDATE",
                    "update": {
                        "status": self._status(
                            agent_id, task_id, state, message, "REASON_RECONCILIATION", "SOURCE_MASTER", with_uuid=False
                        )
                    },
                }
            )

    # -- status updates --

    def _status(
        self,
        agent_id: str,
        task_id: str,
        state: str,
        message: str | None,
        reason: str | None,
        source: str,
        *,
        with_uuid: bool,
    ) -> dict[str, Any]:
        status: dict[str, Any] = {
            "task_id": _id(task_id),
            "state": state,
            "source": source,
            "agent_id": _id(agent_id),
            "timestamp": time.time(),
        }
        if source == "SOURCE_EXECUTOR":
            status["executor_id"] = _id(task_id)
        if message:
            status["message"] = message
        if reason:
            status["reason"] = reason
        if reason == "REASON_CONTAINER_LIMITATION_MEMORY":
            status["limitation"] = {"resources": [{"name": "mem", "type": "SCALAR", "scalar": {"value": 0}}]}
        if with_uuid:
            status["uuid"] = base64.b64encode(uuid.uuid4().bytes).decode()
        return status

    def _on_status(self, task: Task, state: str, message: str | None, reason: str | None, source: str) -> None:
        self._update(task.framework_id, task.agent_id, task.id, state, message, reason, source)
        if task.terminal:
            self._wake.set()  # its resources are free again

    def _update(
        self,
        framework_id: str,
        agent_id: str,
        task_id: str,
        state: str,
        message: str | None,
        reason: str | None,
        source: str = "SOURCE_MASTER",
    ) -> None:
        """A reliable update: queued per task and sent (again) until acknowledged."""
        framework = self.frameworks.get(framework_id)
        if framework is None:
            return  # removed: nobody to tell
        status = self._status(agent_id, task_id, state, message, reason, source, with_uuid=True)
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
            if any(held.framework_id == framework.id for held in self.offers.values()):
                continue
            offers = []
            for agent in self.agents:
                if agent.removed:
                    continue
                for index, role in enumerate(framework.roles):
                    offer = self._make_offer(framework, agent, role, first_role=index == 0)
                    if offer is not None:
                        offers.append(offer)
            if offers:
                framework.send({"type": "OFFERS", "offers": {"offers": offers}})

    def _make_offer(self, framework: Framework, agent: Agent, role: str, *, first_role: bool) -> dict[str, Any] | None:
        """One agent's free resources for one of the framework's roles: its reservations, and the unreserved ones
        (all of them go to the framework's first role)."""
        free = agent.free(h.held for h in self.offers.values() if h.agent is agent)
        allocation = {"role": role}
        resources: list[dict[str, Any]] = []
        usage: dict[str, tuple[float, float]] = {}
        ports: list[int] = []
        sources = [role] if role != UNRESERVED else []
        if first_role:
            sources.append(UNRESERVED)
        for source in sources:
            cpus, mem = free.by_role.get(source, (0.0, 0.0))
            if cpus < 0.01 and mem < 1:
                continue
            where: dict[str, Any] = {"role": source, "allocation_info": allocation}
            if source != UNRESERVED:
                where["reservations"] = [{"type": "STATIC", "role": source}]
            resources.append({"name": "cpus", "type": "SCALAR", "scalar": {"value": max(cpus, 0.0)}, **where})
            resources.append({"name": "mem", "type": "SCALAR", "scalar": {"value": max(mem, 0.0)}, **where})
            usage[source] = (max(cpus, 0.0), max(mem, 0.0))
            if source == UNRESERVED and free.ports:
                ports = free.ports
                ranges = {"range": port_ranges(ports)}
                resources.append({"name": "ports", "type": "RANGES", "ranges": ranges, **where})
        if not resources:
            return None
        self._offer_counter += 1
        offer_id = f"{agent.id}-O{self._offer_counter}"
        self.offers[offer_id] = HeldOffer(framework.id, agent, role, Held(usage, ports), resources)
        return {
            "id": _id(offer_id),
            "framework_id": _id(framework.id),
            "agent_id": _id(agent.id),
            "hostname": agent.hostname,
            "allocation_info": allocation,
            "resources": resources,
            "attributes": [],
            "executor_ids": [],
        }

    # -- what the controls make happen --

    def fail_over(self) -> None:
        """A new master takes over: every stream closes; agents re-register after a while (see Behaviours)."""
        self.reregistering_until = time.monotonic() + self.behaviours.reregister_after_secs
        self.offers.clear()
        for framework in self.frameworks.values():
            if framework.stream is not None:
                framework.stream.put_nowait(None)

    def remove_agent(self, agent: Agent) -> None:
        """The agent failed for good: its tasks are lost (their processes die), then FAILURE names the agent."""
        agent.removed = True
        for held_id in [o for o, held in self.offers.items() if held.agent is agent]:
            del self.offers[held_id]
        for task in [t for t in self.tasks.values() if t.agent_id == agent.id and not t.terminal]:
            agent.lose(task)
        for framework in self.frameworks.values():
            framework.send({"type": "FAILURE", "failure": {"agent_id": _id(agent.id)}})

    def come_back(self, task: Task) -> None:
        """A task reported TASK_LOST turns up again (its agent re-registered): TASK_RUNNING once more."""
        task.state = "TASK_RUNNING"
        self.tasks[task.id] = task
        self._update(task.framework_id, task.agent_id, task.id, "TASK_RUNNING", "Agent re-registered", None)

    def send_event(self, kind: str) -> dict[str, Any]:
        """Send every framework one event of ``kind`` as a real master would; the event sent."""
        agent = self.agent
        if kind == "INVERSE_OFFERS":
            self._offer_counter += 1
            inverse_id = f"{agent.id}-IO{self._offer_counter}"
            self.inverse_offers[inverse_id] = agent.id
            start = {"nanoseconds": int((time.time() + 3600) * 1e9)}
            offers = [
                {
                    "id": _id(inverse_id),
                    "framework_id": _id(framework.id),
                    "agent_id": _id(agent.id),
                    "unavailability": {"start": start},
                }
                for framework in self.frameworks.values()
            ]
            event: dict[str, Any] = {"type": kind, "inverse_offers": {"inverse_offers": offers}}
        elif kind == "RESCIND_INVERSE_OFFER":
            inverse_id = next(iter(self.inverse_offers), f"{agent.id}-IO0")
            self.inverse_offers.pop(inverse_id, None)
            event = {"type": kind, "rescind_inverse_offer": {"inverse_offer_id": _id(inverse_id)}}
        elif kind == "MESSAGE":
            data = base64.b64encode(b"hello from an executor").decode()
            event = {"type": kind, "message": {"agent_id": _id(agent.id), "executor_id": _id("custom"), "data": data}}
        elif kind == "UPDATE_OPERATION_STATUS":
            status = {
                "state": "OPERATION_FINISHED",
                "agent_id": _id(agent.id),
                "uuid": {"value": base64.b64encode(uuid.uuid4().bytes).decode()},
            }
            event = {"type": kind, "update_operation_status": {"status": status}}
        else:
            raise ValueError(f"event type {kind!r} is not one this control sends")
        for framework in self.frameworks.values():
            framework.send(event)
        return event

    def rescind_all(self) -> None:
        for offer_id, held in list(self.offers.items()):
            del self.offers[offer_id]
            framework = self.frameworks.get(held.framework_id)
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
        for agent in self.agents:
            await agent.shutdown()

    def _agent_of_task(self, task: Task) -> Agent:
        agent = self.agent_of(task.agent_id)
        assert agent is not None
        return agent

    def state(self) -> dict[str, Any]:
        agents = [
            {
                "id": agent.id,
                "hostname": agent.hostname,
                "cpus": agent.cpus,
                "mem": agent.mem,
                "ports": list(agent.ports),
                "reserved": {role: list(amounts) for role, amounts in agent.reserved.items()},
                "removed": agent.removed,
            }
            for agent in self.agents
        ]
        return {
            "agent": agents[0],
            "agents": agents,
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
                    "roles": f.roles,
                    "inverse_answers": dict(f.inverse_answers),
                }
                for f in self.frameworks.values()
            ],
            "removed": sorted(self.removed),
            "unavailable": self.unavailable,
            "tasks": [
                {
                    "id": t.id,
                    "framework_id": t.framework_id,
                    "agent_id": t.agent_id,
                    "user": t.user,
                    "resources_by_role": {role: list(amounts) for role, amounts in t.usage.items()},
                    "state": t.state,
                    "ports": list(t.ports),
                    "pid": t.process.pid if t.process else None,
                    "sandbox": str(t.sandbox),
                }
                for t in self.tasks.values()
            ],
            "offers": [{"id": i, "framework_id": o.framework_id, "role": o.role} for i, o in self.offers.items()],
        }


def _add(resource: dict[str, Any], amounts: dict[tuple[str, str], float], ports: dict[str, set[int]]) -> None:
    """Add a resource to a tally keyed by name and source (role, reservations, allocation)."""
    key = source_key(resource)
    if resource.get("type") == "RANGES" or "ranges" in resource:
        for span in (resource.get("ranges") or {}).get("range") or ():
            ports[key].update(range(int(span["begin"]), int(span["end"]) + 1))
    else:
        amounts[(str(resource.get("name")), key)] += float((resource.get("scalar") or {}).get("value", 0.0))


def _slice(ports: tuple[int, int], index: int, count: int) -> tuple[int, int]:
    """Agent ``index``'s share of the port range: the agents all run on this machine, so their ports must differ."""
    low, high = ports
    size = (high - low + 1) // count
    return low + index * size, (high if index == count - 1 else low + (index + 1) * size - 1)
