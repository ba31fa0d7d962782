"""The Mesos master emulator's one agent: its resources, and its tasks run as real local processes.

A task runs as ``/bin/sh -c <command>`` (``shell: true``) in a new session, so one ``killpg`` reaches everything it
started. Its sandbox is laid out like a real agent's (``<work-dir>/slaves/<agent>/frameworks/<framework>/executors/
<task>/runs/<run>``, with a ``latest`` link) and holds its ``stdout`` and ``stderr``. Every change of a task is
reported through ``on_status`` in the command executor's words ("Command exited with status 3", "Command
terminated with signal Killed").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from waiter.scheduler.ports import port_is_bindable

TERMINAL = {"TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_ERROR", "TASK_LOST", "TASK_DROPPED", "TASK_GONE"}
# What an agent passes on from its own environment (a real one passes all of it; tests need only these).
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
DEFAULT_KILL_GRACE_SECS = 3.0  # the command executor's default


@dataclass
class Task:
    id: str
    framework_id: str
    cpus: float
    mem: float
    ports: tuple[int, ...]
    sandbox: Path
    kill_grace: float
    state: str = "TASK_STAGING"
    process: asyncio.subprocess.Process | None = None
    kill_requested: bool = False
    lost: bool = False  # report TASK_LOST (the agent "lost" it) instead of how the process ended

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


# (task, state, message, reason, source)
StatusSink = Callable[[Task, str, str | None, str | None, str], None]


def task_resources(task_info: dict[str, Any]) -> tuple[float, float, list[int]]:
    """The cpus, mem and ports a TaskInfo asks for."""
    cpus = mem = 0.0
    ports: list[int] = []
    for resource in task_info.get("resources") or ():
        if resource.get("name") == "cpus":
            cpus += float(resource["scalar"]["value"])
        elif resource.get("name") == "mem":
            mem += float(resource["scalar"]["value"])
        elif resource.get("name") == "ports":
            for span in resource["ranges"]["range"]:
                ports.extend(range(int(span["begin"]), int(span["end"]) + 1))
    return cpus, mem, ports


def open_logs(sandbox: Path) -> tuple[BinaryIO, BinaryIO]:
    """The task's stdout and stderr files, handed to the child (a plain function: opening blocks briefly)."""
    out = open(sandbox / "stdout", "wb")  # noqa: SIM115 - closed by the caller once the child has them
    try:
        return out, open(sandbox / "stderr", "wb")
    except BaseException:
        out.close()
        raise


def exit_message(code: int) -> str:
    """The command executor's words (WSTRINGIFY); asyncio reports death by signal N as -N."""
    if code >= 0:
        return f"Command exited with status {code}"
    return f"Command terminated with signal {signal.strsignal(-code) or -code}"


def grace_of(holder: dict[str, Any], default: float) -> float:
    """``kill_policy.grace_period`` of a TaskInfo or KILL call, in seconds."""
    nanos = ((holder.get("kill_policy") or {}).get("grace_period") or {}).get("nanoseconds")
    return default if nanos is None else int(nanos) / 1e9


class Agent:
    def __init__(
        self, hostname: str, cpus: float, mem: float, ports: tuple[int, int], work_dir: Path, on_status: StatusSink
    ) -> None:
        self.id = f"{uuid.uuid4()}-S0"
        self.hostname = hostname
        self.cpus = cpus
        self.mem = mem
        self.ports = ports
        self.work_dir = work_dir
        self.tasks: dict[str, Task] = {}
        self._on_status = on_status
        self._watchers: set[asyncio.Task[None]] = set()

    def free(self, held: Iterable[tuple[float, float, Iterable[int]]]) -> tuple[float, float, list[int]]:
        """Resources neither used by a live task nor ``held`` (outstanding offers); ports must also be bindable."""
        live = [t for t in self.tasks.values() if not t.terminal]
        held = list(held)
        cpus = self.cpus - sum(t.cpus for t in live) - sum(h[0] for h in held)
        mem = self.mem - sum(t.mem for t in live) - sum(h[1] for h in held)
        taken = {p for t in live for p in t.ports} | {p for h in held for p in h[2]}
        low, high = self.ports
        ports = [p for p in range(low, high + 1) if p not in taken and port_is_bindable(self.hostname, p)]
        return round(cpus, 6), round(mem, 6), ports

    def launch(self, framework_id: str, info: dict[str, Any], cpus: float, mem: float, ports: tuple[int, ...]) -> None:
        task_id = str(info["task_id"]["value"])
        executor = self.work_dir / "slaves" / self.id / "frameworks" / framework_id / "executors" / task_id
        run = executor / "runs" / str(uuid.uuid4())
        run.mkdir(parents=True)
        (executor / "runs" / "latest").symlink_to(run.name)
        task = Task(task_id, framework_id, cpus, mem, ports, run, grace_of(info, DEFAULT_KILL_GRACE_SECS))
        self.tasks[task_id] = task
        watcher = asyncio.create_task(self._run(task, info["command"]), name=f"task {task_id}")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

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
        elif task.kill_requested:
            self._report(task, "TASK_KILLED", exit_message(code))
        elif code == 0:
            self._report(task, "TASK_FINISHED", exit_message(code))
        else:
            self._report(task, "TASK_FAILED", exit_message(code), "REASON_COMMAND_EXECUTOR_FAILED")
