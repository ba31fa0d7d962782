"""A Mesos master emulator (v1 scheduler HTTP API) with one agent whose tasks are real local processes.

The scheduler API is in ``mesos_master``, the agent in ``mesos_agent``. Emulator-only controls live under
``/emulator/`` for tests: read the state, close the event stream, kill or lose a task, change the agent's resources,
pause heartbeats.

Run from the project root: ``python -m tests.emulators.mesos --port 5050`` (``--port 0`` picks a free port; the
first line on stdout says where it listens). ``--leader HOST:PORT`` makes it a non-leading master that answers
every scheduler call with a 307 to the leader.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web

from tests.emulators.mesos_agent import Task
from tests.emulators.mesos_master import Config, Master
from tests.emulators.runner import READY_PREFIX

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

    async def kill_task(request: web.Request) -> web.Response:
        master.agent.signal(_task_or_404(master, request), signal.SIGKILL)
        return web.json_response({"killed": request.match_info["task_id"]})

    async def lose_task(request: web.Request) -> web.Response:
        task = _task_or_404(master, request)
        master.agent.lose(task)
        return web.json_response({"lost": task.id})

    async def agent(request: web.Request) -> web.Response:
        body = await request.json()
        agent = master.agent
        agent.cpus = float(body.get("cpus", agent.cpus))
        agent.mem = float(body.get("mem", agent.mem))
        low, high = body.get("ports", agent.ports)
        agent.ports = (int(low), int(high))
        master.rescind_all()
        return web.json_response(master.state()["agent"])

    async def heartbeats(request: web.Request) -> web.Response:
        master.heartbeats = bool((await request.json()).get("enabled", True))
        return web.json_response({"enabled": master.heartbeats})

    yield web.get("/emulator/state", state)
    yield web.post("/emulator/close-stream", close_stream)
    yield web.post("/emulator/tasks/{task_id}/kill", kill_task)
    yield web.post("/emulator/tasks/{task_id}/lose", lose_task)
    yield web.post("/emulator/agent", agent)
    yield web.post("/emulator/heartbeats", heartbeats)


def build_app(config: Config) -> web.Application:
    master = Master(config)
    app = web.Application()
    app.router.add_route("*", "/api/v1/scheduler", master.scheduler)
    app.router.add_routes(list(controls(master)))
    app.on_startup.append(master.start)
    app.on_shutdown.append(master.shutdown)
    return app


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.emulators.mesos", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5050)
    parser.add_argument("--leader", metavar="HOST:PORT", help="act as a non-leading master redirecting there")
    parser.add_argument("--hostname", default="127.0.0.1", help="the agent's hostname (where tasks listen)")
    parser.add_argument("--cpus", type=float, default=8.0)
    parser.add_argument("--mem", type=float, default=16384.0, help="MiB")
    parser.add_argument("--port-range", default="31000-31999", help="the agent's ports resource, LOW-HIGH")
    parser.add_argument("--work-dir", type=Path, default=None, help="the agent's sandboxes (default: a new temp dir)")
    parser.add_argument("--heartbeat-secs", type=float, default=15.0)
    parser.add_argument("--allocation-secs", type=float, default=1.0)
    parser.add_argument("--update-retry-secs", type=float, default=10.0)
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    low, high = (int(p) for p in args.port_range.split("-"))
    config = Config(
        hostname=args.hostname,
        cpus=args.cpus,
        mem=args.mem,
        ports=(low, high),
        work_dir=(args.work_dir or Path(tempfile.mkdtemp(prefix="mesos-emulator-"))).resolve(),
        heartbeat_secs=args.heartbeat_secs,
        allocation_secs=args.allocation_secs,
        update_retry_secs=args.update_retry_secs,
        leader=args.leader,
    )
    runner = web.AppRunner(build_app(config), handler_cancellation=True, access_log=None, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    host, port = runner.addresses[0][:2]
    print(f"{READY_PREFIX}http://{host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(serve(parse_args(sys.argv[1:])))
