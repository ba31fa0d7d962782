"""How the router scales with ``--workers``, against nginx with as many worker processes, on one backend.

    .venv/bin/python benchmarks/workers_scaling.py [--duration 10] [--warmup 3] [--sequential 300]

For K = 1 .. cores - 1 (at least 1): the router with ``--workers K`` (K routers on one port, one Redis, one
scheduler agent) and nginx with ``worker_processes K`` as a reverse proxy, both in front of the same nginx
instance (started by the router from a token), measured with wrk (64 connections, small body). One line per K
and server: req/s and the scaling factor (req/s over that server's req/s at K = 1).

Then the latency a new user sees with one sequential client (a new connection per request, as curl in a loop)
for a ``concurrency-level: 1`` service: one router, then ``--workers 2`` (whose workers must hand the one slot
to each other), p50 and p95 of each and their ratio, and how many instances the service ended with (one
sequential client should never make it scale up). nginx, wrk and redis-server are installed with apt-get when
missing. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import proxy_overhead as po

CONNECTIONS = 64
SEQUENTIAL_TOKEN = "bench-seq"
# The sequential client's backend: answers at once, one request at a time.
SEQUENTIAL_CMD = "exec python3 -m http.server $PORT0 --bind 127.0.0.1"


def redis_server(workdir: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = po.free_port()
    directory = workdir / "redis"
    directory.mkdir()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(argv, cwd=directory, stdout=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 10
    while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() != b"PONG":
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"redis-server on port {port} did not answer PING")
        time.sleep(0.05)
    return f"redis://127.0.0.1:{port}/0", proc


def start_router(workdir: Path, name: str, tokens: list[dict[str, Any]], **config: Any) -> po.RouterProcess:
    directory = workdir / name
    directory.mkdir()
    router = po.RouterProcess(directory, tokens, **config)
    router.wait_ready()
    return router


def throughput(args: argparse.Namespace, script: Path, url: str, headers: dict[str, str]) -> float:
    if args.warmup:
        po.run_wrk(url, CONNECTIONS, args.warmup, headers, script)
    result = po.run_wrk(url, CONNECTIONS, args.duration, headers, script)
    if result.errors:
        raise RuntimeError(f"wrk saw {result.errors} errors on {url}")
    return result.rps


def nginx_proxy_k(workdir: Path, backend_port: int, workers: int) -> tuple[int, subprocess.Popen[bytes]]:
    directory = workdir / f"nginx-proxy-{workers}"
    (directory / "tmp").mkdir(parents=True)
    port = po.free_port()
    conf = directory / "nginx.conf"
    user = "user root;" if os.geteuid() == 0 else ""
    text = po.NGINX_PROXY_CONF.format(user=user, dir=directory, port=port, backend_port=backend_port)
    conf.write_text(text.replace("worker_processes 1;", f"worker_processes {workers};"))
    argv = ["nginx", "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(conf), "-g", "daemon off;"]
    proc = subprocess.Popen(argv, cwd=directory, start_new_session=True)
    po.wait_http(port, "/small", proc)
    return port, proc


def scaling(args: argparse.Namespace, workdir: Path, redis_url: str, max_k: int) -> list[str]:
    lines: list[str] = []
    script = workdir / "done.lua"
    script.write_text(po.WRK_DONE_LUA)
    headers = {"x-waiter-token": po.TOKEN}
    base: dict[str, float] = {}
    for k in range(1, max_k + 1):
        router = start_router(workdir, f"router-{k}", [po.nginx_token()], redis=redis_url, workers=k)
        try:
            backend_port, _ = po.start_backend(router)
            proxy_port, proxy = nginx_proxy_k(workdir, backend_port, k)
            try:
                for name, url, hdrs in (
                    ("router", router.url + "/small", headers),
                    ("nginx", f"http://127.0.0.1:{proxy_port}/small", {}),
                ):
                    rps = throughput(args, script, url, hdrs)
                    base.setdefault(name, rps)
                    lines.append(f"workers_scaling k={k} {name} req/s={rps:.0f} scaling={rps / base[name]:.2f}")
                    print(lines[-1], flush=True)
            finally:
                po.stop_group(proxy, grace=5.0)
        finally:
            router.stop()
    return lines


def sequential_latencies(router: po.RouterProcess, requests: int) -> list[float]:
    headers = {"x-waiter-token": SEQUENTIAL_TOKEN}
    status, body = router.request("GET", "/", headers)  # the cold start, not measured
    if status != 200:
        raise RuntimeError(f"the first sequential request answered {status}: {body[:200]!r}")
    took: list[float] = []
    for _ in range(requests):
        start = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", router.port, timeout=30)
        try:
            conn.request("GET", "/", headers=headers)
            response = conn.getresponse()
            response.read()
        finally:
            conn.close()
        took.append((time.perf_counter() - start) * 1000)
        if response.status != 200:
            raise RuntimeError(f"a sequential request answered {response.status}")
    return took


def instances(router: po.RouterProcess) -> int:
    service_id = router.request("GET", "/service-id", {"x-waiter-token": SEQUENTIAL_TOKEN})[1].decode()
    return len(router.get_json(f"/apps/{service_id}")["instances"]["active-instances"])


def sequential(args: argparse.Namespace, workdir: Path, redis_url: str) -> list[str]:
    token = {
        "token": SEQUENTIAL_TOKEN,
        "name": SEQUENTIAL_TOKEN,
        "version": "1",
        "cpus": 0.1,
        "mem": 64,
        "concurrency-level": 1,
        "health-check-url": "/",
        "cmd": SEQUENTIAL_CMD,
    }
    lines: list[str] = []
    p50s: dict[str, float] = {}
    for name, config in (("one-router", {}), ("workers=2", {"redis": redis_url, "workers": 2})):
        router = start_router(workdir, f"seq-{name}", [token], **config)
        try:
            took = sequential_latencies(router, args.sequential)
            count = instances(router)
        finally:
            router.stop()
        p50 = statistics.median(took)
        p95 = statistics.quantiles(took, n=20)[-1]
        p50s[name] = p50
        figures = f"requests={len(took)} p50_ms={p50:.2f} p95_ms={p95:.2f} instances={count}"
        line = f"workers_scaling sequential {name} {figures}"
        lines.append(line)
        print(line, flush=True)
    ratio = p50s["workers=2"] / p50s["one-router"]
    verdict = "met" if ratio <= 1.2 else "NOT met"
    lines.append(f"workers_scaling target sequential p50 workers=2/one-router={ratio:.2f} goal<=1.20 {verdict}")
    print(lines[-1], flush=True)
    return lines


def raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="whole seconds measured per result (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="whole seconds of load before each one (default 3)")
    parser.add_argument("--sequential", type=int, default=300, help="sequential requests per layout (default 300)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) afterwards")
    args = parser.parse_args()
    if args.duration < 1 or args.warmup < 0 or args.sequential < 20:
        parser.error(
            f"--duration is {args.duration}, --warmup {args.warmup} and --sequential {args.sequential}; the "
            "duration must be 1 or more whole seconds, the warm-up 0 or more, and at least 20 sequential requests."
        )
    po.ensure_tools("nginx", "wrk")
    if shutil.which("redis-server") is None:
        po.ensure_tools("redis-server")
    max_k = max(1, (os.cpu_count() or 1) - 1)
    signal.signal(signal.SIGTERM, raise_interrupt)
    print(
        f"workers_scaling machine nproc={os.cpu_count()} k=1..{max_k} connections={CONNECTIONS} "
        f"warmup_s={args.warmup} duration_s={args.duration} sequential={args.sequential}",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="waiter-workers-"))
    redis_url, redis = redis_server(workdir)
    try:
        scaling(args, workdir, redis_url, max_k)
        sequential(args, workdir, redis_url)
    except KeyboardInterrupt:
        print("# interrupted: everything started was stopped", file=sys.stderr)
        return 130
    finally:
        po.stop_group(redis, grace=5.0)
        leftovers = po.kill_processes_under(workdir)
        if leftovers:
            print(f"# killed processes left behind: {leftovers}", file=sys.stderr)
        if args.keep:
            print(f"# work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
