"""What the router adds to a cold start: first request of a new service to its response, minus the backend's own start.

Each run addresses a new service version (on-the-fly headers with ``x-waiter-version: cold-N``), so every run
starts an instance. In the same run, and interleaved with it, the same command is spawned directly with PORT0
set and polled every 1 ms until its first 200: the backend's own time from spawn to first answer.

    .venv/bin/python benchmarks/cold_start.py [--runs 10] [--startup-interval-ms N]

The router runs with its default ``health-check.startup-interval-ms`` unless the flag says otherwise.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from proxy_overhead import RouterProcess, free_port, others_cores, run_in_workdir, stop_group

TARGET_MS = 50.0
POLL_SECS = 0.001

# A minimal backend: 200 on every path, the health check included. Threads, so the router's kept-alive health
# probe connection cannot block the request it is holding.
BACKEND = """import http.server, os


class Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "3")
        self.end_headers()
        self.wfile.write(b"ok\\n")

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT0"])), Ok).serve_forever()
"""


@dataclass(frozen=True)
class RouterRun:
    total_ms: float  # request sent -> response read
    spawn_ms: float  # request sent -> the instance's started-at, as the router reports it (ms precision)


def get_status(port: int, path: str, headers: dict[str, str], timeout: float) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def backend_alone(cmd: str, workdir: Path, timeout: float = 30.0) -> float:
    """Spawn ``cmd`` as the local scheduler does (bash, own session, PORT0) and poll until its first 200 (ms)."""
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir), "PORT0": str(port)}
    started = time.perf_counter()
    proc = subprocess.Popen(
        ["bash", "-c", cmd], cwd=workdir, env=env, stdin=subprocess.DEVNULL, start_new_session=True
    )
    try:
        while True:
            with contextlib.suppress(OSError):
                if get_status(port, "/status", {}, timeout=1.0) == 200:
                    return (time.perf_counter() - started) * 1000
            if proc.poll() is not None:
                raise RuntimeError(f"the backend exited with code {proc.returncode} before answering")
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"the backend did not answer within {timeout} s")
            time.sleep(POLL_SECS)
    finally:
        stop_group(proc, grace=2.0)


def iso_to_epoch(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def through_router(router: RouterProcess, headers: dict[str, str]) -> RouterRun:
    """One cold start: the first request of a new service, timed to its full response; the service is deleted."""
    sent_wall = time.time()
    sent = time.perf_counter()
    status = get_status(router.port, "/", headers, timeout=60.0)
    total_ms = (time.perf_counter() - sent) * 1000
    if status != 200:
        raise RuntimeError(f"the first request of a new service answered {status}; see {router.log}")
    service_id = router.request("GET", "/service-id", headers)[1].decode()
    instances = router.get_json(f"/apps/{service_id}")["instances"]["active-instances"]
    spawn_ms = (iso_to_epoch(instances[0]["started-at"]) - sent_wall) * 1000
    status = router.request("DELETE", f"/apps/{service_id}")[0]
    if status != 200:
        raise RuntimeError(f"DELETE /apps/{service_id} answered {status}")
    return RouterRun(total_ms, spawn_ms)


def on_the_fly(cmd: str, version: str) -> dict[str, str]:
    return {
        "x-waiter-name": "cold",
        "x-waiter-cmd": cmd,
        "x-waiter-version": version,
        "x-waiter-cpus": "0.1",
        "x-waiter-mem": "128",
        "x-waiter-health-check-url": "/status",
    }


def find_key(data: Any, key: str) -> Any:
    """The first value of ``key`` anywhere in a JSON document (the router's /settings), or None."""
    if isinstance(data, dict):
        if key in data:
            return data[key]
        data = list(data.values())
    if isinstance(data, list):
        for item in data:
            found = find_key(item, key)
            if found is not None:
                return found
    return None


def run(args: argparse.Namespace, workdir: Path) -> None:
    (workdir / "backend.py").write_text(BACKEND)
    # The interpreter itself, not a version manager's shim on PATH that would add its own start-up to both.
    cmd = f"exec {sys.executable} {workdir / 'backend.py'}"
    own_dir = workdir / "alone"
    own_dir.mkdir()
    config: dict[str, Any] = {}
    if args.startup_interval_ms is not None:
        config["health-check"] = {"startup-interval-ms": args.startup_interval_ms}
    router = RouterProcess(workdir / "router", [], **config)
    try:
        router.wait_ready()
        interval = find_key(router.get_json("/settings"), "startup-interval-ms")
        setting = "set by --startup-interval-ms" if args.startup_interval_ms is not None else "router default"
        print(f"cold_start router health-check.startup-interval-ms={interval} ({setting})", flush=True)
        warm = through_router(router, on_the_fly(cmd, "warmup"))
        print(f"cold_start warmup router_ms={warm.total_ms:.1f} (not counted)", flush=True)
        routed: list[RouterRun] = []
        alone: list[float] = []
        for n in range(1, args.runs + 1):
            # Interleaved, so drift in the machine's load touches both series alike.
            alone.append(backend_alone(cmd, own_dir))
            routed.append(through_router(router, on_the_fly(cmd, f"cold-{n}")))
            r = routed[-1]
            print(
                f"cold_start run={n} router_ms={r.total_ms:.1f} backend_ms={alone[-1]:.1f} "
                f"router_spawned_after_ms={r.spawn_ms:.0f} spawn_to_response_ms={r.total_ms - r.spawn_ms:.0f}",
                flush=True,
            )
        summarise(routed, alone)
    finally:
        router.stop()


def summarise(routed: list[RouterRun], alone: list[float]) -> None:
    router_median = statistics.median(r.total_ms for r in routed)
    backend_median = statistics.median(alone)
    overhead = router_median - backend_median
    spawn_median = statistics.median(r.spawn_ms for r in routed)
    totals = [r.total_ms for r in routed]
    print(f"cold_start router median_ms={router_median:.1f} mean_ms={statistics.fmean(totals):.1f} "
          f"min_ms={min(totals):.1f} max_ms={max(totals):.1f} spawned_after_median_ms={spawn_median:.0f}")
    print(f"cold_start backend median_ms={backend_median:.1f} mean_ms={statistics.fmean(alone):.1f} "
          f"min_ms={min(alone):.1f} max_ms={max(alone):.1f}")
    # Pairs ran back to back, under the same load: the median of their differences is steadier on a busy machine.
    paired = statistics.median(r.total_ms - a for r, a in zip(routed, alone, strict=True))
    verdict = "met" if overhead <= TARGET_MS else "NOT met"
    print(f"cold_start overhead_ms={overhead:.1f} (router median - backend median) "
          f"target<={TARGET_MS:.0f}ms {verdict} paired_median_ms={paired:.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="cold starts measured each way (default 10)")
    parser.add_argument(
        "--startup-interval-ms", type=int, default=None,
        help="health-check.startup-interval-ms for the router (default: leave the router's default)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) afterwards")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs is {args.runs}; it must be 1 or more.")
    print(f"cold_start machine nproc={os.cpu_count()} python={platform.python_version()} "
          f"runs={args.runs} others_cores_before={others_cores():.2f}", flush=True)
    return run_in_workdir("waiter-cold-", args.keep, lambda workdir: run(args, workdir))


if __name__ == "__main__":
    sys.exit(main())
