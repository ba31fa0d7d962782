"""A Mesos master emulator (v1 scheduler HTTP API) with one agent whose tasks are real local processes.

The scheduler API is in ``mesos_master``, the agents in ``mesos_agent``. Emulator-only controls live under
``/emulator/`` for tests: read the state, close the event stream, kill a task (with a signal), lose it (and have it
come back), run it out of memory, change the first agent's resources, remove an agent, pause heartbeats, fail the
master over, send an event of any type the master sends, have the next calls of a type arrive late
(``POST /emulator/slow-calls`` ``{"type": "DECLINE", "delay-ms": 2000, "count": 1}``), and switch real-master
behaviours on and off (``POST /emulator/behaviours``, see ``mesos_master.Behaviours``).

Run from the project root: ``python -m tests.emulators.mesos --port 5050`` (``--port 0`` picks a free port; the
first line on stdout says where it listens). ``--leader HOST:PORT`` makes it a non-leading master that answers
every scheduler call with a 307 to the leader.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from tests.emulators.mesos_agent import Task
from tests.emulators.mesos_master import Config, Master
from tests.emulators.runner import emulator_arguments, listening_socket, run, serve_until_stopped, work_dir

# -- emulator-only controls --


def _task_or_404(master: Master, request: web.Request) -> Task:
    task = master.tasks.get(request.match_info["task_id"])
    if task is None or task.terminal:
        raise web.HTTPNotFound(text=f"No running task {request.match_info['task_id']}")
    return task


def controls(master: Master) -> Iterator[web.RouteDef]:
    async def state(request: web.Request) -> web.Response:
        return web.json_response(master.state())

    async def close_stream(request: web.Request) -> web.Response:
        closed = [f.id for f in master.frameworks.values() if f.stream is not None]
        for framework in master.frameworks.values():
            if framework.stream is not None:
                framework.stream.put_nowait(None)
        return web.json_response({"closed": closed})

    async def body_of(request: web.Request) -> dict[str, Any]:
        body = await request.json() if request.can_read_body else {}
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="the body must be a JSON object")
        return body

    async def kill_task(request: web.Request) -> web.Response:
        task = _task_or_404(master, request)
        name = str((await body_of(request)).get("signal", "KILL")).upper().removeprefix("SIG")
        master.agent_of(task.agent_id).signal(task, signal.Signals[f"SIG{name}"])  # type: ignore[union-attr]
        return web.json_response({"killed": task.id})

    async def lose_task(request: web.Request) -> web.Response:
        """The agent loses the task (TASK_LOST); with come-back-after-ms the process lives on and reappears."""
        task = _task_or_404(master, request)
        after = (await body_of(request)).get("come-back-after-ms")
        if after is None:
            master.agent_of(task.agent_id).lose(task)  # type: ignore[union-attr]
        else:
            task.state = "TASK_LOST"
            master._update(
                task.framework_id,
                task.agent_id,
                task.id,
                "TASK_LOST",
                "Agent disconnected",
                "REASON_AGENT_DISCONNECTED",
            )
            asyncio.get_running_loop().call_later(float(after) / 1000, master.come_back, task)
        return web.json_response({"lost": task.id})

    async def oom_task(request: web.Request) -> web.Response:
        task = _task_or_404(master, request)
        master.agent_of(task.agent_id).run_out_of_memory(task)  # type: ignore[union-attr]
        return web.json_response({"out-of-memory": task.id})

    async def behaviours(request: web.Request) -> web.Response:
        try:
            return web.json_response(master.set_behaviours(await body_of(request)))
        except ValueError as error:
            raise web.HTTPBadRequest(text=str(error)) from None

    async def fail_over(request: web.Request) -> web.Response:
        master.fail_over()
        return web.json_response({"reregistering-for-secs": master.behaviours.reregister_after_secs})

    async def remove_agent(request: web.Request) -> web.Response:
        index = int(request.match_info["index"])
        if not 0 <= index < len(master.agents):
            raise web.HTTPNotFound(text=f"No agent {index}; there are {len(master.agents)}")
        master.remove_agent(master.agents[index])
        return web.json_response({"removed": master.agents[index].id})

    async def send_event(request: web.Request) -> web.Response:
        try:
            return web.json_response(master.send_event(str((await body_of(request)).get("type"))))
        except ValueError as error:
            raise web.HTTPBadRequest(text=str(error)) from None

    async def agent(request: web.Request) -> web.Response:
        body = await request.json()
        agent = master.agent
        agent.cpus = float(body.get("cpus", agent.cpus))
        agent.mem = float(body.get("mem", agent.mem))
        low, high = body.get("ports", agent.ports)
        agent.ports = (int(low), int(high))
        master.rescind_all()
        return web.json_response(master.state()["agent"])

    async def slow_calls(request: web.Request) -> web.Response:
        body = await body_of(request)
        kind, delay, count = str(body.get("type")), float(body.get("delay-ms", 0)) / 1000, int(body.get("count", 1))
        master.slow_calls[kind] = (delay, count)
        return web.json_response({"type": kind, "delay-ms": delay * 1000, "count": count})

    async def heartbeats(request: web.Request) -> web.Response:
        master.heartbeats = bool((await request.json()).get("enabled", True))
        return web.json_response({"enabled": master.heartbeats})

    yield web.get("/emulator/state", state)
    yield web.post("/emulator/close-stream", close_stream)
    yield web.post("/emulator/tasks/{task_id}/kill", kill_task)
    yield web.post("/emulator/tasks/{task_id}/lose", lose_task)
    yield web.post("/emulator/tasks/{task_id}/oom", oom_task)
    yield web.post("/emulator/behaviours", behaviours)
    yield web.post("/emulator/master-failover", fail_over)
    yield web.post("/emulator/agents/{index}/remove", remove_agent)
    yield web.post("/emulator/events", send_event)
    yield web.post("/emulator/agent", agent)
    yield web.post("/emulator/heartbeats", heartbeats)
    yield web.post("/emulator/slow-calls", slow_calls)


def build_app(config: Config) -> web.Application:
    master = Master(config)
    app = web.Application()
    app.router.add_route("*", "/api/v1/scheduler", master.scheduler)
    app.router.add_route("*", "/api/v1", master.operator)
    app.router.add_routes(list(controls(master)))
    app.on_startup.append(master.start)
    app.on_shutdown.append(master.shutdown)
    return app


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = emulator_arguments(
        "tests.emulators.mesos",
        __doc__,
        port=5050,
        host_help="address to listen on",
        work_dir_help="the agent's sandboxes",
    )
    parser.add_argument("--leader", metavar="HOST:PORT", help="act as a non-leading master redirecting there")
    parser.add_argument("--hostname", default="127.0.0.1", help="the agent's hostname (where tasks listen)")
    parser.add_argument("--cpus", type=float, default=8.0)
    parser.add_argument("--mem", type=float, default=16384.0, help="MiB")
    parser.add_argument("--port-range", default="31000-31999", help="the agent's ports resource, LOW-HIGH")
    parser.add_argument("--heartbeat-secs", type=float, default=15.0)
    parser.add_argument("--allocation-secs", type=float, default=1.0)
    parser.add_argument("--update-retry-secs", type=float, default=10.0)
    parser.add_argument("--agents", type=int, default=1, help="agents, each with the resources above")
    parser.add_argument(
        "--reserve",
        action="append",
        default=[],
        metavar="ROLE:CPUS:MEM",
        help="statically reserve this much of every agent's cpus and mem (MiB) for ROLE; repeatable",
    )
    parser.add_argument(
        "--behaviour",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="switch a real-master behaviour at start (as POST /emulator/behaviours does), e.g. core-dumps=true",
    )
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    low, high = (int(p) for p in args.port_range.split("-"))
    config = Config(
        hostname=args.hostname,
        cpus=args.cpus,
        mem=args.mem,
        ports=(low, high),
        work_dir=work_dir(args.work_dir, "mesos"),
        heartbeat_secs=args.heartbeat_secs,
        allocation_secs=args.allocation_secs,
        update_retry_secs=args.update_retry_secs,
        leader=args.leader,
        agents=args.agents,
        reserved={role: (float(cpus), float(mem)) for role, cpus, mem in (r.split(":") for r in args.reserve)},
        behaviours=dict(b.split("=", 1) for b in args.behaviour),
    )
    sock = listening_socket(args.host, args.port)
    await serve_until_stopped(build_app(config), sock, handler_cancellation=True, shutdown_timeout=5)


def main(argv: list[str] | None = None) -> int:
    return run("mesos", parse_args(argv), serve)


if __name__ == "__main__":
    sys.exit(main())
