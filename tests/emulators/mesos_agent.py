"""The Mesos master emulator's agents: their resources (some statically reserved for roles), and their tasks run as
real local processes.

A task runs as ``/bin/sh -c <command>`` (``shell: true``) in a new session, so one ``killpg`` reaches everything it
started. Its sandbox is laid out like a real agent's (``<work-dir>/slaves/<agent>/frameworks/<framework>/executors/
<task>/runs/<run>``, with a ``latest`` link) and holds its ``stdout`` and ``stderr``. Every change of a task is
reported through ``on_status`` in the command executor's words ("Command exited with status 3", "Command
terminated with signal Killed", "... (core dumped)" when core dumps are switched on), or the memory isolator's
("Memory limit exceeded: ...", REASON_CONTAINER_LIMITATION_MEMORY) for a task the controls run out of memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from waiter.scheduler.ports import port_is_bindable

TERMINAL = {"TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_ERROR", "TASK_LOST", "TASK_DROPPED", "TASK_GONE"}
# What an agent passes on from its own environment (a real one passes all of it; tests need only these).
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
DEFAULT_KILL_GRACE_SECS = 3.0  # the command executor's default
UNRESERVED = "*"
# Signals whose default action dumps core (signal(7)); with core dumps on, WSTRINGIFY says "(core dumped)".
CORE_SIGNALS = frozenset(
    {signal.SIGQUIT, signal.SIGILL, signal.SIGTRAP, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE, signal.SIGSEGV}
)
_QUANTITY_FIELDS = frozenset({"name", "type", "scalar", "ranges", "set"})


@dataclass
class Task:
    id: str
    framework_id: str
    agent_id: str
    usage: dict[str, tuple[float, float]]  # reservation role ("*": unreserved) -> cpus, mem taken from it
    ports: tuple[int, ...]
    sandbox: Path
    kill_grace: float
    user: str
    state: str = "TASK_STAGING"
    process: asyncio.subprocess.Process | None = None
    kill_requested: bool = False
    lost: bool = False  # report TASK_LOST (the agent "lost" it) instead of how the process ended
    out_of_memory: bool = False  # report the memory isolator's limitation instead of how the process ended
    mem_limit: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)  # the TaskInfo it was launched with (its labels, name)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


# (task, state, message, reason, source)
StatusSink = Callable[[Task, str, str | None, str | None, str], None]


def source_key(resource: Mapping[str, Any]) -> str:
    """Where a resource comes from, as the master compares it: role, reservations, allocation, disk, ...

    The deprecated ``role`` (with ``reservation``) is the same thing as a one-entry ``reservations`` list.
    """
    fields = {k: v for k, v in resource.items() if k not in _QUANTITY_FIELDS}
    role = fields.pop("role", UNRESERVED)
    reservation = fields.pop("reservation", None)
    if not fields.get("reservations") and role != UNRESERVED:
        fields["reservations"] = [{"type": "DYNAMIC" if reservation else "STATIC", "role": role}]
    if not fields.get("reservations"):
        fields.pop("reservations", None)  # an empty list says the same as none
    return json.dumps(fields, sort_keys=True)


def reservation_role(resource: Mapping[str, Any]) -> str:
    """The role a resource is reserved for ("*" when unreserved): the last (most refined) reservation's."""
    reservations = json.loads(source_key(resource)).get("reservations") or []
    return str(reservations[-1].get("role", UNRESERVED)) if reservations else UNRESERVED


def describe(resources: Iterable[Mapping[str, Any]]) -> str:
    """Resources the way the master writes them in messages: ``cpus(allocated: web)(reservations: [...]):0.5``."""
    parts = []
    for resource in resources:
        fields = json.loads(source_key(resource))
        label = str(resource.get("name"))
        if "allocation_info" in fields:
            label += f"(allocated: {fields['allocation_info'].get('role')})"
        if fields.get("reservations"):
            entries = ",".join(f"({r.get('type')},{r.get('role')})" for r in fields["reservations"])
            label += f"(reservations: [{entries}])"
        if "scalar" in resource:
            label += f":{resource['scalar']['value']:g}"
        elif "ranges" in resource:
            label += ":[" + ", ".join(f"{r['begin']}-{r['end']}" for r in resource["ranges"]["range"]) + "]"
        parts.append(label)
    return "; ".join(parts) or "{}"


def task_resources(task_info: Mapping[str, Any]) -> tuple[dict[str, tuple[float, float]], list[int]]:
    """The cpus and mem a TaskInfo takes per reservation role, and its ports."""
    usage: dict[str, list[float]] = {}
    ports: list[int] = []
    for resource in task_info.get("resources") or ():
        role = reservation_role(resource)
        if resource.get("name") in ("cpus", "mem"):
            entry = usage.setdefault(role, [0.0, 0.0])
            entry[0 if resource["name"] == "cpus" else 1] += float(resource["scalar"]["value"])
        elif resource.get("name") == "ports":
            for span in resource["ranges"]["range"]:
                ports.extend(range(int(span["begin"]), int(span["end"]) + 1))
    return {role: (cpus, mem) for role, (cpus, mem) in usage.items()}, ports


def open_logs(sandbox: Path) -> tuple[BinaryIO, BinaryIO]:
    """The task's stdout and stderr files, handed to the child (a plain function: opening blocks briefly)."""
    out = open(sandbox / "stdout", "wb")  # noqa: SIM115 - closed by the caller once the child has them
    try:
        return out, open(sandbox / "stderr", "wb")
    except BaseException:
        out.close()
        raise


def exit_message(code: int, core_dumps: bool = False) -> str:
    """The command executor's words (WSTRINGIFY); asyncio reports death by signal N as -N."""
    if code >= 0:
        return f"Command exited with status {code}"
    core = " (core dumped)" if core_dumps and -code in CORE_SIGNALS else ""
    return f"Command terminated with signal {signal.strsignal(-code) or -code}{core}"


def memory_limit_message(mem: float) -> str:
    """The cgroups memory isolator's words for a task it stopped, statistics after a blank line."""
    return (
        f"Memory limit exceeded: Requested: {mem:g}MB Maximum Used: {mem:g}MB\n\n"
        "MEMORY STATISTICS: \ncache 0\nrss 0\nmapped_file 0\n"
    )


def grace_of(holder: dict[str, Any], default: float) -> float:
    """``kill_policy.grace_period`` of a TaskInfo or KILL call, in seconds."""
    nanos = ((holder.get("kill_policy") or {}).get("grace_period") or {}).get("nanoseconds")
    return default if nanos is None else int(nanos) / 1e9


@dataclass
class Held:
    """Resources of an agent held in an outstanding offer."""

    usage: dict[str, tuple[float, float]]  # reservation role -> cpus, mem
    ports: list[int]


@dataclass
class Free:
    """What an agent can still offer: cpus and mem per reservation role ("*": unreserved), and free ports."""

    by_role: dict[str, tuple[float, float]] = field(default_factory=dict)
    ports: list[int] = field(default_factory=list)


class Agent:
    def __init__(
        self,
        index: int,
        hostname: str,
        cpus: float,
        mem: float,
        ports: tuple[int, int],
        work_dir: Path,
        on_status: StatusSink,
        tasks: dict[str, Task],
        reserved: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        self.id = f"{uuid.uuid4()}-S{index}"
        self.hostname = hostname
        self.cpus = cpus
        self.mem = mem
        self.ports = ports
        self.reserved = dict(reserved or {})  # static reservations: role -> cpus, mem (out of cpus and mem)
        self.work_dir = work_dir
        self.tasks = tasks  # shared with the master (every agent's tasks, by id)
        self.removed = False  # the agent failed: no more offers, its tasks are lost
        self.core_dumps = False
        self._on_status = on_status
        self._watchers: set[asyncio.Task[None]] = set()

    def capacity(self) -> dict[str, tuple[float, float]]:
        reserved_cpus = sum(c for c, _ in self.reserved.values())
        reserved_mem = sum(m for _, m in self.reserved.values())
        return {UNRESERVED: (self.cpus - reserved_cpus, self.mem - reserved_mem), **self.reserved}

    def free(self, held: Iterable[Held]) -> Free:
        """Resources neither used by a live task nor ``held`` (outstanding offers); ports must also be bindable."""
        live = [t for t in self.tasks.values() if t.agent_id == self.id and not t.terminal]
        held = list(held)
        left = {role: [cpus, mem] for role, (cpus, mem) in self.capacity().items()}
        for usage in [t.usage for t in live] + [h.usage for h in held]:
            for role, (cpus, mem) in usage.items():
                if role in left:
                    left[role][0] -= cpus
                    left[role][1] -= mem
        taken = {p for t in live for p in t.ports} | {p for h in held for p in h.ports}
        low, high = self.ports
        ports = [p for p in range(low, high + 1) if p not in taken and port_is_bindable(self.hostname, p)]
        return Free({role: (round(c, 6), round(m, 6)) for role, (c, m) in left.items()}, ports)

    def launch(self, framework_id: str, info: dict[str, Any], user: str) -> Task:
        task_id = str(info["task_id"]["value"])
        usage, ports = task_resources(info)
        executor = self.work_dir / "slaves" / self.id / "frameworks" / framework_id / "executors" / task_id
        run = executor / "runs" / str(uuid.uuid4())
        run.mkdir(parents=True)
        (executor / "runs" / "latest").symlink_to(run.name)
        grace = grace_of(info, DEFAULT_KILL_GRACE_SECS)
        task = Task(task_id, framework_id, self.id, usage, tuple(ports), run, grace, user, info=info)
        task.mem_limit = sum(mem for _, mem in usage.values())
        self.tasks[task_id] = task
        watcher = asyncio.create_task(self._run(task, info["command"]), name=f"task {task_id}")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return task

    def kill(self, task: Task, grace: float) -> None:
        """SIGTERM, then SIGKILL after ``grace`` (at once when it is 0); reported as TASK_KILLED."""
        task.kill_requested = True
        if grace <= 0:
            self.signal(task, signal.SIGKILL)
            return
        self.signal(task, signal.SIGTERM)
        asyncio.get_running_loop().call_later(grace, self.signal, task, signal.SIGKILL)

    def lose(self, task: Task) -> None:
        task.lost = True
        self.signal(task, signal.SIGKILL)

    def run_out_of_memory(self, task: Task) -> None:
        """What the memory isolator does to a task over its limit: SIGKILL, reported as a memory limitation."""
        task.out_of_memory = True
        self.signal(task, signal.SIGKILL)

    def signal(self, task: Task, signum: int) -> None:
        if task.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(task.process.pid, signum)

    async def shutdown(self) -> None:
        """Kill every task's process group and wait for the watchers: no process outlives the emulator."""
        for task in self.tasks.values():
            self.signal(task, signal.SIGKILL)
        await asyncio.gather(*self._watchers, return_exceptions=True)

    def _report(
        self,
        task: Task,
        state: str,
        message: str | None = None,
        reason: str | None = None,
        source: str = "SOURCE_EXECUTOR",
    ) -> None:
        task.state = state
        self._on_status(task, state, message, reason, source)

    async def _run(self, task: Task, command: dict[str, Any]) -> None:
        env = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
        env.update({v["name"]: v.get("value", "") for v in (command.get("environment") or {}).get("variables", [])})
        env.update(
            {
                "MESOS_SANDBOX": str(task.sandbox),
                "MESOS_DIRECTORY": str(task.sandbox),
                "MESOS_TASK_ID": task.id,
                "MESOS_FRAMEWORK_ID": task.framework_id,
                "MESOS_AGENT_ID": self.id,
            }
        )
        if command.get("shell", True):
            argv = ["/bin/sh", "-c", command["value"]]
        else:
            argv = [command["value"], *command.get("arguments", [])[1:]]
        try:
            out, err = open_logs(task.sandbox)
            with out, err:
                task.process = await asyncio.create_subprocess_exec(
                    *argv,
                    cwd=task.sandbox,
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
        except OSError as error:
            message = f"Failed to launch the command: {error}"
            self._report(task, "TASK_FAILED", message, "REASON_COMMAND_EXECUTOR_FAILED")
            return
        self._report(task, "TASK_STARTING")
        if task.kill_requested:
            self.signal(task, signal.SIGKILL)
        self._report(task, "TASK_RUNNING")
        code = await task.process.wait()
        self.signal(task, signal.SIGKILL)  # what the command left behind dies with it
        if task.lost:
            self._report(task, "TASK_LOST", "Agent lost the task", "REASON_AGENT_DISCONNECTED", "SOURCE_MASTER")
        elif task.out_of_memory:
            message = memory_limit_message(task.mem_limit)
            self._report(task, "TASK_FAILED", message, "REASON_CONTAINER_LIMITATION_MEMORY", "SOURCE_AGENT")
        elif task.kill_requested:
            self._report(task, "TASK_KILLED", exit_message(code, self.core_dumps))
        elif code == 0:
            self._report(task, "TASK_FINISHED", exit_message(code))
        else:
            message = exit_message(code, self.core_dumps)
            self._report(task, "TASK_FAILED", message, "REASON_COMMAND_EXECUTOR_FAILED")
