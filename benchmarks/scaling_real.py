"""The simulator against the real router: the same arrivals through ``python -m waiter`` and through scaling_sim.

The router runs as a process on 127.0.0.1 with the local scheduler and its default autoscaler settings; the
backend answers every request after a fixed service time and starts listening after a fixed start-up delay. An
open-loop client sends each request at its arrival time (new connection each, no retries) and the router's access
log (``access-log: json``) gives each request's queue wait; ``/metrics`` (``waiter_requested_instances``),
sampled every 0.1 s, gives the instances over time, and ``/apps/<id>`` (every 0.2 s) how long the instances
started during the run took to become healthy. Two shapes, scaled to a 2-core machine:

* ``step``: the simulator's step (idle, then a constant rate, then idle) at ``--step-rate`` req/s (12) of
  ``--step-service`` s (0.5) requests, concurrency-level 1, a ``--startup`` s (2) backend start-up, for
  ``--step-secs`` (60) between 10 s of idle before and 20 s after. Printed next to scaling_sim's prediction for
  the same arrivals, with the start-up and the time a request held its slot measured in the run: the gaps
  ``real/sim`` of instance-seconds and p99 wait (target: within 25%).
* ``from-zero``: Knative's load test scaled down: no instance running, then open-loop ``--zero-rates`` (60, 120,
  180 req/s) for ``--zero-secs`` (10) each, ``--zero-service`` (0.1 s) requests, concurrency-level 4. Printed:
  errors, and the instance-seconds against the Little's-law need, sum over phases of ceil(rate x service /
  concurrency) x phase length (target: 0 errors, at most 1.5x the need); beside them the simulator's prediction
  for the same arrivals with the start-up and the time a request held its slot as measured in the run (on a
  loaded machine more than the backend's service time), and the need by Little's law at that held time.

    .venv/bin/python benchmarks/scaling_real.py [--only step|from-zero] [--keep]

Lines: ``scaling_real shape=... source=real|sim ...`` per run, then the ratio lines. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import scaling_sim as sim  # noqa: E402
from faults import free_port, until  # noqa: E402

TOKEN = "scaling-real"
# The backend: health checks at /health answer at once; every other request after SERVICE_MS. Threads, so requests
# on one instance (concurrency-level > 1) run together.
BACKEND = """import http.server, os, time

time.sleep(int(os.environ["STARTUP_MS"]) / 1000)
SERVICE = int(os.environ["SERVICE_MS"]) / 1000


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The head and the body go out as two writes: with Nagle on, the body waits for the router's delayed ACK
    # (40 ms on Linux), which made every request hold its slot 0.14 s instead of 0.1 s.
    disable_nagle_algorithm = True

    def do_GET(self):
        if self.path != "/health":
            time.sleep(SERVICE)
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT0"])), Handler).serve_forever()
"""


@dataclass
class Setup:
    name: str
    service_secs: float
    concurrency: int
    startup_secs: float
    arrivals: tuple[float, ...]
    duration: float
    phases: tuple[tuple[float, float], ...] = ()  # (rate, seconds) for the Little's-law need
    warm: bool = False  # one instance healthy before the clock starts (the simulator's equilibrium)


@dataclass
class Run:
    waits: list[float] = field(default_factory=list)
    backend: list[float] = field(default_factory=list)  # seconds each request held its instance's slot
    statuses: list[int] = field(default_factory=list)
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, instances requested)
    startups: list[float] = field(default_factory=list)  # seconds from each instance's start to its first health

    def held(self, nominal: float) -> float:
        """Mean seconds a request held its slot as the router measured it (its autoscaler's service time): on a
        loaded machine more than the backend's own service time (the relay's share), and Little's law on it asks
        for more instances than on the nominal one."""
        return sum(self.backend) / len(self.backend) if self.backend else nominal

    def startup(self, measured: float) -> float:
        """Mean seconds the instances started during the run took to become healthy (``measured`` if none)."""
        return sum(self.startups) / len(self.startups) if self.startups else measured

    @property
    def errors(self) -> int:
        return sum(1 for s in self.statuses if s != 200)

    @property
    def instance_seconds(self) -> float:
        total = 0.0
        for (t0, n), (t1, _) in zip(self.samples, self.samples[1:], strict=False):
            total += n * (t1 - t0)
        return total


class RouterProcess:
    def __init__(self, workdir: Path, setup: Setup) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        tokens = workdir / "tokens"
        tokens.mkdir(parents=True)
        backend = workdir / "backend.py"
        backend.write_text(BACKEND)
        token = {
            "token": TOKEN,
            "version": setup.name,
            "cmd": f"exec {sys.executable} {backend}",
            "cpus": 0.1,
            "mem": 128,
            "health-check-url": "/health",
            "concurrency-level": setup.concurrency,
            "min-instances": 1,
            "max-instances": 100,
            "env": {
                "STARTUP_MS": str(round(setup.startup_secs * 1000)),
                "SERVICE_MS": str(round(setup.service_secs * 1000)),
            },
        }
        (tokens / f"{TOKEN}.yaml").write_text(yaml.safe_dump(token))
        low = 30000 + (os.getpid() * 7) % 20000
        config = {
            "port": self.port,
            "tokens-dir": str(tokens),
            "access-log": "json",
            "drain-timeout-secs": 5,
            "scheduler": {"local": {"work-dir": str(workdir / "instances"), "port-range": [low, low + 499]}},
        }
        self.config = workdir / "router.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.log = workdir / "router.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        with open(self.log, "wb") as out, open(self.workdir / "router.err", "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "waiter", "--config", str(self.config)],
                cwd=ROOT, stdout=out, stderr=err, start_new_session=True,
            )

    async def start(self) -> None:
        self.spawn()

        async def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"the router exited with {self.proc.returncode}; see {self.log}")
            with contextlib.suppress(OSError, aiohttp.ClientError):
                async with aiohttp.ClientSession() as session, session.get(self.url + "/status") as resp:
                    return resp.status == 200
            return False

        await until(up, 30, "the router to answer")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def access_lines(self) -> list[dict[str, object]]:
        lines = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    lines.append(json.loads(line))
        return lines


async def requested_instances(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url + "/metrics") as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        if family.name == "waiter_requested_instances":
            return int(sum(s.value for s in family.samples))
    return 0


async def drive(router: RouterProcess, setup: Setup) -> Run:
    """Send the arrivals open-loop; sample the instances requested every 0.1 s until the shape's end."""
    run = Run()
    headers = {"x-waiter-token": TOKEN}
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        if setup.warm:
            async with client.get(router.url + "/warm", headers=headers) as resp:
                await resp.read()
        start = time.monotonic()

        async def one(at: float) -> None:
            await asyncio.sleep(max(0.0, start + at - time.monotonic()))
            try:
                async with client.get(router.url + "/work", headers=headers) as resp:
                    await resp.read()
                    run.statuses.append(resp.status)
            except (aiohttp.ClientError, OSError, TimeoutError):
                run.statuses.append(0)

        async def sample() -> None:
            async with aiohttp.ClientSession() as session:
                while (now := time.monotonic() - start) < setup.duration:
                    with contextlib.suppress(aiohttp.ClientError, OSError):
                        run.samples.append((now, await requested_instances(session, router.url)))
                    await asyncio.sleep(0.1)

        async def watch_starts() -> None:
            # How long instances started during the run take to become healthy on this machine under this load
            # (several starting at once take longer than the one cold start measure_startup sees).
            began, seen, period = time.time(), set(), 0.2
            async with aiohttp.ClientSession() as session:
                while time.monotonic() - start < setup.duration:
                    with contextlib.suppress(aiohttp.ClientError, OSError, KeyError, ValueError):
                        async with session.get(router.url + "/apps") as resp:
                            apps = await resp.json()
                        for app in apps:
                            async with session.get(router.url + f"/apps/{app['service-id']}") as resp:
                                detail = await resp.json()
                            for instance in detail["instances"]["active-instances"]:
                                started = _epoch(instance["started-at"])
                                if instance["healthy?"] and instance["id"] not in seen and started >= began:
                                    run.startups.append(time.time() - period / 2 - started)
                                if instance["healthy?"]:
                                    seen.add(instance["id"])
                    await asyncio.sleep(period)

        await asyncio.gather(sample(), watch_starts(), *(one(at) for at in setup.arrivals))
    work = [line for line in router.access_lines() if line.get("path") == "/work"]
    run.waits = [float(str(line["queue-wait-ms"])) / 1000 for line in work if line.get("queue-wait-ms") is not None]
    run.backend = [float(str(line["backend-ms"])) / 1000 for line in work if line.get("backend-ms") is not None]
    return run


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def measure_startup(workdir: Path, startup: float) -> float:
    """Seconds from a cold request to its answer, less the service time: what an instance takes to start here."""
    setup = Setup("warmup", 0.0, 1, startup, (), 0.0)
    router = RouterProcess(workdir / "warmup", setup)
    await router.start()
    try:
        async with aiohttp.ClientSession() as client:
            began = time.monotonic()
            async with client.get(router.url + "/work", headers={"x-waiter-token": TOKEN}) as resp:
                await resp.read()
            return time.monotonic() - began
    finally:
        router.stop()


def poisson(rate_at: list[tuple[float, float, float]], seed: int) -> tuple[float, ...]:
    """Arrivals for piecewise-constant rates: (start, end, rate)."""
    rng = random.Random(seed)
    out: list[float] = []
    for begin, end, rate in rate_at:
        t = begin
        while rate > 0:
            t += rng.expovariate(rate)
            if t >= end:
                break
            out.append(t)
    return tuple(out)


def line(shape: str, source: str, instance_s: float, waits: list[float], extra: str = "") -> str:
    p99 = sim.percentile(waits, 0.99)
    mean = sum(waits) / len(waits) if waits else 0.0
    return (f"scaling_real shape={shape} source={source} instance_s={instance_s:.1f} mean_wait_s={mean:.3f} "
            f"p99_wait_s={p99:.3f} requests={len(waits)}{extra}")


async def step(args: argparse.Namespace, workdir: Path) -> bool:
    startup = await measure_startup(workdir, args.startup)
    print(f"# step: backend start-up {args.startup:g} s, measured cold start {startup:.2f} s")
    idle_after = 20.0
    begin, end = 10.0, 10.0 + args.step_secs
    arrivals = poisson([(begin, end, args.step_rate)], seed=1)
    setup = Setup("step", args.step_service, 1, args.startup, arrivals, end + idle_after, warm=True)
    router = RouterProcess(workdir / "step", setup)
    await router.start()
    try:
        real = await drive(router, setup)
    finally:
        router.stop()
    held, startup = real.held(args.step_service), real.startup(startup)
    print(f"# step: backend {args.step_service:g} s, held {held:.3f} s a request as the router measured it "
          f"(x{held / args.step_service:.2f}); instances started in {startup:.2f} s during the run "
          f"({len(real.startups)} seen); both used by the simulator")
    shape = sim.Shape("step", arrivals, (held,) * len(arrivals), duration=setup.duration)
    ours = next(a for a in sim.algorithms(1) if a.name == "ours")
    predicted = sim.simulate(shape, ours, startup=startup)
    print(line("step", "real", real.instance_seconds, real.waits, f" errors={real.errors}"))
    print(line("step", "sim", predicted.instance_seconds, predicted.waits))
    cost = real.instance_seconds / predicted.instance_seconds
    p99_real, p99_sim = sim.percentile(real.waits, 0.99), predicted.p99_wait
    p99 = p99_real / p99_sim if p99_sim > 0 else math.inf
    met = abs(cost - 1) <= 0.25 and abs(p99 - 1) <= 0.25
    print(f"scaling_real shape=step real/sim instance_s=x{cost:.3f} p99_wait=x{p99:.3f} "
          f"target(within_25%) {'met' if met else 'MISSED'}")
    return met


async def from_zero(args: argparse.Namespace, workdir: Path) -> bool:
    service, concurrency = args.zero_service, 4
    startup = await measure_startup(workdir / "zero-warmup", args.startup)
    phases = tuple((float(rate), args.zero_secs) for rate in args.zero_rates)
    spans, t = [], 0.0
    for rate, secs in phases:
        spans.append((t, t + secs, rate))
        t += secs
    arrivals = poisson(spans, seed=2)
    setup = Setup("from-zero", service, concurrency, args.startup, arrivals, t + 2.0, phases)
    router = RouterProcess(workdir / "from-zero", setup)
    await router.start()
    try:
        real = await drive(router, setup)
    finally:
        router.stop()
    # Only the load's own span counts: the 2 s after it are the tail of the last requests.
    real.samples = [(at, n) for at, n in real.samples if at <= t]
    need = sum(math.ceil(rate * service / concurrency) * secs for rate, secs in phases)
    held, startup = real.held(service), real.startup(startup)
    need_held = sum(math.ceil(rate * held / concurrency) * secs for rate, secs in phases)
    print(f"# from-zero: backend {service:g} s, held {held:.3f} s a request as the router measured it "
          f"(x{held / service:.2f}); instances started in {startup:.2f} s during the run ({len(real.startups)} seen); "
          f"both used by the simulator")
    print(line("from-zero", "real", real.instance_seconds, real.waits,
               f" errors={real.errors} sent={len(real.statuses)}"))
    shape = sim.Shape("from-zero", arrivals, (held,) * len(arrivals), duration=t)
    ours = next(a for a in sim.algorithms(concurrency) if a.name == "ours")
    predicted = sim.Simulation(shape, ours, concurrency=concurrency, startup=startup, initial=0).run()
    print(line("from-zero", "sim", predicted.instance_seconds, predicted.waits))
    ratio = real.instance_seconds / need
    met = real.errors == 0 and ratio <= 1.5
    cost = real.instance_seconds / predicted.instance_seconds
    print(f"scaling_real shape=from-zero real/sim instance_s=x{cost:.3f} littles_law_need_at_held_s={need_held:.1f} "
          f"instance_s/need_at_held=x{real.instance_seconds / need_held:.3f}")
    print(f"scaling_real shape=from-zero errors={real.errors} instance_s={real.instance_seconds:.1f} "
          f"littles_law_need_s={need:.1f} instance_s/need=x{ratio:.3f} target(0_errors,<=x1.5) "
          f"{'met' if met else 'MISSED'}")
    return met


async def main(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="scaling-real-"))
    ok = True
    try:
        if args.only in (None, "step"):
            ok &= await step(args, workdir)
        if args.only in (None, "from-zero"):
            ok &= await from_zero(args, workdir)
    finally:
        if args.keep:
            print(f"# work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", choices=("step", "from-zero"))
    parser.add_argument("--startup", type=float, default=2.0, help="backend start-up delay (s)")
    parser.add_argument("--step-rate", type=float, default=12.0, help="step: requests a second")
    parser.add_argument("--step-service", type=float, default=0.5, help="step: service time (s)")
    parser.add_argument("--step-secs", type=float, default=60.0, help="step: seconds of load")
    parser.add_argument("--zero-rates", type=int, nargs="+", default=[60, 120, 180], help="from-zero: req/s")
    parser.add_argument("--zero-service", type=float, default=0.1, help="from-zero: service time (s)")
    parser.add_argument("--zero-secs", type=float, default=10.0, help="from-zero: seconds per rate")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (router log, sandboxes)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
