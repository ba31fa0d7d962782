"""Faults under bounded load on 127.0.0.1: what clients see when things break, and what is left behind.

Each scenario starts its own redis-server and router process(es) (local scheduler, tokens POSTed so they live in
Redis), runs a steady load of clients (each sends one request at a time on a new connection), injects one fault
and keeps the load on until the router has recovered. One line per scenario:

    faults <scenario> sent=N failed=N (refused=N) lost=N cut_in_flight=N orphans=N recovery_s=X <detail>

- ``failed``: an answer other than 200, or a connection refused (nobody listening: the request never got in),
  counted apart as ``refused`` too: while a router restarts, clients retrying every 10 ms add up;
- ``lost``: a request the router accepted and never answered when it could have: the connection was reset or
  closed after the request went out, or no answer came in 30 s (requests are POSTs, which no client resends by
  itself). A correct router loses none, SIGTERM included;
- ``cut_in_flight``: requests on a process killed with -9 at the moment of the kill (sent before the kill and
  still unanswered when it struck: in the process, or queued on its socket), which nothing can answer. Only the
  ``*-kill-9`` rows of a process that holds client connections have them (``router-kill-9``; a ``--workers``
  supervisor holds none, its workers drain); a lost request not cut by the kill counts as lost;
- ``orphans``: instance processes (and ``--workers`` worker processes) still alive 10 s after a router died,
  found through the instances' pid files and process groups;
- ``recovery_s``: from the fault to the first 200 after the last request that did not get one (0: none failed).

Scenarios: Redis killed (-9) and restarted with its data (AOF) and without (empty), an instance killed (-9)
mid-request, router SIGTERM and kill -9 (then restarted on the same port and work dir), ``--workers 2`` SIGTERM
and supervisor kill -9 (then restarted), a token update (new version) under load, scale-down after a burst, and
load from zero (64 clients on a service with no instance).

    .venv/bin/python benchmarks/faults.py [--only NAME ...] [--clients 8] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from waiter.scheduler import leftovers  # noqa: E402 - after the path is set, when run as a script

TOKEN = "faults"
REQUEST_TIMEOUT_SECS = 30.0
ORPHAN_WAIT_SECS = 10.0
# The backend: 200 on every path, after 5 ms for a POST, so requests are in flight when a fault strikes. Threads,
# so the router's health probes are answered while requests are served.
BACKEND = """import http.server, os, time


class Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.answer()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", "0")))
        time.sleep(0.005)
        self.answer()

    def answer(self):
        body = os.environ["WAITER_INSTANCE_ID"].encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT0"])), Ok).serve_forever()
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- processes -------------------------------------------------------------------------------------------------


class Redis:
    def __init__(self, workdir: Path, *, persistent: bool) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True)
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        durability = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *durability]
        self.proc = subprocess.Popen(argv, cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def ready(self) -> None:
        await until(lambda: _tcp_open(self.port), 10, "redis-server to listen")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _tcp_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Router:
    """``python -m waiter`` in its own session; restartable on the same port and work dir."""

    def __init__(self, workdir: Path, redis_url: str, *, workers: int = 1) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.work = workdir / "instances"
        tokens = workdir / "tokens"
        tokens.mkdir(parents=True, exist_ok=True)
        config = {
            "port": self.port,
            "tokens-dir": str(tokens),
            "redis": redis_url,
            "workers": workers,
            "drain-timeout-secs": 5,
            "scheduler": {"local": {"work-dir": str(self.work), "port-range": _port_range()}},
            "autoscaler": {"interval-ms": 200, "kill-interval-ms": 300, "burst": {"stable-window-secs": 1}},
        }
        self.workers = workers
        self.config = workdir / "router.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with open(self.workdir / f"router-{self.starts}.log", "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "waiter", "--config", str(self.config)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def ready(self) -> None:
        async def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                log = (self.workdir / f"router-{self.starts}.log").read_text(errors="replace")
                raise RuntimeError(f"the router exited with {self.proc.returncode}:\n{log[-3000:]}")
            return _tcp_open(self.port)

        await until(up, 30, "the router to listen")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def children(self) -> list[psutil.Process]:
        assert self.proc is not None
        with contextlib.suppress(psutil.Error):
            return psutil.Process(self.proc.pid).children()
        return []

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _port_range() -> list[int]:
    low = 40000 + (os.getpid() * 13) % 20000
    return [low, low + 299]


def live_instances(work: Path) -> list[psutil.Process]:
    """Processes of the instances recorded under ``work`` that still run."""
    return [p for _, record in leftovers.read_records(work) for p in leftovers.members(record)]


async def until(predicate: Callable[[], bool | Awaitable[bool]], timeout: float, what: str) -> float:
    start = time.monotonic()
    while True:
        outcome = predicate()
        if await outcome if asyncio.iscoroutine(outcome) else outcome:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def orphans_after(work: Path, extra: list[psutil.Process] | None = None) -> int:
    """Instance (and extra) processes still alive after ORPHAN_WAIT_SECS; 0 as soon as none is."""

    def alive() -> int:
        others = [p for p in extra or [] if _running(p)]
        return len(live_instances(work)) + len(others)

    with contextlib.suppress(RuntimeError):
        await until(lambda: alive() == 0, ORPHAN_WAIT_SECS, "orphans to go")
    return alive()


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# -- load ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    sent: int
    failed: int
    refused: int  # of failed: connections refused
    lost: int
    cut_in_flight: int
    orphans: int
    recovery: float
    detail: str = ""


@dataclass
class Load:
    url: str
    clients: int
    events: list[tuple[float, float, str]] = field(default_factory=list)  # (sent, ended, ok|failed|refused|lost)
    # Set by a scenario that kills (-9) the process holding the clients' connections: (the kill, the process gone).
    killed: tuple[float, float] | None = None
    why_lost: list[str] = field(default_factory=list)  # what the client saw of each lost request
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self, clients: int | None = None) -> None:
        for _ in range(clients or self.clients):
            self._tasks.append(asyncio.create_task(self._client()))

    async def shrink(self, clients: int) -> None:
        """Stop all but ``clients`` clients (each finishes its request in flight)."""
        going, self._tasks = self._tasks[clients:], self._tasks[:clients]
        for task in going:
            task.cancel()
        await asyncio.gather(*going, return_exceptions=True)

    async def _client(self) -> None:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECS)
        connector = aiohttp.TCPConnector(force_close=True, limit=1)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            while not self._stop.is_set():
                sent = time.monotonic()
                outcome = await self._one(session)
                self.events.append((sent, time.monotonic(), outcome))
                if outcome != "ok":
                    await asyncio.sleep(0.01)  # a refused connect returns at once: do not spin

    async def _one(self, session: aiohttp.ClientSession) -> str:
        try:
            # POST: a client may not resend it on its own (aiohttp resends an idempotent request once when the
            # connection drops, which would hide exactly the losses counted here).
            async with session.post(self.url + "/", data=b"x" * 64, headers={"x-waiter-token": TOKEN}) as resp:
                await resp.read()
                return "ok" if resp.status == 200 else "failed"
        except aiohttp.ClientConnectorError:
            return "refused"  # nobody listening: the request never got in
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            self.why_lost.append(type(error).__name__)
            return "lost"

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def summary(self, fault_at: float) -> Row:
        """The figures of a run (without orphans and detail); definitions in the module's doc."""
        kinds = [kind for _, _, kind in self.events]
        lost = [(sent, ended) for sent, ended, kind in self.events if kind == "lost"]
        cut = 0
        if self.killed is not None:
            kill, gone = self.killed
            cut = sum(1 for sent, ended in lost if sent < gone and ended >= kill)
        bad = [ended for _, ended, kind in self.events if kind != "ok" and ended >= fault_at]
        recovery = 0.0
        if bad:
            recovered = [ended for _, ended, kind in self.events if kind == "ok" and ended > bad[-1]]
            recovery = (recovered[0] if recovered else time.monotonic()) - fault_at
        return Row(
            sent=len(kinds),
            failed=kinds.count("failed") + kinds.count("refused"),
            refused=kinds.count("refused"),
            lost=len(lost) - cut,
            cut_in_flight=cut,
            orphans=0,
            recovery=recovery,
        )


# -- scenarios ---------------------------------------------------------------------------------------------------


@dataclass
class Env:
    workdir: Path
    redis: Redis
    router: Router
    clients: int

    async def post_token(self, **fields: Any) -> None:
        backend = self.workdir / "backend.py"
        backend.write_text(BACKEND)
        body = {
            "token": TOKEN,
            "cmd": f"exec {sys.executable} {backend}",
            "version": "1",
            "cpus": 0.1,
            "mem": 128,
            "health-check-url": "/status",
            "concurrency-level": 4,
            "termination-grace-period-secs": 1,
            **fields,
        }
        async with aiohttp.ClientSession() as session, session.post(self.router.url + "/token", json=body) as resp:
            if resp.status not in (200, 201):
                raise RuntimeError(f"POST /token answered {resp.status}: {await resp.text()}")

    async def warm(self) -> None:
        async with aiohttp.ClientSession() as session:

            async def served() -> bool:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(self.router.url + "/", headers={"x-waiter-token": TOKEN}) as resp:
                        return resp.status == 200
                return False

            await until(served, 60, "the first request to be served")

    async def service(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session:
            async with session.get(self.router.url + "/apps") as resp:
                apps = await resp.json()
            sid = max(apps, key=lambda app: app.get("last-request-time") or "")["service-id"]
            async with session.get(self.router.url + f"/apps/{sid}") as resp:
                return dict(await resp.json())


Scenario = Callable[[Env, Load], Awaitable[tuple[float, int, str]]]  # -> (fault time, orphans, detail)


async def redis_kill(env: Env, load: Load) -> tuple[float, int, str]:
    fault = time.monotonic()
    env.redis.kill()
    await asyncio.sleep(2.0)
    env.redis.start()
    await env.redis.ready()
    await asyncio.sleep(4.0)
    return fault, 0, "redis down 2 s"


async def instance_kill(env: Env, load: Load) -> tuple[float, int, str]:
    (first, *_) = (await env.service())["instances"]["active-instances"]
    fault = time.monotonic()
    os.killpg(first["shell-scheduler/pid"], signal.SIGKILL)
    await asyncio.sleep(4.0)
    return fault, 0, "one of 2 instances"


async def router_sigterm(env: Env, load: Load) -> tuple[float, int, str]:
    return await _router_down(env, load, signal.SIGTERM)


async def router_kill(env: Env, load: Load) -> tuple[float, int, str]:
    return await _router_down(env, load, signal.SIGKILL)


async def _router_down(env: Env, load: Load, signum: int) -> tuple[float, int, str]:
    router = env.router
    assert router.proc is not None
    workers = router.children() if signum == signal.SIGKILL else []
    workers = [p for p in workers if "--worker-of" in " ".join(_cmdline(p))]
    agent_dirs = {
        Path(argv[argv.index("--worker-of") + 1].removeprefix("unix:")).parent
        for argv in map(_cmdline, workers)
        if "--worker-of" in argv
    }
    fault = time.monotonic()
    router.signal(signum)
    await asyncio.to_thread(router.proc.wait)
    gone = time.monotonic()
    stopped = gone - fault
    if signum == signal.SIGKILL and router.workers == 1:  # it held the clients' connections (a supervisor holds none)
        load.killed = (fault, gone)
    orphans = await orphans_after(router.work, workers)
    left = time.monotonic() - gone  # its workers' drain and its instances' exit, which the restart waits for
    for directory in agent_dirs:  # a supervisor killed by SIGKILL leaves its agent's socket directory
        shutil.rmtree(directory, ignore_errors=True)
    router.start()
    await router.ready()
    await asyncio.sleep(3.0)
    return fault, orphans, f"router exited in {stopped:.1f} s, what it left {left:.1f} s later, restarted"


def _cmdline(process: psutil.Process) -> list[str]:
    with contextlib.suppress(psutil.Error):
        return process.cmdline()
    return []


async def token_roll(env: Env, load: Load) -> tuple[float, int, str]:
    before = (await env.service())["service-id"]
    fault = time.monotonic()
    await env.post_token(version="2")

    async def rolled() -> bool:
        return bool((await env.service())["service-id"] != before)

    took = await until(rolled, 60, "requests to reach the new version")
    await asyncio.sleep(3.0)
    return fault, 0, f"new version serving after {took:.1f} s"


async def scale_down(env: Env, load: Load) -> tuple[float, int, str]:
    async def count() -> int:
        return len((await env.service())["instances"]["active-instances"])

    load.start(4 * env.clients)  # a burst: scale up
    await asyncio.sleep(5.0)
    peak = await count()
    fault = time.monotonic()
    await load.shrink(2)

    async def down() -> bool:
        return await count() <= 1

    with contextlib.suppress(RuntimeError):
        await until(down, 30, "scale-down")
    return fault, 0, f"instances {peak}->{await count()}"


async def from_zero(env: Env, load: Load) -> tuple[float, int, str]:
    fault = time.monotonic()
    load.start(8 * env.clients)
    await until(lambda: any(kind == "ok" for _, _, kind in load.events), 60, "the first answer")
    first = min(ended for _, ended, kind in load.events if kind == "ok") - fault
    await asyncio.sleep(5.0)
    return fault, 0, f"{8 * env.clients} clients at once, first 200 after {first:.2f} s"


@dataclass(frozen=True)
class Plan:
    name: str
    run: Scenario
    persistent_redis: bool = True
    workers: int = 1
    token: dict[str, Any] = field(default_factory=dict)
    warm: bool = True
    load_at_start: bool = True


PLANS = [
    Plan("redis-kill-with-data", redis_kill),
    Plan("redis-kill-data-lost", redis_kill, persistent_redis=False),
    Plan("instance-kill", instance_kill, token={"min-instances": 2}),
    Plan("router-sigterm", router_sigterm),
    Plan("router-kill-9", router_kill),
    Plan("workers-sigterm", router_sigterm, workers=2),
    Plan("supervisor-kill-9", router_kill, workers=2),
    Plan("token-roll", token_roll),
    Plan("scale-down", scale_down, token={"scale-down-factor": 0.9}, load_at_start=False),
    Plan("load-from-zero", from_zero, warm=False, load_at_start=False),
]


async def run_plan(plan: Plan, workdir: Path, clients: int) -> Row:
    redis = Redis(workdir, persistent=plan.persistent_redis)
    redis.start()
    router = Router(workdir, redis.url, workers=plan.workers)
    try:
        await redis.ready()
        router.start()
        await router.ready()
        env = Env(workdir, redis, router, clients)
        await env.post_token(**plan.token)
        if plan.warm:
            await env.warm()
        load = Load(router.url, clients)
        if plan.load_at_start:
            load.start()
            await asyncio.sleep(1.0)
        fault, orphans, detail = await plan.run(env, load)
        await load.stop()
        row = replace(load.summary(fault), orphans=orphans, detail=detail)
        if load.why_lost:  # lost and cut together: what the clients saw
            seen = ", ".join(f"{kind} x{n}" for kind, n in sorted(Counter(load.why_lost).items()))
            row = replace(row, detail=f"{detail}; lost or cut: {seen}")
        return row
    finally:
        router.stop()
        redis.kill()
        for process in live_instances(router.work):  # only after a failure: say so
            print(f"# faults {plan.name}: killing leftover instance process {process.pid}", flush=True)
            with contextlib.suppress(psutil.Error):
                process.kill()


def line(name: str, row: Row) -> str:
    return (
        f"faults {name} sent={row.sent} failed={row.failed} (refused={row.refused}) lost={row.lost} "
        f"cut_in_flight={row.cut_in_flight} orphans={row.orphans} "
        f"recovery_s={row.recovery:.2f} {row.detail}"
    ).rstrip()


async def main(args: argparse.Namespace) -> int:
    if shutil.which("redis-server") is None:
        print("faults: redis-server is not installed (bash tests/install-system-packages.sh installs it)")
        return 2
    plans = [p for p in PLANS if not args.only or p.name in args.only]
    definitions = __doc__[__doc__.index("- ``failed``") : __doc__.index("\n\nScenarios:")]
    for text in definitions.splitlines():
        print(f"# {text}", flush=True)
    base = Path(tempfile.mkdtemp(prefix="waiter-faults-"))
    try:
        for plan in plans:
            workdir = base / plan.name
            workdir.mkdir()
            try:
                row = await run_plan(plan, workdir, args.clients)
            except Exception as error:  # one broken scenario does not hide the others' figures
                print(f"faults {plan.name} error={json.dumps(str(error)[:300])}", flush=True)
                continue
            print(line(plan.name, row), flush=True)
    finally:
        if args.keep:
            print(f"# faults: work directory kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="scenario names to run (default: all)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients of the steady load")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, sandboxes)")
    sys.exit(asyncio.run(main(parser.parse_args())))
