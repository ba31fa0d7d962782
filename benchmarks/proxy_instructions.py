"""Instructions per proxied request, counted by valgrind's callgrind: the router's and a plain nginx proxy's.

proxy_overhead.py times the router, and on a shared machine its timings move with the neighbours' load. This
counts what the CPU executes in user space for a fixed number of requests, which a busy machine does not change,
so a change to the request path can be judged by a few percent:

    .venv/bin/python benchmarks/proxy_instructions.py [--requests 4000] [--connections 8]

The router (and then an nginx reverse proxy with a keep-alive upstream, as in proxy_overhead.py, in one process)
runs under ``valgrind --tool=callgrind`` with counting off; after a warm-up, counting is on for exactly
``--requests`` small-body requests over ``--connections`` keep-alive connections, then on again, idle, for as
long as the load took, to subtract what runs without requests (timers, health checks). Kernel time (the socket
calls) is not counted: see proxy_overhead.py's server_cpu_us/req for it. valgrind and nginx are installed with
apt-get when missing. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from proxy_overhead import (
    NGINX_PROXY_CONF,
    TOKEN,
    RouterProcess,
    ensure_tools,
    free_port,
    nginx_token,
    run_in_workdir,
    start_backend,
    stop_group,
    wait_http,
)

# Periodic work that does not depend on requests, slowed down: it is subtracted, but the less there is, the less
# it blurs the figure.
QUIET_CONFIG = {"autoscaler": {"interval-ms": 60_000, "publish-interval-ms": 250}}
MEMORY_CHECK_SECS = 3600


@dataclass(frozen=True)
class Count:
    """Instructions (callgrind's Ir) counted under load and idle, and for how long the load ran."""

    load: int
    idle: int
    seconds: float
    requests: int

    @property
    def per_request(self) -> float:
        return (self.load - self.idle) / self.requests


def callgrind(out: Path) -> tuple[str, ...]:
    return ("valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}")


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def totals(out: Path) -> list[int]:
    """The Ir totals of the dumps callgrind wrote for ``out`` (out.1, out.2, ...), in order."""
    dumps = sorted(out.parent.glob(out.name + ".*"), key=lambda p: int(p.suffix[1:]))
    found = []
    for dump in dumps:
        match = re.search(r"^totals: (\d+)", dump.read_text(errors="replace"), re.MULTILINE)
        if match is None:
            raise RuntimeError(f"callgrind wrote no totals line to {dump}")
        found.append(int(match.group(1)))
    return found


def load(port: int, path: str, headers: dict[str, str], requests: int, connections: int) -> None:
    """``requests`` GETs over ``connections`` keep-alive connections, each answered 200 and read whole."""
    failures: list[BaseException] = []

    def client(count: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            for _ in range(count):
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    raise RuntimeError(f"GET {path} answered {response.status}")
        except BaseException as exc:
            failures.append(exc)
        finally:
            conn.close()

    shares = [requests // connections + (1 if i < requests % connections else 0) for i in range(connections)]
    threads = [threading.Thread(target=client, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"the load failed: {failures[0]}")


def count(pid: int, out: Path, port: int, path: str, headers: dict[str, str], args: argparse.Namespace) -> Count:
    load(port, path, headers, max(args.requests // 10, args.connections), args.connections)  # warm-up
    control(pid, "-i", "on")
    started = time.monotonic()
    load(port, path, headers, args.requests, args.connections)
    seconds = time.monotonic() - started
    control(pid, "-i", "off")
    control(pid, "-d")
    control(pid, "-i", "on")
    time.sleep(seconds)
    control(pid, "-i", "off")
    control(pid, "-d")
    load_ir, idle_ir = totals(out)[-2:]
    return Count(load_ir, idle_ir, seconds, args.requests)


@contextlib.contextmanager
def nginx_proxy(workdir: Path, backend_port: int) -> Iterator[tuple[int, int, Path]]:
    """proxy_overhead's nginx reverse proxy in one process (no master) under callgrind: (port, pid, dump path)."""
    directory = workdir / "nginx-proxy"
    (directory / "tmp").mkdir(parents=True)
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_PROXY_CONF.format(user="", dir=directory, port=port, backend_port=backend_port))
    out = directory / "callgrind.out"
    argv = [*callgrind(out), "nginx", "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(conf)]
    argv += ["-g", "daemon off; master_process off;"]
    proc = subprocess.Popen(argv, cwd=directory, start_new_session=True, stderr=subprocess.DEVNULL)
    try:
        wait_http(port, "/small", proc, timeout=60.0)
        yield port, proc.pid, out
    finally:
        stop_group(proc, grace=10.0)


def run(args: argparse.Namespace, workdir: Path) -> None:
    out = workdir / "router-callgrind.out"
    scheduler = {
        "kind": "local",
        "local": {"work-dir": str(workdir / "router" / "instances"), "memory-check-interval-secs": MEMORY_CHECK_SECS},
    }
    router = RouterProcess(
        workdir / "router",
        [nginx_token()],
        wrapper=callgrind(out),
        **{"cluster-name": "bench", "scheduler": scheduler, **QUIET_CONFIG},
    )
    try:
        router.wait_ready(timeout=600.0)
        backend_port, _ = start_backend(router)
        ours = count(router.pid, out, router.port, "/small", {"x-waiter-token": TOKEN}, args)
        with nginx_proxy(workdir, backend_port) as (port, pid, nginx_out):
            reference = count(pid, nginx_out, port, "/small", {}, args)
    finally:
        router.stop()
    for name, measured in (("router", ours), ("nginx", reference)):
        print(
            f"proxy_instructions small c={args.connections} {name} requests={measured.requests} "
            f"instructions/req={measured.per_request:.0f} load_instructions={measured.load} "
            f"idle_instructions={measured.idle} seconds={measured.seconds:.1f}"
        )
    print(f"proxy_instructions small c={args.connections} router/nginx={ours.per_request / reference.per_request:.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="requests counted (default 4000)")
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections (default 8)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (callgrind dumps) afterwards")
    args = parser.parse_args()
    if args.requests < args.connections or args.connections < 1:
        parser.error(
            f"--requests is {args.requests} and --connections {args.connections}; there must be at least one "
            "connection and at least one request per connection."
        )
    ensure_tools("nginx", "valgrind")
    return run_in_workdir("waiter-instructions-", args.keep, lambda workdir: run(args, workdir))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")  # the same hashing in every run
    sys.exit(main())
