"""The router as users run it: the waiter-router command in its own process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
import yaml

from tests.conftest import backend_token
from tests.support import eventually, free_port

TOKEN = {"x-waiter-token": "echo"}


class RouterProcess:
    def __init__(
        self,
        tmp_path: Path,
        tokens: list[dict[str, Any]],
        work_dir: Path | None = None,
        *args: str,
        **settings: Any,
    ) -> None:
        """``args`` are extra command-line flags; ``settings`` (with _ for -) are added to the config file."""
        tmp_path.mkdir(exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        tokens_dir = tmp_path / "tokens"
        tokens_dir.mkdir()
        for token in tokens:
            (tokens_dir / f"{token['token']}.yaml").write_text(yaml.safe_dump(token))
        config = tmp_path / "router.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "port": self.port,
                    "tokens-dir": str(tokens_dir),
                    "drain-timeout-secs": 10,
                    "scheduler": {"local": {"work-dir": str(work_dir or tmp_path / "work")}},
                    "health-check": {"startup-interval-ms": 50},
                    **{key.replace("_", "-"): value for key, value in settings.items()},
                }
            )
        )
        # A file, not a pipe: nobody reads a pipe while the router runs, and a full one would block its logging.
        self.log = tmp_path / "router.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "waiter", "--config", str(config), *args], stdout=log, stderr=subprocess.STDOUT
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def ready(self, client: aiohttp.ClientSession) -> None:
        async def up() -> bool:
            assert self.proc.poll() is None, self.output()
            try:
                async with client.get(self.url + "/status") as resp:
                    return resp.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await eventually(up, timeout=20, what="the router to listen")

    def stop(self) -> None:
        # SIGTERM, so the router stops the instances it started; SIGKILL only if it hangs.
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def router_process(tmp_path: Path) -> Iterator[RouterProcess]:
    router = RouterProcess(tmp_path, [backend_token("echo", mem=512)])
    yield router
    router.stop()


async def test_sigterm_drains_in_flight_requests_and_stops_instances(router_process: RouterProcess) -> None:
    r = router_process
    async with aiohttp.ClientSession() as client:
        sid, instance = await _serve_once(r, client)
        pid = instance["shell-scheduler/pid"]
        pgid = os.getpgid(pid)
        slow = asyncio.create_task(client.get(r.url + "/sleep?ms=1500&id=drained", headers=TOKEN))

        async def in_flight() -> bool:
            async with client.get(r.url + f"/apps/{sid}") as resp:
                return bool((await resp.json())["request-metrics"]["outstanding"] == 1)

        await eventually(in_flight, what="the slow request to be in flight")
        r.proc.send_signal(signal.SIGTERM)
        resp = await slow
        assert resp.status == 200
        assert await resp.text() == "slept drained"
        resp.release()
    assert await asyncio.to_thread(r.proc.wait, 20) == 0
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    leftovers = [p.pid for p in psutil.process_iter() if _pgid(p.pid) == pgid]
    assert leftovers == []


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


async def _chunks(total: int) -> AsyncIterator[bytes]:
    block = os.urandom(1 << 20)
    for _ in range(total // len(block)):
        yield block


async def test_large_bodies_leave_router_memory_flat(router_process: RouterProcess) -> None:
    r = router_process
    total = 256 * 1024 * 1024
    async with aiohttp.ClientSession() as client:
        await r.ready(client)
        async with client.get(r.url + "/hello", headers=TOKEN) as resp:
            assert resp.status == 200
        before = psutil.Process(r.proc.pid).memory_info().rss
        async with client.post(r.url + "/upload", data=_chunks(total), headers=TOKEN) as resp:
            assert (await resp.json())["bytes"] == total
        received = 0
        async with client.get(r.url + f"/download?bytes={total}", headers=TOKEN) as resp:
            async for piece in resp.content.iter_chunked(1 << 20):
                received += len(piece)
        assert received == total
        grown = psutil.Process(r.proc.pid).memory_info().rss - before
    assert grown < 48 * 1024 * 1024, f"router RSS grew by {grown / 2**20:.0f} MiB moving 256 MiB each way"


async def _serve_once(r: RouterProcess, client: aiohttp.ClientSession) -> tuple[str, dict[str, Any]]:
    """Start the echo service with one request; its service id and its one instance (as /apps shows it)."""
    await r.ready(client)
    async with client.get(r.url + "/hello", headers=TOKEN) as resp:
        assert resp.status == 200
    async with client.get(r.url + "/apps") as resp:
        (app,) = await resp.json()
    async with client.get(r.url + f"/apps/{app['service-id']}") as resp:
        (instance,) = (await resp.json())["instances"]["active-instances"]
    return app["service-id"], instance


async def _serve_once_pid(r: RouterProcess, client: aiohttp.ClientSession) -> int:
    """Start the echo service with one request; the pid of its instance."""
    return int((await _serve_once(r, client))[1]["shell-scheduler/pid"])


def _group(pgid: int) -> list[int]:
    return [p.pid for p in psutil.process_iter() if _pgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE]


async def test_kill_9_of_the_router_leaves_no_instance(router_process: RouterProcess) -> None:
    async with aiohttp.ClientSession() as client:
        pid = await _serve_once_pid(router_process, client)
    assert _group(pid) != []
    router_process.proc.kill()
    router_process.proc.wait()

    async def gone() -> bool:
        return await asyncio.to_thread(_group, pid) == []

    await eventually(gone, timeout=10, what="the watchdog to stop the instance of the killed router")


async def test_a_restarted_router_stops_what_a_killed_one_left(tmp_path: Path) -> None:
    token = backend_token("echo", mem=512)
    first = RouterProcess(tmp_path / "first", [token], work_dir=tmp_path / "work")
    try:
        async with aiohttp.ClientSession() as client:
            pid = await _serve_once_pid(first, client)
        # The watchdog dies first, with the router: nothing but the next router can clean up now.
        (watchdog,) = [c for c in psutil.Process(first.proc.pid).children() if "leftovers" in " ".join(c.cmdline())]
        watchdog.kill()
        watchdog.wait(5)
        first.proc.kill()
        first.proc.wait()
        assert _group(pid) != [], "the instance outlived both, as an orphan"
    finally:
        first.stop()
    second = RouterProcess(tmp_path / "second", [token], work_dir=tmp_path / "work")
    try:
        async with aiohttp.ClientSession() as client:
            await second.ready(client)
        assert _group(pid) == []
    finally:
        second.stop()


async def test_routers_with_their_own_local_schedulers_cannot_share_a_redis(tmp_path: Path, redis_server: Any) -> None:
    token = backend_token("echo", mem=512)
    # A long heartbeat, so the killed router below is certainly still announced when its replacement starts.
    shared = {"redis": redis_server.url, "autoscaler": {"router-ttl-ms": 60_000}}
    first = RouterProcess(tmp_path / "first", [token], None, **shared)
    try:
        async with aiohttp.ClientSession() as client:
            await first.ready(client)
        second = RouterProcess(tmp_path / "second", [token], None, **shared)
        assert await asyncio.to_thread(second.proc.wait, 30) == 2
        refusal = second.output()
        assert "Routers sharing a Redis must share one scheduler" in refusal and "--workers N" in refusal, refusal
        first.proc.kill()
        first.proc.wait()
        third = RouterProcess(tmp_path / "third", [token], None, **shared)
        try:
            async with aiohttp.ClientSession() as client:
                await third.ready(client)  # a dead router's heartbeat does not refuse its replacement
        finally:
            third.stop()
    finally:
        first.stop()


async def test_workers_share_a_private_agent_and_a_killed_supervisor_leaves_nothing(
    tmp_path: Path, redis_server: Any
) -> None:
    r = RouterProcess(tmp_path, [backend_token("echo", mem=512)], None, "--workers", "2", redis=redis_server.url)
    socket_dir: Path | None = None
    try:
        async with aiohttp.ClientSession() as client:
            pid = await _serve_once_pid(r, client)
        workers = [c for c in psutil.Process(r.proc.pid).children() if "--worker-of" in c.cmdline()]
        assert len(workers) == 2
        argv = workers[0].cmdline()
        agent = Path(argv[argv.index("--worker-of") + 1].removeprefix("unix:"))
        socket_dir = agent.parent
        assert stat.S_IMODE(agent.stat().st_mode) == 0o600 and stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
        r.proc.kill()
        r.proc.wait()

        def nothing_left() -> bool:
            return _group(pid) == [] and not any(_running(w) for w in workers)

        await eventually(nothing_left, timeout=20, what="the workers and the instance to die with the supervisor")
    finally:
        r.stop()
        if socket_dir is not None:  # a supervisor killed by SIGKILL cannot remove its socket
            shutil.rmtree(socket_dir, ignore_errors=True)


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


async def test_any_worker_answers_metrics_for_all_workers(tmp_path: Path, redis_server: Any) -> None:
    r = RouterProcess(tmp_path, [backend_token("echo", mem=512)], None, "--workers", "2", redis=redis_server.url)
    seen: set[str] = set()
    try:
        # A new connection for each scrape, so the kernel hands scrapes to both workers; each scraped worker hands
        # its figures to the supervisor and answers with every worker's it has.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as client:
            await r.ready(client)

            async def both() -> bool:
                async with client.get(r.url + "/metrics") as resp:
                    assert resp.status == 200, await resp.text()
                    text = await resp.text()
                assert text.count("# TYPE waiter_connections_total counter") == 1  # one family, many workers
                seen.update(re.findall(r'waiter_connections_total\{worker="([^"]+)"\}', text))
                return len(seen) == 2

            await eventually(both, timeout=30, what="both workers' series in one scrape")
        assert sorted(w[-3:] for w in seen) == ["-w0", "-w1"]
    finally:
        r.stop()


async def test_workers_serve_a_sequential_client_of_one_slot_from_the_worker_holding_it(
    tmp_path: Path, redis_server: Any
) -> None:
    # --workers 2, a concurrency-level 1 service, one sequential client with a new connection per request (the
    # kernel spreads them over both workers): the worker without the slot hands its connections to the one with
    # it (waiter.handoff), so every request is answered, none twice at once, and nothing scales up.
    token = backend_token("echo", mem=512, **{"concurrency-level": 1, "max-instances": 3})
    r = RouterProcess(tmp_path, [token], None, "--workers", "2", redis=redis_server.url)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as client:
            await r.ready(client)
            for _ in range(40):
                async with client.get(r.url + "/hello", headers=TOKEN) as resp:
                    assert resp.status == 200, await resp.text()
            async with client.get(r.url + "/service-id", headers=TOKEN) as resp:
                sid = await resp.text()
            async with client.get(f"{r.url}/apps/{sid}") as resp:
                (instance,) = (await resp.json())["instances"]["active-instances"]
            async with client.get(f"http://{instance['host']}:{instance['port']}/stats") as resp:
                assert (await resp.json())["peak"] == 1
            handed: dict[str, float] = {}

            async def handoffs_seen() -> bool:
                # A scrape reaches either worker, and holds the other's figures as it last pushed them.
                async with client.get(r.url + "/metrics") as resp:
                    text = await resp.text()
                sent = r'waiter_handoffs_total\{direction="sent",worker="([^"]+)"\} (\S+)'
                for worker, count in re.findall(sent, text):
                    handed[worker] = float(count)
                return sum(handed.values()) > 0

            await eventually(handoffs_seen, timeout=30, what="a worker to have handed connections")
    finally:
        r.stop()


def _hang_up(writer: asyncio.StreamWriter, reset: bool) -> None:
    """Close a client socket: with a FIN as a client's close() sends, or with a reset (RST, SO_LINGER 0)."""
    if reset:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


async def test_a_client_that_leaves_while_queued_leaves_the_queue_and_does_not_hold_the_drain(tmp_path: Path) -> None:
    # One instance with one slot, never more: a queued request can only wait.
    token = backend_token("echo", mem=512, **{"concurrency-level": 1, "max-instances": 1})
    r = RouterProcess(tmp_path, [token], drain_timeout_secs=120, access_log="json")
    try:
        async with aiohttp.ClientSession() as client:
            sid, instance = await _serve_once(r, client)

            async def counts() -> dict[str, Any]:
                async with client.get(r.url + f"/state/{sid}") as resp:
                    return (await resp.json())["state"]  # type: ignore[no-any-return]

            # The only slot is held by a download its client does not read.
            busy_reader, busy = await asyncio.open_connection("127.0.0.1", r.port)
            busy.write(b"GET /download?bytes=1073741824 HTTP/1.1\r\nHost: x\r\nx-waiter-token: echo\r\n")
            busy.write(b"x-cid: busy\r\n\r\n")
            await busy_reader.readexactly(100_000)
            upgrade = b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            upgrade += b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            legs = ((False, b"gone-closed", b""), (True, b"gone-reset", b""), (False, b"gone-ws", upgrade))
            for reset, cid, extra in legs:
                _, writer = await asyncio.open_connection("127.0.0.1", r.port)
                path = b"/ws" if extra else b"/second"
                head = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nx-waiter-token: echo\r\n" + extra
                writer.write(head + b"x-cid: " + cid + b"\r\n\r\n")
                await eventually(lambda: _is(counts(), queued=1), what="the second request to queue")
                _hang_up(writer, reset)
                await eventually(lambda: _is(counts(), queued=0, **{"in-flight": 1}), what="the queue to empty")
            _hang_up(busy, reset=True)
            await eventually(lambda: _is(counts(), outstanding=0), what="the download's slot to be released")
            async with client.get(f"http://{instance['host']}:{instance['port']}/stats") as resp:
                seen = await resp.json()
            assert seen["total"] == 2, seen  # /hello and the download: no abandoned request was forwarded
            r.proc.send_signal(signal.SIGTERM)
            # Nothing is left to drain: it exits long before drain-timeout-secs (120).
            assert await asyncio.to_thread(r.proc.wait, 60) == 0, r.output()[-3000:]
    finally:
        r.stop()
    logged = [json.loads(line) for line in r.output().splitlines() if line.startswith('{"time"')]
    gone_cids = ("gone-closed", "gone-reset", "gone-ws")
    gone = {line["cid"]: line for line in logged if line["cid"].startswith("gone-")}
    assert {cid: line["status"] for cid, line in gone.items()} == dict.fromkeys(gone_cids, 499), gone
    assert all(line["instance-id"] is None and line["service-id"] == sid for line in gone.values()), gone
    (busy_line,) = (line for line in logged if line["cid"] == "busy")
    assert busy_line["status"] == 200, busy_line  # answered, then cut when its client reset the connection


async def _is(state: Any, **expected: int) -> bool:
    counted = await state
    return all(counted[key] == value for key, value in expected.items())


async def test_a_killed_supervisors_workers_answer_waiting_requests_at_once(tmp_path: Path, redis_server: Any) -> None:
    # An instance that holds its port and never answers (its grace period outlasts the test): requests wait for
    # it. The drain timeout is a minute: a worker that waited it out would answer in other words, after the test's.
    silent = (
        "import os, socket, time; s = socket.create_server(('127.0.0.1', int(os.environ['PORT0']))); time.sleep(600)"
    )
    stuck = backend_token("stuck", cmd=f'exec {sys.executable} -c "{silent}"', **{"grace-period-secs": 600})
    # Ports of its own: the instance never answers, so a stranger on its port would answer for it.
    low = 30000 + (os.getpid() * 7) % 3000
    local = {"work-dir": str(tmp_path / "work"), "port-range": [low, low + 99]}
    r = RouterProcess(
        tmp_path,
        [stuck],
        None,
        "--workers",
        "2",
        redis=redis_server.url,
        drain_timeout_secs=60,
        scheduler={"local": local},
    )
    socket_dir: Path | None = None
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as client:
            await r.ready(client)
            workers = [c for c in psutil.Process(r.proc.pid).children() if "--worker-of" in c.cmdline()]
            argv = workers[0].cmdline()
            socket_dir = Path(argv[argv.index("--worker-of") + 1].removeprefix("unix:")).parent

            async def send() -> tuple[int, str]:
                # A connection each, so both workers get some (SO_REUSEPORT spreads connections, not requests).
                headers = {"x-waiter-token": "stuck", "accept": "text/plain"}
                async with (
                    aiohttp.ClientSession() as own,
                    own.get(r.url, headers=headers, timeout=client.timeout) as resp,
                ):
                    return resp.status, await resp.text()

            waiting = [asyncio.create_task(send()) for _ in range(4)]

            async def all_waiting() -> bool:
                async with client.get(r.url + "/apps") as resp:
                    apps = await resp.json() if resp.status == 200 else []
                # ... and the instance scheduled: every worker's create call is answered before the agent dies
                return any(
                    app["request-metrics"]["outstanding"] == len(waiting) and app["resource-usage"]["cpus"] > 0
                    for app in apps
                )

            await eventually(all_waiting, timeout=20, what="the requests to wait for the stuck instance")
            r.proc.kill()
            r.proc.wait()
            answers = await asyncio.gather(*waiting)
        for status, text in answers:
            assert status == 503, text
            assert "The router is stopping and the scheduler agent at unix:" in text, text
            assert "is gone: no instance of this service is left and none can start here" in text, text
        try:
            await eventually(lambda: not any(_running(w) for w in workers), timeout=20, what="the workers to exit")
        except AssertionError as failure:
            raise AssertionError(f"{failure}; their log ends:\n{r.output()[-4000:]}") from None
    finally:
        r.stop()
        if socket_dir is not None:  # a supervisor killed by SIGKILL cannot remove its socket
            shutil.rmtree(socket_dir, ignore_errors=True)


async def test_a_router_told_to_stop_while_starting_stops(tmp_path: Path) -> None:
    # A worker whose agent is gone (its supervisor died while the worker started) retries the agent for ever:
    # SIGTERM (the parent-death signal) must end that start-up, not wait for it.
    r = RouterProcess(tmp_path, [], None, "--worker-of", f"unix:{tmp_path / 'no-agent.sock'}")
    try:
        await eventually(lambda: "unreachable" in r.output(), timeout=30, what="start-up to retry the agent")
        r.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(r.proc.wait, 20) == 0, r.output()[-3000:]
        assert "stopping during start-up" in r.output()
    finally:
        r.stop()
