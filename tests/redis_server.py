"""A redis-server owned by a test: no persistence, loopback only, on a free port (never the shared one on 6379)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as redis

from tests.support import eventually, free_port

REDIS_SERVER = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


class RedisServer:
    """A redis-server this test owns: no persistence, loopback only, on its own port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        # A replica's full sync writes an RDB file even with --save "": keep it out of the working directory.
        self.dir = tempfile.mkdtemp(prefix=f"redis-{self.port}-")

    async def start(self, replica_of: int | None = None) -> None:
        """Start the server (as a replica of the server on loopback port ``replica_of``, if given)."""
        assert REDIS_SERVER is not None
        # Popen rather than asyncio's subprocess: stop() stays synchronous, which other test modules rely on,
        # and spawning is instantaneous.
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        Path(self.dir).mkdir(exist_ok=True)  # stop() removed it
        argv += ["--dir", self.dir, "--repl-diskless-sync-delay", "0"]  # a replica syncs at once, not after 5 s
        if replica_of:
            argv += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        try:
            while True:
                with contextlib.suppress(redis.ConnectionError, OSError):
                    if await client.ping():
                        return
                assert self.process.poll() is None, f"redis-server on port {self.port} exited"
                assert time.monotonic() < deadline, f"redis-server on port {self.port} did not answer PING"
                await asyncio.sleep(0.02)
        finally:
            await client.aclose()

    def stop(self) -> None:
        """SIGKILL: the outage tests want Redis gone at once, not a graceful shutdown."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.asynccontextmanager
async def running_redis() -> AsyncIterator[RedisServer]:
    server = RedisServer()
    await server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    async with running_redis() as server:
        yield server


REDIS_SENTINEL = shutil.which("redis-sentinel")
needs_sentinel = pytest.mark.skipif(
    REDIS_SERVER is None or REDIS_SENTINEL is None, reason="redis-server and redis-sentinel are not installed"
)
SENTINEL_SERVICE = "waiter-test"


class SentinelGroup:
    """A primary, one replica and three Sentinels on loopback, tuned to fail over within about a second.

    ``url`` is the ``redis+sentinel://`` URL routers use. The Sentinels rewrite their config files, so those live in
    the test's temp dir.
    """

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.primary = RedisServer()
        self.replica = RedisServer()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        self.url = f"redis+sentinel://{hosts}/{SENTINEL_SERVICE}/0"

    async def start(self) -> None:
        await self.primary.start()
        await self.replica.start(replica_of=self.primary.port)
        await eventually(self._replica_synced, "the replica to sync with the primary", timeout=20)
        for port in self.sentinel_ports:
            config = self.work_dir / f"sentinel-{port}.conf"
            config.write_text(
                f'port {port}\nbind 127.0.0.1\ndaemonize no\nsave ""\n'
                f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {SENTINEL_SERVICE} 300\n"
                f"sentinel failover-timeout {SENTINEL_SERVICE} 2000\n"
                f"sentinel parallel-syncs {SENTINEL_SERVICE} 1\n"
            )
            assert REDIS_SENTINEL is not None
            self.sentinels.append(
                subprocess.Popen([REDIS_SENTINEL, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        await eventually(self._sentinels_ready, "each Sentinel to know the replica and the others", timeout=20)

    async def primary_address(self) -> str:
        """host:port of the primary as the first Sentinel that answers reports it."""
        for port in self.sentinel_ports:
            client = redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5, decode_responses=True)
            try:
                host, primary_port = await client.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE
                )
                return f"{host}:{primary_port}"
            except (redis.ConnectionError, OSError):
                continue
            finally:
                await client.aclose()
        raise AssertionError("no Sentinel answered")

    async def _replica_synced(self) -> bool:
        client = redis.Redis(port=self.replica.port, socket_timeout=0.5, decode_responses=True)
        try:
            return (await client.info("replication")).get("master_link_status") == "up"
        except (redis.ConnectionError, OSError):
            return False
        finally:
            await client.aclose()

    async def _sentinels_ready(self) -> bool:
        for port in self.sentinel_ports:
            client = redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5, decode_responses=True)
            try:
                others = await client.execute_command("SENTINEL", "SENTINELS", SENTINEL_SERVICE)
                replicas = await client.execute_command("SENTINEL", "REPLICAS", SENTINEL_SERVICE)
            except (redis.ConnectionError, redis.ResponseError, OSError):
                return False
            finally:
                await client.aclose()
            if len(others) < 2 or len(replicas) < 1:
                return False
        return True

    def stop(self) -> None:
        for sentinel in self.sentinels:
            if sentinel.poll() is None:
                sentinel.kill()
                sentinel.wait(timeout=10)
        self.sentinels.clear()
        self.primary.stop()
        self.replica.stop()


@contextlib.asynccontextmanager
async def running_sentinel_group(work_dir: Path) -> AsyncIterator[SentinelGroup]:
    group = SentinelGroup(work_dir)
    try:
        await group.start()
        yield group
    finally:
        group.stop()
