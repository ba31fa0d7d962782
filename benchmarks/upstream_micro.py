"""Sequential small GETs against a local aiohttp server: waiter.upstream.UpstreamPool vs aiohttp.ClientSession.

The server runs in a child process so the numbers are the client's own CPU and latency. One line per result:

    python benchmarks/upstream_micro.py [--requests 20000] [--loop asyncio|uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from waiter.upstream import UpstreamPool

SERVER = """
import socket, sys
from aiohttp import web
async def hello(request):
    return web.Response(body=b"hello, world")
app = web.Application()
app.router.add_get("/", hello)
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen(128)
print(sock.getsockname()[1], flush=True)
web.run_app(app, sock=sock, print=None, access_log=None)
"""


async def _measure(name: str, requests: int, one: Callable[[], Awaitable[None]]) -> None:
    for _ in range(min(500, requests)):  # warm up connections and caches
        await one()
    wall, before = time.perf_counter(), os.times()
    for _ in range(requests):
        await one()
    wall, after = time.perf_counter() - wall, os.times()
    user = (after.user - before.user) / requests * 1e6
    system = (after.system - before.system) / requests * 1e6
    print(
        f"{name:<22} {requests / wall:7.0f} req/s  {user + system:6.1f} µs CPU/req "
        f"(user {user:5.1f}, kernel {system:5.1f})  {requests} sequential GETs"
    )


async def _run(port: int, requests: int) -> None:
    pool = UpstreamPool()

    async def upstream_get() -> None:
        async with await pool.request("127.0.0.1", port, "GET", "/", [], None, idle_timeout=5.0) as response:
            assert await response.read_all(1024) == b"hello, world"

    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}/"

        async def aiohttp_get() -> None:
            async with session.get(url) as response:
                assert await response.read() == b"hello, world"

        try:
            await _measure("upstream.UpstreamPool", requests, upstream_get)
            await _measure("aiohttp.ClientSession", requests, aiohttp_get)
        finally:
            await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        if args.loop == "uvloop":
            import uvloop

            uvloop.run(_run(port, args.requests))
        else:
            asyncio.run(_run(port, args.requests))
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
