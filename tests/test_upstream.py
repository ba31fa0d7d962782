"""waiter.upstream against real servers on 127.0.0.1 (aiohttp apps and raw asyncio servers), on both loops.

Every scenario runs once on the default asyncio loop and once on uvloop: ``@on_both_loops`` turns an async
scenario into a sync test parametrised by loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pytest
import uvloop
from aiohttp import web

from tests.support import eventually, free_port
from waiter.upstream import (
    ConnectError,
    UpstreamClosed,
    UpstreamError,
    UpstreamPool,
    UpstreamTimeout,
)
from waiter.upstream.connection import build_head

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
MiB = 1024 * 1024


def on_both_loops(scenario: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run ``scenario`` as a test on each loop in LOOPS; a ``case`` parameter, if any, stays parametrisable."""
    takes_case = "case" in scenario.__code__.co_varnames[: scenario.__code__.co_argcount]

    def run(loop: str, case: Any = None) -> None:
        with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
            runner.run(scenario(case) if takes_case else scenario())

    def test_with_case(loop: str, case: Any) -> None:
        run(loop, case)

    def test(loop: str) -> None:
        run(loop)

    chosen = test_with_case if takes_case else test
    chosen.__name__ = scenario.__name__
    chosen.__doc__ = scenario.__doc__
    return pytest.mark.parametrize("loop", list(LOOPS))(chosen)


# -- servers -----------------------------------------------------------------------------------------------


class WebBackend:
    """An aiohttp app on a free port that records the client address of every request (one per connection)."""

    def __init__(self, routes: list[web.RouteDef]) -> None:
        self.peers: list[tuple[str, int]] = []

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            assert request.transport is not None
            self.peers.append(request.transport.get_extra_info("peername"))
            response: web.StreamResponse = await handler(request)
            return response

        app = web.Application(middlewares=[record])
        app.add_routes(routes)
        self.runner = web.AppRunner(app, access_log=None)

    @property
    def connections(self) -> int:
        return len(set(self.peers))

    async def __aenter__(self) -> WebBackend:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawBackend:
    """A plain asyncio server whose connections are served by ``handle``; it counts connections."""

    def __init__(self, handle: Handler) -> None:
        self.handle = handle
        self.connections = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._writers: list[asyncio.StreamWriter] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.append(task)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await self.handle(reader, writer)
        writer.close()

    async def __aenter__(self) -> RawBackend:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await self.server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request from the wire: (head, de-chunked body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lowered = head.lower()
    if b"transfer-encoding: chunked" in lowered:
        body = bytearray()
        while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readexactly(2)
        return head, bytes(body)
    for line in lowered.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return head, await reader.readexactly(int(line.split(b":")[1]))
    return head, b""


def canned(*responses: bytes, close: bool = False) -> Handler:
    """Answer the n-th request of each connection with responses[n] (the last one repeats)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = 0
        while not reader.at_eof():
            await read_request(reader)
            writer.write(responses[min(n, len(responses) - 1)])
            await writer.drain()
            n += 1
            if close:
                return

    return handle


async def forever() -> None:
    await asyncio.Event().wait()


@contextlib.asynccontextmanager
async def open_pool(**options: Any) -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool(**options)
    try:
        yield pool
    finally:
        await pool.close()


async def get(
    pool: UpstreamPool, port: int, target: str = "/", method: str = "GET", **kwargs: Any
) -> tuple[int, bytes]:
    headers = kwargs.pop("headers", [])
    body = kwargs.pop("body", None)
    response = await pool.request("127.0.0.1", port, method, target, headers, body, idle_timeout=5.0, **kwargs)
    async with response:
        return response.status, await response.read_all(64 * MiB)


# -- pure: the request head ---------------------------------------------------------------------------------


class _Stream:
    """Stands for a streamed body; building the head never iterates it."""

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> bytes:
        raise StopAsyncIteration


@pytest.mark.parametrize(
    ("headers", "body", "content_length", "expected"),
    [
        ([], None, None, b"GET / HTTP/1.1\r\nHost: h:8080\r\n\r\n"),
        ([("Host", "given")], None, None, b"GET / HTTP/1.1\r\nHost: given\r\n\r\n"),
        (
            [("A", "1"), ("A", "2")],
            b"xy",
            None,
            b"GET / HTTP/1.1\r\nA: 1\r\nA: 2\r\nHost: h:8080\r\nContent-Length: 2\r\n\r\n",
        ),
        ([], None, 0, b"GET / HTTP/1.1\r\nHost: h:8080\r\nContent-Length: 0\r\n\r\n"),
        ([], _Stream(), None, b"GET / HTTP/1.1\r\nHost: h:8080\r\nTransfer-Encoding: chunked\r\n\r\n"),
        ([], _Stream(), 1, b"GET / HTTP/1.1\r\nHost: h:8080\r\nContent-Length: 1\r\n\r\n"),
        ([("X", "caf\u00e9")], None, None, "GET / HTTP/1.1\r\nX: caf\u00e9\r\nHost: h:8080\r\n\r\n".encode()),
    ],
    ids=["no-body", "host-kept", "bytes-body-dup-headers", "empty-length", "chunked", "streamed-length", "utf8"],
)
def test_request_head(headers: list[tuple[str, str]], body: Any, content_length: int | None, expected: bytes) -> None:
    assert build_head("GET", "/", headers, "h", 8080, body, content_length) == expected


@pytest.mark.parametrize(
    ("target", "headers", "body", "content_length", "message"),
    [
        ("/", [("X", "a\r\nEvil: 1")], None, None, "CR or LF"),
        ("/ HTTP/1.1\r\nX: y", [], None, None, "CR or LF"),
        ("/", [("X", "a\nb")], None, None, "CR or LF"),
        ("/", [], b"abc", 4, "content_length 4 does not match the 3-byte body"),
        ("/", [], None, 5, "content_length 5 is not allowed here"),
    ],
    ids=["crlf-in-value", "crlf-in-target", "lf-in-value", "length-mismatch", "length-without-body"],
)
async def test_malformed_requests_are_refused_before_connecting(
    target: str, headers: list[tuple[str, str]], body: bytes | None, content_length: int | None, message: str
) -> None:
    async with open_pool() as pool:
        with pytest.raises(ValueError, match=message):
            await pool.request(
                "127.0.0.1", free_port(), "GET", target, headers, body, idle_timeout=1.0, content_length=content_length
            )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"connect_timeout": 0}, "connect_timeout must be a positive number of seconds, got 0"),
        ({"idle_keepalive_secs": -1.0}, "idle_keepalive_secs must be a positive number of seconds, got -1.0"),
        ({"max_idle_per_endpoint": -1}, "max_idle_per_endpoint must be 0 or more, got -1"),
    ],
    ids=["connect-timeout", "keepalive", "max-idle"],
)
def test_pool_options_are_validated(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        UpstreamPool(**options)


# -- keep-alive and pooling ---------------------------------------------------------------------------------


@on_both_loops
async def test_sequential_requests_reuse_one_connection() -> None:
    async def echo(request: web.Request) -> web.Response:
        response = web.json_response({"headers": list(request.headers.items()), "path": request.path_qs})
        response.headers.add("Set-Cookie", "a=1")
        response.headers.add("Set-Cookie", "b=2")
        return response

    async with WebBackend([web.get("/echo", echo)]) as backend, open_pool() as pool:
        for i in range(5):
            headers = [("X-Dup", "1"), ("X-Dup", "2"), ("X-N", str(i))]
            response = await pool.request(
                "127.0.0.1", backend.port, "GET", f"/echo?n={i}", headers, None, idle_timeout=5.0
            )
            seen = json.loads(await response.read_all(MiB))
            response.release()
            assert seen["path"] == f"/echo?n={i}"
            assert seen["headers"][:3] == [["X-Dup", "1"], ["X-Dup", "2"], ["X-N", str(i)]]
            assert ["Host", f"127.0.0.1:{backend.port}"] in seen["headers"]
            assert [v for k, v in response.headers if k == "Set-Cookie"] == ["a=1", "b=2"]
            assert response.keep_alive and not response.chunked
        assert backend.connections == 1
        assert pool.endpoint_count() == 1


@on_both_loops
async def test_concurrent_requests_open_several_connections_then_reuse_them() -> None:
    arrived = 0
    all_arrived = asyncio.Event()

    async def gather_four(request: web.Request) -> web.Response:
        nonlocal arrived
        arrived += 1
        if arrived == 4:
            all_arrived.set()
        await all_arrived.wait()
        return web.Response(text="ok")

    async with WebBackend([web.get("/", gather_four)]) as backend, open_pool() as pool:
        results = await asyncio.gather(*(get(pool, backend.port) for _ in range(4)))
        assert results == [(200, b"ok")] * 4
        assert backend.connections == 4
        assert pool.endpoint_count() == 4
        for _ in range(4):
            assert await get(pool, backend.port) == (200, b"ok")
        assert backend.connections == 4


@on_both_loops
async def test_idle_connections_beyond_max_idle_are_closed() -> None:
    gate = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await gate.wait()
        return web.Response(text="ok")

    async with WebBackend([web.get("/", slow)]) as backend, open_pool(max_idle_per_endpoint=2) as pool:
        calls = [asyncio.ensure_future(get(pool, backend.port)) for _ in range(4)]
        await eventually(lambda: len(backend.peers) == 4, "four requests at the backend")
        gate.set()
        assert await asyncio.gather(*calls) == [(200, b"ok")] * 4
        assert pool.endpoint_count() == 2


@on_both_loops
async def test_idle_connections_expire_after_idle_keepalive_secs() -> None:
    empty = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    async with RawBackend(canned(empty)) as backend, open_pool(idle_keepalive_secs=0.05) as pool:
        assert await get(pool, backend.port) == (200, b"")
        assert pool.endpoint_count() == 1
        await eventually(lambda: pool.endpoint_count() == 0, "the idle connection to expire")
        assert await get(pool, backend.port) == (200, b"")
        assert backend.connections == 2


# -- response framing (table) ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Framing:
    """A canned response and what the client must make of it (keep_alive also decides connection reuse)."""

    raw: bytes
    status: int = 200
    body: bytes = b"hello"
    content_length: int | None = 5
    chunked: bool = False
    keep_alive: bool = True
    method: str = "GET"


CL5 = b"Content-Length: 5\r\n"
FRAMING = {
    "content-length": Framing(b"HTTP/1.1 200 OK\r\n" + CL5 + b"\r\nhello"),
    "chunked": Framing(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
        content_length=None,
        chunked=True,
    ),
    "http10-until-close": Framing(b"HTTP/1.0 200 OK\r\n\r\nhello", content_length=None, keep_alive=False),
    "connection-close": Framing(b"HTTP/1.1 200 OK\r\nConnection: close\r\n" + CL5 + b"\r\nhello", keep_alive=False),
    "http10-keep-alive": Framing(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n" + CL5 + b"\r\nhello"),
    "head": Framing(b"HTTP/1.1 200 OK\r\n" + CL5 + b"\r\n", body=b"", method="HEAD"),
    "head-chunked": Framing(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        body=b"",
        content_length=None,
        chunked=True,
        method="HEAD",
    ),
    "204": Framing(b"HTTP/1.1 204 No Content\r\n\r\n", status=204, body=b"", content_length=None, method="DELETE"),
    "304": Framing(b"HTTP/1.1 304 Not Modified\r\n" + CL5 + b"\r\n", status=304, body=b""),
    "100-continue-first": Framing(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n" + CL5 + b"\r\nhello", status=201, method="POST"
    ),
    "103-early-hints-first": Framing(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n" + CL5 + b"\r\nhello"
    ),
}


@pytest.mark.parametrize("case", list(FRAMING.values()), ids=list(FRAMING))
@on_both_loops
async def test_response_framing(case: Framing) -> None:
    async with RawBackend(canned(case.raw, close=not case.keep_alive)) as backend, open_pool() as pool:
        for _ in range(3):  # the next request on a kept connection parses cleanly too
            response = await pool.request("127.0.0.1", backend.port, case.method, "/", [], None, idle_timeout=5.0)
            assert (response.status, response.content_length) == (case.status, case.content_length)
            assert (response.chunked, response.keep_alive) == (case.chunked, case.keep_alive)
            assert [k for k, _ in response.headers if k == "Link"] == []  # interim headers are dropped
            assert await response.read_all(1024) == case.body
            response.release()
        assert backend.connections == (1 if case.keep_alive else 3)
        assert pool.endpoint_count() == (1 if case.keep_alive else 0)


@on_both_loops
async def test_head_then_get_on_the_same_connection() -> None:
    async def page(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 1000)

    async with WebBackend([web.get("/", page)]) as backend, open_pool() as pool:
        response = await pool.request("127.0.0.1", backend.port, "HEAD", "/", [], None, idle_timeout=5.0)
        assert (response.status, response.content_length) == (200, 1000)
        assert await response.read_chunk() == b""
        response.release()
        assert await get(pool, backend.port) == (200, b"x" * 1000)
        assert backend.connections == 1


# -- streaming ------------------------------------------------------------------------------------------------


@on_both_loops
async def test_response_body_is_delivered_as_it_arrives() -> None:
    first_read = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first")
        await first_read.wait()
        await response.write(b"second")
        return response

    async with WebBackend([web.get("/", stream)]) as backend, open_pool() as pool:
        response = await pool.request("127.0.0.1", backend.port, "GET", "/", [], None, idle_timeout=5.0)
        assert response.chunked and response.content_length is None
        assert await response.read_chunk() == b"first"
        first_read.set()
        assert await response.read_all(100) == b"second"
        response.release()
        assert pool.endpoint_count() == 1


@pytest.mark.parametrize("case", [None, 48 * MiB], ids=["chunked-100MB", "content-length-48MiB"])
@on_both_loops
async def test_request_body_streams_with_flow_control(case: int | None) -> None:
    total = 100 * 1000 * 1000 if case is None else case
    received = 0

    async def digest(request: web.Request) -> web.Response:
        nonlocal received
        sha = hashlib.sha256()
        async for chunk in request.content.iter_any():
            received += len(chunk)
            sha.update(chunk)
        return web.Response(text=f"{request.headers.get('Transfer-Encoding')} {sha.hexdigest()}")

    produced = 0
    max_ahead = 0
    expected = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        nonlocal produced, max_ahead
        block = 1 * MiB
        for i in range(0, total, block):
            chunk = bytes([i // block % 251]) * min(block, total - i)
            expected.update(chunk)
            produced += len(chunk)
            max_ahead = max(max_ahead, produced - received)
            yield chunk

    async with WebBackend([web.post("/", digest)]) as backend, open_pool() as pool:
        status, answer = await get(pool, backend.port, method="POST", body=body(), content_length=case)
        assert pool.endpoint_count() == 1  # the body task finished and the connection went back to the pool
    framing = "chunked" if case is None else "None"
    assert (status, answer.decode()) == (200, f"{framing} {expected.hexdigest()}")
    # The generator never ran more than socket buffers ahead of the backend: the body was never held whole.
    assert max_ahead < 24 * MiB, max_ahead


@on_both_loops
async def test_slow_upload_the_backend_keeps_reading_is_not_idle() -> None:
    """The head wait lasts longer than idle_timeout, but request body bytes keep moving: no timeout."""

    async def count(request: web.Request) -> web.Response:
        return web.Response(text=str(len(await request.read())))

    async def trickle() -> AsyncIterator[bytes]:
        for _ in range(8):
            await asyncio.sleep(0.05)  # a slow client, not synchronisation
            yield b"t" * 1000

    async with WebBackend([web.post("/", count)]) as backend, open_pool() as pool:
        response = await pool.request("127.0.0.1", backend.port, "POST", "/", [], trickle(), idle_timeout=0.15)
        assert await response.read_all(100) == b"8000"
        response.release()


@on_both_loops
async def test_response_reading_pauses_when_the_consumer_is_slow() -> None:
    total = 48 * MiB
    stalled = asyncio.Event()

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        block = b"z" * (64 * 1024)
        for _ in range(total // len(block)):
            writer.write(block)
            try:
                await asyncio.wait_for(writer.drain(), 0.3)
            except TimeoutError:
                stalled.set()  # blocked for long: the router stopped reading while its consumer was idle
                await writer.drain()
        await forever()

    async with RawBackend(flood) as backend, open_pool() as pool:
        response = await pool.request("127.0.0.1", backend.port, "GET", "/", [], None, idle_timeout=5.0)
        async with asyncio.timeout(5):
            await stalled.wait()
        size = 0
        while chunk := await response.read_chunk():
            assert len(chunk) <= 1 * MiB  # at most the pause threshold plus one read
            size += len(chunk)
        response.release()
        assert size == total


@on_both_loops
async def test_backend_answering_before_the_body_ends_gets_its_answer_through() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 7\r\n\r\ntoo big")
        while await reader.read(MiB):  # read and drop the rest, as polite servers do
            pass

    async def endless() -> AsyncGenerator[bytes, None]:
        while True:
            yield b"u" * 65536

    async with RawBackend(refuse) as backend, open_pool() as pool:
        body = endless()
        response = await pool.request("127.0.0.1", backend.port, "PUT", "/", [], body, idle_timeout=5.0)
        assert (response.status, await response.read_all(100)) == (413, b"too big")
        response.release()
        assert pool.endpoint_count() == 0
        await body.aclose()


# -- failures -------------------------------------------------------------------------------------------------


@on_both_loops
async def test_backend_that_never_answers_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await forever()

    async with RawBackend(silent) as backend, open_pool() as pool:
        with pytest.raises(UpstreamTimeout, match=r"sent no response head for 0\.2 s"):
            await pool.request("127.0.0.1", backend.port, "GET", "/", [], None, idle_timeout=0.2)
        assert pool.endpoint_count() == 0


@on_both_loops
async def test_backend_that_stalls_mid_body_times_out() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
        await forever()

    async with RawBackend(stall) as backend, open_pool() as pool:
        response = await pool.request("127.0.0.1", backend.port, "GET", "/", [], None, idle_timeout=5.0)
        response.idle_timeout = 0.2
        assert await response.read_chunk() == b"12345"
        with pytest.raises(UpstreamTimeout, match=r"sent no more of the response body for 0\.2 s"):
            await response.read_chunk()
        response.release()
        assert pool.endpoint_count() == 0


DEATHS = {
    "before-head": (b"", b"", "response head was complete"),
    "mid-head": (b"HTTP/1.1 200 OK\r\nContent-Le", b"", "response head was complete"),
    "mid-length-body": (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345", b"12345", "body was complete"),
    "mid-chunked-body": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n12345\r\n5\r\n67",
        b"1234567",
        "body",
    ),
}


@pytest.mark.parametrize("case", list(DEATHS.values()), ids=list(DEATHS))
@on_both_loops
async def test_backend_that_dies_raises_upstream_closed(case: tuple[bytes, bytes, str]) -> None:
    sent, delivered, message = case

    async with RawBackend(canned(sent, close=True)) as backend, open_pool() as pool:
        with pytest.raises(UpstreamClosed, match=message):
            response = await pool.request("127.0.0.1", backend.port, "GET", "/", [], None, idle_timeout=5.0)
            try:
                got = b""
                while chunk := await response.read_chunk():
                    got += chunk
            finally:
                assert got == delivered
                response.release()
        assert backend.connections == 1  # a fresh connection is never retried
        assert pool.endpoint_count() == 0


@on_both_loops
async def test_garbage_response_raises_upstream_closed() -> None:
    async with RawBackend(canned(b"SMTP ready\r\n\r\n")) as backend, open_pool() as pool:
        with pytest.raises(UpstreamClosed, match="invalid HTTP response"):
            await pool.request("127.0.0.1", backend.port, "GET", "/", [], None, idle_timeout=5.0)


@on_both_loops
async def test_closed_port_raises_connect_error() -> None:
    port = free_port()
    async with open_pool() as pool:
        with pytest.raises(ConnectError, match=f"Could not connect to 127.0.0.1:{port}: Connection refused"):
            await pool.request("127.0.0.1", port, "GET", "/", [], None, idle_timeout=1.0)


@on_both_loops
async def test_release_without_reading_closes_the_connection() -> None:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="unread")

    async with WebBackend([web.get("/", page)]) as backend, open_pool() as pool:
        response = await pool.request("127.0.0.1", backend.port, "GET", "/", [], None, idle_timeout=5.0)
        response.release()
        response.release()  # idempotent
        assert pool.endpoint_count() == 0
        with pytest.raises(UpstreamError, match="after release"):
            await response.read_chunk()
        assert await get(pool, backend.port) == (200, b"unread")
        assert backend.connections == 2


@on_both_loops
async def test_closing_the_pool_ends_responses_in_flight() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
        await forever()

    async with RawBackend(stall) as backend:
        pool = UpstreamPool()
        response = await pool.request("127.0.0.1", backend.port, "GET", "/", [], None, idle_timeout=5.0)
        await pool.close()
        assert await response.read_chunk() == b"12345"
        with pytest.raises(UpstreamClosed, match="pool was closed"):
            await response.read_chunk()
        response.release()
        with pytest.raises(UpstreamError, match="pool is closed"):
            await pool.request("127.0.0.1", backend.port, "GET", "/", [], None, idle_timeout=5.0)


# -- stale pooled connections ---------------------------------------------------------------------------------

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@on_both_loops
async def test_idle_connection_closed_by_the_backend_is_replaced() -> None:
    async with RawBackend(canned(OK, close=True)) as backend, open_pool() as pool:  # no Connection: close header
        assert await get(pool, backend.port) == (200, b"ok")
        await eventually(lambda: pool.endpoint_count() == 0, "the pool to notice the closed connection")
        assert await get(pool, backend.port) == (200, b"ok")
        assert backend.connections == 2


def _body_kind(kind: str) -> bytes | AsyncIterator[bytes] | None:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"strea", b"med"):
            yield part

    return {"none": None, "bytes": b"streamed", "iterator": chunks()}[kind]


@pytest.mark.parametrize("case", ["none", "bytes", "iterator"])
@on_both_loops
async def test_pooled_connection_dropped_after_the_request_was_read_is_not_sent_again(case: str) -> None:
    """The backend reads the second request of a kept-alive connection and closes without answering: it may have
    acted on it, so the request fails and is sent nowhere else (a resend made backends see requests twice)."""
    requests: list[tuple[bytes, bytes]] = []

    async def drop_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await read_request(reader))
        writer.write(OK)
        requests.append(await read_request(reader))  # closes without answering

    async with RawBackend(drop_second) as backend, open_pool() as pool:
        assert await get(pool, backend.port) == (200, b"ok")
        with pytest.raises(UpstreamClosed, match="before the response head was complete"):
            await get(pool, backend.port, method="POST", body=_body_kind(case))
        assert backend.connections == 1
        assert [head.split(b" ")[0] for head, _ in requests] == [b"GET", b"POST"]
        assert pool.endpoint_count() == 0


@on_both_loops
async def test_pooled_connection_the_backend_closed_unnoticed_is_replaced_before_writing() -> None:
    """The backend closed an idle connection and the loop has not read that yet (reading is paused here, as on a
    busy loop): the pool sees it first and sends the request on a fresh connection, once."""
    heads: list[bytes] = []
    close_first = asyncio.Event()

    async def close_idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            heads.append((await read_request(reader))[0])
            writer.write(OK)
            if backend.connections == 1:
                await close_first.wait()
                return

    async with RawBackend(close_idle) as backend, open_pool() as pool:
        assert await get(pool, backend.port) == (200, b"ok")
        (idle,) = pool._conns
        idle.transport.pause_reading()
        close_first.set()

        def closed_by_backend() -> bool:
            with socket.socket(fileno=os.dup(idle.transport.get_extra_info("socket").fileno())) as peek:
                try:
                    return peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
                except BlockingIOError:
                    return False

        await eventually(closed_by_backend, "the backend's end of the idle connection to reach the pool's socket")
        assert await get(pool, backend.port, target="/second") == (200, b"ok")
        assert backend.connections == 2
        assert [head.split(b" ")[1] for head in heads] == [b"/", b"/second"]


@on_both_loops
async def test_failing_body_iterator_surfaces_its_own_error() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await forever()

    async def broken() -> AsyncIterator[bytes]:
        yield b"part"
        raise ConnectionResetError("client went away")

    async with RawBackend(silent) as backend, open_pool() as pool:
        with pytest.raises(ConnectionResetError, match="client went away"):
            await pool.request("127.0.0.1", backend.port, "POST", "/", [], broken(), idle_timeout=5.0)
        assert pool.endpoint_count() == 0


# -- upgrades ------------------------------------------------------------------------------------------------


@on_both_loops
async def test_a_switch_of_protocols_nobody_asked_for_breaks_the_exchange() -> None:
    """Upgrades are tunnelled by the front door itself; a 101 to a plain request is a broken backend."""
    switching = canned(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\nhello")
    async with RawBackend(switching) as backend, open_pool() as pool:
        with pytest.raises(UpstreamClosed, match="switched protocols on a request that did not ask for it"):
            await pool.request("127.0.0.1", backend.port, "GET", "/", [], None, idle_timeout=5.0)
        assert pool.endpoint_count() == 0


@on_both_loops
async def test_a_response_used_as_a_context_manager_returns_its_connection_to_the_pool() -> None:
    async with RawBackend(canned(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")) as backend, open_pool() as pool:
        async with await pool.request("127.0.0.1", backend.port, "GET", "/", [], None, idle_timeout=5.0) as response:
            assert await response.read_all(10) == b"ok"
        assert pool.endpoint_count() == 1
        with pytest.raises(UpstreamError, match="after release"):
            await response.read_chunk()
