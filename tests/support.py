"""Tools every test module shares: free ports, one poll-until-true helper, scheduler change events, one HTTP
response read off a raw connection."""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def eventually(
    predicate: Callable[[], Awaitable[Any] | Any], what: str = "condition", timeout: float = 10.0
) -> float:
    """Poll ``predicate`` (plain or async) until it is true; the seconds it took. Fails after ``timeout``.

    For facts that send no event (files, sockets, another process's state); where an event exists, wait on it.
    """
    start = time.monotonic()
    while True:
        outcome = predicate()
        if await outcome if inspect.isawaitable(outcome) else outcome:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


class Changes:
    """Scheduler change notifications as an event: ``until`` wakes on each change instead of polling."""

    def __init__(self, scheduler: Any) -> None:
        self.calls: list[str] = []
        self._changed = asyncio.Event()
        scheduler.subscribe(self)

    def __call__(self, service_id: str) -> None:
        self.calls.append(service_id)
        self._changed.set()

    async def until(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


async def read_response(reader: asyncio.StreamReader, head_only: bool = False) -> Response:
    """One response off the wire: Content-Length, chunked or (neither) until the connection closes."""
    async with asyncio.timeout(15):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if head_only or status in (100, 204, 304):
            return Response(status, headers, b"")
        if "content-length" in headers:
            return Response(status, headers, await reader.readexactly(int(headers["content-length"])))
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                body += await reader.readexactly(size + 2)
                if size == 0:
                    return Response(status, headers, body[:-2])
                body = body[:-2]
        return Response(status, headers, await reader.read())
