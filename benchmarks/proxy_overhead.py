"""What the router costs on the request path: wrk against an nginx backend directly, via nginx, via the router.

The backend is an nginx instance started by the router itself from a token. The same run measures it three ways
on 127.0.0.1 and prints one line per result, with the router's ratios to the two references:

    .venv/bin/python benchmarks/proxy_overhead.py [--duration 10] [--warmup 3]

The proxy under test (router or nginx) runs alone on core 1, wrk on core 0. The backend sits on core 0 with wrk
while a proxy is measured, so the proxy has its core to itself, and on core 1 while it is measured directly.
nginx and wrk are installed with apt-get when missing. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-nginx"
MIB = 1024 * 1024
WRK_CPU, PROXY_CPU = 0, 1
# Targets: router/nginx req/s for small bodies at 64 connections, MiB/s for 1 MiB bodies, and how far the router's
# p50 at one connection may lie above nginx's (microseconds).
SMALL_TARGET, BIG_TARGET, C1_P50_OVER_NGINX_US = 0.30, 1.00, 25

# The backend instance's command: nginx in the foreground with every file it writes inside its directory.
# Workers of a root master run as "nobody" unless told otherwise, and could not read the sandbox.
NGINX_BACKEND_CMD = r"""set -e
head -c 1048576 /dev/urandom > big.bin
mkdir -p tmp
cat > nginx.conf <<EOF
$( [ "$(id -u)" = 0 ] && echo 'user root;' )
worker_processes 1;
pid $PWD/nginx.pid;
error_log $PWD/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    default_type text/plain;
    client_body_temp_path $PWD/tmp/body;
    proxy_temp_path $PWD/tmp/proxy;
    fastcgi_temp_path $PWD/tmp/fastcgi;
    uwsgi_temp_path $PWD/tmp/uwsgi;
    scgi_temp_path $PWD/tmp/scgi;
    sendfile on;
    tcp_nopush on;
    server {
        listen 127.0.0.1:$PORT0;
        location = /health { return 200 "ok\n"; }
        location = /small { return 200 "hello\n"; }
        location = /big { alias $PWD/big.bin; }
    }
}
EOF
exec nginx -p "$PWD" -e "$PWD/error.log" -c "$PWD/nginx.conf" -g 'daemon off;'
"""

# The reference proxy: a plain nginx reverse proxy with a keep-alive upstream. Its buffers hold a whole 1 MiB
# response in memory and it never spills to disk, so it streams as the router does.
NGINX_PROXY_CONF = """{user}
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffers 64 16k;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""

# wrk prints its own report too; this line gives the exact figures to parse.
WRK_DONE_LUA = """done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT requests=%.0f duration_us=%.0f p50_us=%.0f p99_us=%.0f errors=%.0f\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


@dataclass(frozen=True)
class Case:
    name: str  # "small" or "1MiB"
    path: str
    body_bytes: int
    connections: int


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


@dataclass(frozen=True)
class Measurement:
    wrk: WrkResult
    cpu_us_per_request: float  # CPU of the server under test (backend, nginx proxy or router)
    others_cores: float  # cores busy with programs not of this run, on average
    steal_cores: float  # cores the hypervisor took, on average

    def mib_per_s(self, case: Case) -> float:
        return self.wrk.rps * case.body_bytes / MIB


# -- processes ---------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_tools(*names: str) -> None:
    """Install the Debian packages of missing commands (nginx, wrk), refreshing the package lists once if needed."""
    missing = [name for name in names if shutil.which(name) is None]
    if not missing:
        return
    print(f"# installing {' '.join(missing)} with apt-get", flush=True)
    install = ["apt-get", "install", "-y", "-qq", *missing]
    if subprocess.run(install, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], stdout=subprocess.DEVNULL)
        if subprocess.run(install, stdout=subprocess.DEVNULL).returncode != 0:
            raise SystemExit(
                f"proxy_overhead needs {' and '.join(missing)}, which apt-get could not install here; "
                "install them (apt-get install nginx wrk, as root) and run again."
            )


def pinned(cpu: int | None, argv: list[str]) -> list[str]:
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


def stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM a process started with start_new_session, then SIGKILL its whole group after ``grace`` seconds."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def kill_processes_under(directory: Path) -> list[int]:
    """SIGKILL the process group of every process whose working directory is inside ``directory``."""
    killed: list[int] = []
    for process in psutil.process_iter(["pid", "cwd"]):
        cwd = process.info.get("cwd")
        if cwd and Path(cwd).is_relative_to(directory) and process.pid != os.getpid():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(process.pid), signal.SIGKILL)
                killed.append(process.pid)
    return killed


def tree(pid: int) -> list[psutil.Process]:
    leader = psutil.Process(pid)
    return [leader, *leader.children(recursive=True)]


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


class RouterProcess:
    """``python -m waiter`` in its own session, with a generated config and tokens dir under ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        tokens: list[dict[str, Any]],
        cpu: int | None = None,
        wrapper: tuple[str, ...] = (),
        **config: Any,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        tokens_dir = workdir / "tokens"
        tokens_dir.mkdir(parents=True)
        for token in tokens:
            (tokens_dir / f"{token['token']}.yaml").write_text(yaml.safe_dump(token))
        settings: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "tokens-dir": str(tokens_dir),
            "drain-timeout-secs": 5,
            "scheduler": {"kind": "local", "local": {"work-dir": str(workdir / "instances")}},
        }
        settings.update(config)
        (workdir / "router.yaml").write_text(yaml.safe_dump(settings))
        self.log = workdir / "router.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                pinned(cpu, [*wrapper, sys.executable, "-m", "waiter", "--config", str(workdir / "router.yaml")]),
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.pid = self.proc.pid  # taskset (and a wrapper such as valgrind) execs the program: the router itself

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the router exited with code {self.proc.returncode}:\n{self.log.read_text()}")
            with contextlib.suppress(OSError):
                if self.request("GET", "/status")[0] == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the router did not answer /status within {timeout} s")
            time.sleep(0.05)

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, timeout: float = 60.0
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def get_json(self, path: str, headers: dict[str, str] | None = None) -> Any:
        status, body = self.request("GET", path, headers)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}: {body.decode(errors='replace')}")
        return json.loads(body)

    def stop(self) -> None:
        """Drain and stop (the router stops its instances), then kill whatever is left under ``workdir``."""
        stop_group(self.proc, grace=15.0)
        leftovers = kill_processes_under(self.workdir)
        if leftovers:
            print(f"# killed processes the router left behind: {leftovers}", file=sys.stderr)


@contextlib.contextmanager
def nginx_proxy(workdir: Path, backend_port: int, cpu: int) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    directory = workdir / "nginx-proxy"
    (directory / "tmp").mkdir(parents=True)
    port = free_port()
    conf = directory / "nginx.conf"
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(NGINX_PROXY_CONF.format(user=user, dir=directory, port=port, backend_port=backend_port))
    argv = ["nginx", "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(conf), "-g", "daemon off;"]
    proc = subprocess.Popen(pinned(cpu, argv), cwd=directory, start_new_session=True)
    try:
        wait_http(port, "/small", proc)
        yield port, proc
    finally:
        stop_group(proc, grace=5.0)


def wait_http(port: int, path: str, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited with code {proc.returncode} before answering on port {port}")
        with contextlib.suppress(OSError):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
            try:
                conn.request("GET", path)
                if conn.getresponse().status == 200:
                    return
            finally:
                conn.close()
        if time.monotonic() > deadline:
            raise RuntimeError(f"nginx did not answer GET {path} on port {port} within {timeout} s")
        time.sleep(0.02)


class PeakRss:
    """Samples one process's RSS in a thread; ``peak`` is the largest sample."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- wrk ---------------------------------------------------------------------------------------------------------


def run_wrk(url: str, connections: int, seconds: int, headers: dict[str, str], script: Path) -> WrkResult:
    argv = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--timeout", "10s", "--latency"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    argv += ["-s", str(script), url]
    done = subprocess.run(pinned(WRK_CPU, argv), capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRK_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (exit {done.returncode}) on {url}:\n{done.stdout}{done.stderr}")
    fields = dict(part.split("=", 1) for part in line.split()[1:])
    return WrkResult(
        requests=int(fields["requests"]),
        seconds=int(fields["duration_us"]) / 1e6,
        p50_ms=int(fields["p50_us"]) / 1000,
        p99_ms=int(fields["p99_us"]) / 1000,
        errors=int(fields["errors"]),
    )


@dataclass(frozen=True)
class Target:
    """One way to reach the backend: its URL base, headers, the processes serving it and the backend's core."""

    name: str
    base: str
    headers: dict[str, str]
    servers: list[psutil.Process]
    backend_cpu: int


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds so far: the machine's busy time, the hypervisor's steal, and all the processes of this run."""

    busy: float
    steal: float
    ours: float

    @classmethod
    def take(cls, ours: list[psutil.Process]) -> CpuSnapshot:
        machine = psutil.cpu_times()
        own = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        return cls(
            busy=machine.user + machine.nice + machine.system + machine.irq + machine.softirq,
            steal=machine.steal,
            ours=cpu_seconds(ours) + sum(usage.ru_utime + usage.ru_stime for usage in own),
        )


@dataclass(frozen=True)
class Bench:
    warmup: int
    duration: int
    wrk_script: Path
    backend: list[psutil.Process]  # the instance's nginx master and worker
    ours: list[psutil.Process]  # every long-lived process of the run (wrk is counted as a reaped child)

    def measure(self, target: Target, case: Case) -> Measurement:
        for process in self.backend:
            process.cpu_affinity([target.backend_cpu])
        url = target.base + case.path
        if self.warmup:
            run_wrk(url, case.connections, self.warmup, target.headers, self.wrk_script)
        machine = CpuSnapshot.take(self.ours)
        server = cpu_seconds(target.servers)
        result = run_wrk(url, case.connections, self.duration, target.headers, self.wrk_script)
        server = cpu_seconds(target.servers) - server
        after = CpuSnapshot.take(self.ours)
        # Other programs on a shared machine and a busy hypervisor both skew results: show how much of each.
        others = (after.busy - machine.busy) - (after.ours - machine.ours)
        return Measurement(
            result,
            server / max(result.requests, 1) * 1e6,
            others_cores=max(others, 0.0) / result.seconds,
            steal_cores=(after.steal - machine.steal) / result.seconds,
        )


def profile_router(bench: Bench, router: Target, out: Path) -> list[str]:
    """py-spy on the router under the small-body, 64-connection load; the top frames by own (self) samples."""
    if shutil.which("py-spy") is None and not (Path(sys.executable).parent / "py-spy").exists():
        return ["proxy_overhead profile skipped: py-spy is not installed (pip install py-spy)"]
    spy_bin = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    case = Case("small", "/small", 6, 64)
    for process in bench.backend:
        process.cpu_affinity([router.backend_cpu])
    if bench.warmup:
        run_wrk(router.base + case.path, case.connections, bench.warmup, router.headers, bench.wrk_script)
    argv = [spy_bin, "record", "-p", str(router.servers[0].pid), "-d", str(bench.duration), "-r", "250",
            "-f", "raw", "-o", str(out), "--nonblocking"]
    spy = subprocess.Popen(pinned(WRK_CPU, argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        run_wrk(router.base + case.path, case.connections, bench.duration, router.headers, bench.wrk_script)
        _, err = spy.communicate(timeout=bench.duration + 30)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    if spy.returncode != 0 or not out.exists():
        return [f"proxy_overhead profile failed: {err.decode(errors='replace').strip()}"]
    return [f"proxy_overhead profile {line}" for line in top_frames(out.read_text(), 20)]


def top_frames(collapsed: str, count: int) -> list[str]:
    """Functions ranked by self samples, with inclusive share, from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in collapsed.splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack:
            continue
        n = int(samples)
        total += n
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
    ranked = sorted(own.items(), key=lambda item: -item[1])[:count]
    lines = [f"samples={total}"]
    lines += [f"self={n / total:6.1%} incl={inclusive[f] / total:6.1%} {f}" for f, n in ranked]
    return lines


# -- the run -----------------------------------------------------------------------------------------------------


def nginx_token() -> dict[str, Any]:
    # One instance whatever the load: 64 connections must not make the router scale out or queue.
    return {
        "token": TOKEN,
        "name": TOKEN,
        "version": "1",
        "cpus": 1,
        "mem": 256,
        "min-instances": 1,
        "max-instances": 1,
        "concurrency-level": 1024,
        "health-check-url": "/health",
        "cmd": NGINX_BACKEND_CMD,
    }


def start_backend(router: RouterProcess) -> tuple[int, list[psutil.Process]]:
    """Start the token's instance through the router; its port and processes (master and worker)."""
    headers = {"x-waiter-token": TOKEN}
    status, body = router.request("GET", "/small", headers)
    if status != 200 or body != b"hello\n":
        raise RuntimeError(f"the first request through the router answered {status}: {body!r}")
    service_id = router.request("GET", "/service-id", headers)[1].decode()
    (instance,) = router.get_json(f"/apps/{service_id}")["instances"]["active-instances"]
    return int(instance["port"]), tree(int(instance["shell-scheduler/pid"]))


def cases(quick_big_c1: bool) -> list[Case]:
    found = [Case("small", "/small", 6, 1), Case("small", "/small", 6, 64), Case("1MiB", "/big", MIB, 64)]
    if quick_big_c1:
        found.append(Case("1MiB", "/big", MIB, 1))
    return found


def result_line(case: Case, name: str, m: Measurement, refs: dict[str, Measurement]) -> str:
    line = (
        f"proxy_overhead {case.name} c={case.connections} {name} req/s={m.wrk.rps:.0f} "
        f"p50_ms={m.wrk.p50_ms:.2f} p99_ms={m.wrk.p99_ms:.2f}"
    )
    if case.body_bytes >= MIB:
        line += f" MiB/s={m.mib_per_s(case):.0f}"
    line += f" server_cpu_us/req={m.cpu_us_per_request:.0f}"
    if m.wrk.errors:
        line += f" errors={m.wrk.errors}"
    for ref, other in refs.items():
        line += f" {name}/{ref}={m.wrk.rps / other.wrk.rps:.2f}"
    return line + f" others_cores={m.others_cores:.2f} steal_cores={m.steal_cores:.2f}"


def target_line(what: str, ratio: float, goal: float) -> str:
    verdict = "met" if ratio >= goal else "NOT met"
    return f"proxy_overhead target {what} router/nginx={ratio:.2f} goal>={goal:.2f} {verdict}"


def run(args: argparse.Namespace, workdir: Path) -> None:
    wrk_script = workdir / "done.lua"
    wrk_script.write_text(WRK_DONE_LUA)
    router = RouterProcess(workdir / "router", [nginx_token()], cpu=PROXY_CPU, **{"cluster-name": "bench"})
    try:
        router.wait_ready()
        backend_port, backend = start_backend(router)
        with nginx_proxy(workdir, backend_port, PROXY_CPU) as (proxy_port, proxy), PeakRss(router.pid) as rss:
            router_proc, proxy_procs = psutil.Process(router.pid), tree(proxy.pid)
            bench = Bench(args.warmup, args.duration, wrk_script, backend, [router_proc, *backend, *proxy_procs])
            targets = [
                Target("direct", f"http://127.0.0.1:{backend_port}", {}, backend, PROXY_CPU),
                Target("nginx", f"http://127.0.0.1:{proxy_port}", {}, proxy_procs, WRK_CPU),
                Target("router", router.url, {"x-waiter-token": TOKEN}, [router_proc], WRK_CPU),
            ]
            verdicts: list[str] = []
            for case in cases(not args.skip_big_c1):
                done = {target.name: bench.measure(target, case) for target in targets}
                for name, m in done.items():
                    refs = {"nginx": done["nginx"], "direct": done["direct"]} if name == "router" else {}
                    print(result_line(case, name, m, refs), flush=True)
                verdicts += verdict_lines(case, done)
            if args.profile:
                verdicts += profile_router(bench, targets[2], workdir / "router.pyspy")
        for line in verdicts:
            print(line)
        print(f"proxy_overhead router peak_rss_mib={rss.peak / MIB:.1f}")
    finally:
        router.stop()


def verdict_lines(case: Case, done: dict[str, Measurement]) -> list[str]:
    ratio = done["router"].wrk.rps / done["nginx"].wrk.rps  # MiB/s ratio equals the req/s ratio: same body
    if case.name == "small" and case.connections == 1:
        over = (done["router"].wrk.p50_ms - done["nginx"].wrk.p50_ms) * 1000
        verdict = "met" if over <= C1_P50_OVER_NGINX_US else "NOT met"
        figures = f"router-nginx_us={over:.0f} goal<={C1_P50_OVER_NGINX_US}"
        return [f"proxy_overhead target small c=1 p50 {figures} {verdict}"]
    if case.name == "small" and case.connections == 64:
        return [target_line("small c=64 req/s", ratio, SMALL_TARGET)]
    if case.name == "1MiB" and case.connections == 64:
        return [target_line("1MiB c=64 MiB/s", ratio, BIG_TARGET)]
    return []


def others_cores(seconds: float = 1.0) -> float:
    """Cores busy with other programs right now, so a reader can tell a quiet run from a crowded one."""
    before = CpuSnapshot.take([])
    time.sleep(seconds)
    after = CpuSnapshot.take([])
    return max((after.busy - before.busy) - (after.ours - before.ours), 0.0) / seconds


def header(args: argparse.Namespace) -> str:
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip().split("/")[-1]
    return (
        f"proxy_overhead machine nproc={os.cpu_count()} python={platform.python_version()} nginx={nginx} "
        f"warmup_s={args.warmup:g} duration_s={args.duration:g} cpus: wrk={WRK_CPU} proxy={PROXY_CPU} "
        f"backend={PROXY_CPU}(direct)/{WRK_CPU}(proxied) others_cores_before={others_cores():.2f}"
    )


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_in_workdir(prefix: str, keep: bool, body: Callable[[Path], None]) -> int:
    """Run ``body`` in a new temp work directory, removed after unless ``keep``; 130 when interrupted (Ctrl-C or
    SIGTERM: what ``body`` started is stopped by its own cleanup), else 0."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        body(workdir)
    except KeyboardInterrupt:
        print("# interrupted: everything started was stopped", file=sys.stderr)
        return 130
    finally:
        if keep:
            print(f"# work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="whole seconds measured per result (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="whole seconds of load before each one (default 3)")
    parser.add_argument("--skip-big-c1", action="store_true", help="leave out the 1 MiB body at 1 connection")
    parser.add_argument("--profile", action="store_true", help="then profile the router with py-spy (small, c=64)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) afterwards")
    args = parser.parse_args()
    if args.duration < 1 or args.warmup < 0:
        parser.error(
            f"--duration is {args.duration} and --warmup {args.warmup}; wrk takes whole seconds, so the duration "
            "must be 1 or more and the warm-up 0 (none) or more."
        )
    if (os.cpu_count() or 1) < 2:
        print("proxy_overhead needs 2 cores: one for wrk, one for the proxy under test", file=sys.stderr)
        return 2
    ensure_tools("nginx", "wrk")
    signal.signal(signal.SIGTERM, raise_interrupt)
    print(header(args), flush=True)
    return run_in_workdir("waiter-bench-", args.keep, lambda workdir: run(args, workdir))


if __name__ == "__main__":
    sys.exit(main())
