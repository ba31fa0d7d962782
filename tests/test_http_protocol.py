"""The front door's HTTP/1.1 protocol (waiter.frontdoor) against a mock transport, in uvicorn's
tests/protocols/test_http.py style: no sockets, no router, handlers written here. Parsing and its limits, framing
errors, pipelining, flow control, 100-continue, keep-alive, half-close, deadlines."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.support import eventually
from waiter import http1
from waiter.client_connection import UPGRADE_TAIL_LIMIT, Connection
from waiter.errors import WaiterError
from waiter.frontdoor import FrontDoor, Limits
from waiter.http1 import (
    HEADER_NAME_CACHED,
    HEADER_NAMES,
    HEADER_NAMES_LIMIT,
    BadRequest,
    HeaderName,
    Request,
    header_name,
)


class MockTransport(asyncio.Transport):
    """What the front door's connection sees of a socket: writes are collected, pauses and closes recorded."""

    def __init__(self, protocol: Connection) -> None:
        super().__init__()
        self.protocol = protocol
        self.buffer = bytearray()
        self.closed = False
        self.reading = True
        self.eof_written = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.5", 40000) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.buffer += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def get_write_buffer_size(self) -> int:
        return 0

    def take(self) -> bytes:
        data, self.buffer = bytes(self.buffer), bytearray()
        return data


Handler = Callable[[Connection, Request], Awaitable[None]]


async def ok(conn: Connection, req: Request) -> None:
    """Answers with the request's method and target; reads the body first, if any."""
    body = b""
    if req.body is not None:
        async for chunk in req.body.stream():
            body += chunk
    text = req.method + b" " + req.url + b" " + body
    conn.write_head(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(text), text))


def connect(handler: Handler = ok, **limits: Any) -> tuple[Connection, MockTransport, FrontDoor]:
    door = FrontDoor(handler, Limits(**limits))
    conn = door()
    transport = MockTransport(conn)
    conn.connection_made(transport)
    return conn, transport, door


async def settle() -> None:
    """Let the connection's task run what it can."""
    for _ in range(5):
        await asyncio.sleep(0)


def statuses(data: bytes) -> list[int]:
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


GET = b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_pipelined_requests_are_answered_in_order_on_one_connection() -> None:
    order: list[bytes] = []

    async def slow_first(conn: Connection, req: Request) -> None:
        if req.url == b"/0":
            await asyncio.sleep(0.01)
        order.append(req.url)
        await ok(conn, req)

    conn, transport, _ = connect(slow_first)
    conn.data_received(b"".join(GET % i for i in range(3)))
    assert not transport.reading  # the queued ones wait, and so does the socket
    await eventually(lambda: len(order) == 3, what="three answers", timeout=5)
    assert order == [b"/0", b"/1", b"/2"]
    assert transport.take().count(b"HTTP/1.1 200 OK") == 3
    assert transport.reading and not transport.closed


@pytest.mark.parametrize(
    ("data", "status", "named"),
    [
        pytest.param(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 400, b"not valid HTTP", id="malformed-head"),
        pytest.param(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            400,
            b"not valid HTTP",
            id="bad-chunk-size",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            400,
            b"'xchunked' is not supported",
            id="unknown-transfer-coding",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n",
            400,
            b"Transfer-Encoding",
            id="chunked-not-last",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            b"not valid HTTP",
            id="length-and-chunked",
        ),
        pytest.param(
            b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(101)) + b"\r\n",
            431,
            b"more headers than the limit of 100",
            id="too-many-headers",
        ),
        pytest.param(b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 70000 + b"\r\n\r\n", 431, b"X-Big", id="field-too-big"),
        pytest.param(b"GET /" + b"p" * 70000 + b" HTTP/1.1\r\n\r\n", 414, b"target", id="target-too-long"),
    ],
)
async def test_malformed_requests_are_answered_by_the_front_door_and_never_handled(
    data: bytes, status: int, named: bytes
) -> None:
    handled: list[Request] = []

    async def handler(conn: Connection, req: Request) -> None:
        handled.append(req)
        await ok(conn, req)

    conn, transport, _ = connect(handler)
    conn.data_received(data)
    await eventually(lambda: transport.eof_written, what="the answer and the end of it", timeout=5)
    answer = transport.take()
    assert statuses(answer) == [status], answer
    assert named in answer and b"Connection: close" in answer
    # The client may still be sending: what it sends is read and dropped (no reset) until it ends its side.
    assert transport.reading and not transport.closed
    conn.data_received(b"GET / HTTP/1.1\r\n\r\n")
    assert conn.eof_received() is False  # the transport closes
    await settle()
    assert handled == [] and transport.take() == b""


async def test_a_body_that_breaks_after_its_handler_started_fails_with_bad_request() -> None:
    seen: list[BaseException] = []

    async def forward(conn: Connection, req: Request) -> None:
        assert req.body is not None
        try:
            async for _ in req.body.stream():
                pass
        except BadRequest as exc:
            seen.append(exc)
            raise
        raise AssertionError("a broken body must not end as if complete")

    conn, transport, _ = connect(forward)
    conn.data_received(b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    await settle()  # the handler takes the request and waits for more body
    conn.data_received(b"zz\r\n")
    await eventually(lambda: transport.eof_written, what="the answer", timeout=5)
    assert len(seen) == 1
    assert statuses(transport.take()) == [400]


async def test_client_half_closing_mid_body_is_answered_400_then_closed() -> None:
    conn, transport, _ = connect()
    conn.data_received(b"POST /up HTTP/1.1\r\nContent-Length: 10\r\n\r\nhello")
    await settle()
    assert conn.eof_received() is True  # keep the socket open to answer
    await eventually(lambda: transport.closed, what="the connection to close", timeout=5)
    answer = transport.take()
    assert statuses(answer) == [400] and b"before the request body ended" in answer


async def test_half_closed_client_gets_its_answers_then_the_connection_closes() -> None:
    conn, transport, _ = connect()
    conn.data_received(GET % 1 + GET % 2)
    assert conn.eof_received() is True
    await eventually(lambda: transport.closed, what="the connection to close", timeout=5)
    assert statuses(transport.take()) == [200, 200]


async def test_a_client_ending_its_side_while_its_request_waits_to_be_sent_on_has_abandoned_it() -> None:
    outcome: list[str] = []

    async def queued(conn: Connection, req: Request) -> None:
        conn.abandonable(True)
        try:
            await asyncio.Event().wait()  # a slot that never comes
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        finally:
            conn.abandonable(False)

    conn, transport, _ = connect(queued)
    conn.data_received(GET % 1)
    await settle()
    assert conn.eof_received() is False  # asyncio closes the transport then
    transport.close()
    await eventually(lambda: outcome == ["cancelled"], what="the handler to be cancelled", timeout=5)
    assert transport.take() == b""


async def test_a_client_that_ended_its_side_before_its_request_would_wait_has_abandoned_it() -> None:
    outcome: list[str] = []
    admitted = asyncio.Event()

    async def late(conn: Connection, req: Request) -> None:
        await admitted.wait()  # e.g. authenticating
        try:
            conn.abandonable(True)
        except ConnectionResetError:
            outcome.append("gone")
            raise

    conn, transport, _ = connect(late)
    conn.data_received(GET % 1)
    await settle()
    assert conn.eof_received() is True  # not waiting yet: a half-closed client may still be answered
    admitted.set()
    await eventually(lambda: transport.closed, what="the connection to close", timeout=5)
    assert outcome == ["gone"] and transport.take() == b""


async def test_request_body_flow_control_pauses_the_client_until_the_handler_reads() -> None:
    release = asyncio.Event()
    received: list[int] = []

    async def slow_reader(conn: Connection, req: Request) -> None:
        await release.wait()
        assert req.body is not None
        async for chunk in req.body.stream():
            received.append(len(chunk))
        await ok(conn, req)

    conn, transport, _ = connect(slow_reader)
    size = 1024 * 1024
    conn.data_received(b"POST /up HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % size)
    piece = b"x" * 65536
    for _ in range(8):  # 512 KiB: past the high-water mark
        conn.data_received(piece)
    assert not transport.reading
    release.set()
    await eventually(lambda: transport.reading, what="reading to resume", timeout=5)
    for _ in range(8):
        conn.data_received(piece)
    await eventually(lambda: sum(received) == size, what="the whole body", timeout=5)
    await settle()
    assert statuses(transport.take()) == [200]


async def test_response_flow_control_waits_for_the_client_to_drain() -> None:
    wrote: list[int] = []

    async def streaming(conn: Connection, req: Request) -> None:
        conn.write_head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
        for i in range(2):
            conn.write(b"x")
            wrote.append(i)
            await conn.drain()

    conn, _, _ = connect(streaming)
    conn.pause_writing()
    conn.data_received(GET % 1)
    await settle()
    assert wrote == [0]  # blocked in drain()
    conn.resume_writing()
    await eventually(lambda: wrote == [0, 1], what="the second write", timeout=5)


async def test_expect_100_continue_is_answered_when_the_body_is_first_read() -> None:
    go = asyncio.Event()

    async def handler(conn: Connection, req: Request) -> None:
        await go.wait()
        await ok(conn, req)

    conn, transport, _ = connect(handler)
    conn.data_received(b"PUT /up HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    await settle()
    assert transport.take() == b""  # not yet: the handler may still refuse it
    go.set()
    await eventually(lambda: b"100 Continue" in transport.buffer, what="100 Continue", timeout=5)
    conn.data_received(b"hello")
    await eventually(lambda: b"200 OK" in transport.buffer, what="the answer", timeout=5)
    assert transport.take().endswith(b"PUT /up hello")


@pytest.mark.parametrize(
    ("request_line", "extra", "closes"),
    [
        pytest.param(b"GET / HTTP/1.1", b"", False, id="1.1-keeps-alive"),
        pytest.param(b"GET / HTTP/1.1", b"Connection: close\r\n", True, id="1.1-close"),
        pytest.param(b"GET / HTTP/1.0", b"", True, id="1.0-closes"),
        pytest.param(b"GET / HTTP/1.0", b"Connection: keep-alive\r\n", False, id="1.0-keep-alive"),
    ],
)
async def test_keep_alive(request_line: bytes, extra: bytes, closes: bool) -> None:
    conn, transport, _ = connect()
    conn.data_received(request_line + b"\r\n" + extra + b"\r\n")
    await eventually(lambda: b"200 OK" in transport.buffer, what="the answer", timeout=5)
    await settle()
    assert transport.closed is closes


async def test_idle_keep_alive_connection_is_closed_after_the_idle_timeout() -> None:
    conn, transport, _ = connect(idle_timeout=0.05)
    conn.data_received(GET % 1)
    await eventually(lambda: b"200 OK" in transport.buffer, what="the answer", timeout=5)
    await eventually(lambda: transport.closed, what="the idle connection to close", timeout=5)


async def test_a_head_that_trickles_in_past_the_deadline_is_answered_408_and_closed() -> None:
    conn, transport, _ = connect(head_timeout=0.1)
    conn.data_received(b"GET / HTTP/1.1\r\n")
    # Slowloris: a byte now and then keeps the connection busy, never idle.
    for _ in range(100):
        if transport.eof_written:
            break
        conn.data_received(b"X")
        await asyncio.sleep(0.01)
    answer = transport.take()
    assert transport.eof_written and statuses(answer) == [408], answer
    assert b"within 0.1 seconds" in answer


async def test_a_request_in_progress_is_not_cut_by_the_head_deadline() -> None:
    async def slow(conn: Connection, req: Request) -> None:
        await asyncio.sleep(0.2)
        await ok(conn, req)

    conn, transport, _ = connect(slow, head_timeout=0.05, idle_timeout=0.05)
    conn.data_received(GET % 1)
    await eventually(lambda: b"200 OK" in transport.buffer, what="the answer", timeout=5)


async def test_handler_errors_are_answered_without_their_text() -> None:
    async def failing(conn: Connection, req: Request) -> None:
        if req.url == b"/waiter":
            raise WaiterError(503, "No instance is ready.")
        raise RuntimeError("secret internals")

    conn, transport, _ = connect(failing)
    conn.data_received(b"GET /waiter HTTP/1.1\r\nx-cid: abc\r\n\r\nGET /bug HTTP/1.1\r\n\r\n")
    await eventually(lambda: transport.buffer.count(b"HTTP/1.1 ") == 2, what="two answers", timeout=5)
    answer = transport.take()
    assert statuses(answer) == [503, 500]
    assert b"No instance is ready." in answer and b"x-cid: abc" in answer
    assert b"secret internals" not in answer


async def test_drain_closes_idle_connections_and_finishes_busy_ones() -> None:
    release = asyncio.Event()

    async def held(conn: Connection, req: Request) -> None:
        if req.url != b"/0":
            await release.wait()
        await ok(conn, req)

    idle_conn, idle, door = connect(held)
    idle_conn.data_received(GET % 0)  # served: an idle keep-alive connection
    await eventually(lambda: statuses(idle.buffer) == [200], what="the first answer", timeout=5)
    busy_conn = door()
    busy = MockTransport(busy_conn)
    busy_conn.connection_made(busy)
    busy_conn.data_received(GET % 1)
    await settle()
    drained = asyncio.create_task(door.drain(5))
    await settle()
    assert idle.closed and not busy.closed
    release.set()
    await drained
    assert busy.closed and statuses(busy.take()) == [200]
    assert b"Connection: close" not in busy.buffer  # the handler wrote its own head; the close follows it


async def test_drain_waits_for_the_first_request_of_a_new_connection() -> None:
    """A client opened it to send a request; closing it before that request arrives would lose the request."""
    early, early_transport, door = connect()
    drained = asyncio.create_task(door.drain(5))
    await settle()
    late = door()  # accepted during the drain
    late_transport = MockTransport(late)
    late.connection_made(late_transport)
    silent = door()
    silent_transport = MockTransport(silent)
    silent.connection_made(silent_transport)
    await settle()
    assert not early_transport.closed and not late_transport.closed
    early.data_received(GET % 1)
    late.data_received(GET % 2)
    await drained  # the silent one is closed after FIRST_REQUEST_GRACE_SECS
    assert silent_transport.closed and silent_transport.buffer == b""
    for transport in (early_transport, late_transport):
        assert transport.closed and statuses(transport.buffer) == [200]


async def test_a_request_still_unanswered_when_the_drain_times_out_gets_a_503() -> None:
    """Queued for an instance that never comes: answered and its handler stopped, never cut without a word."""
    stopped: list[bytes] = []
    answered: dict[bytes, int] = {}  # what the access log reports for each (waiter.exchange)

    async def stuck(conn: Connection, req: Request) -> None:
        try:
            if req.url == b"/2":
                conn.write_head(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")  # a response under way
            await asyncio.Event().wait()
        finally:
            stopped.append(req.url)
            answered[req.url] = conn.answered_status

    waiting, waiting_transport, door = connect(stuck)
    waiting.data_received(b"GET /1 HTTP/1.1\r\nx-cid: kept\r\n\r\n")
    streaming = door()
    streaming_transport = MockTransport(streaming)
    streaming.connection_made(streaming_transport)
    streaming.data_received(GET % 2)
    await settle()
    await door.drain(0.05)
    await eventually(lambda: len(stopped) == 2, what="both handlers to stop", timeout=5)
    answer = waiting_transport.take()
    assert statuses(answer) == [503] and b"Connection: close" in answer and b"x-cid: kept" in answer
    assert b"The router stopped before this request was served (drain-timeout-secs: 0.05); send it again." in answer
    assert waiting_transport.closed and streaming_transport.closed
    assert statuses(streaming_transport.take()) == [200]  # cut: nothing else could end it
    assert answered == {b"/1": 503, b"/2": 200}


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="head_timeout must be a positive number of seconds, got 0"):
        Limits(head_timeout=0)
    with pytest.raises(ValueError, match="max_headers must be at least 1, got 0"):
        Limits(max_headers=0)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (b"Host", (b"host", None, True)),
        (b"X-Waiter-Token", (b"x-waiter-token", "x-waiter-token", False)),
        (b"x-waiter-cpus", (b"x-waiter-cpus", "x-waiter-cpus", False)),
        (b"Transfer-Encoding", (b"transfer-encoding", None, True)),
        (b"User-Agent", (b"user-agent", None, False)),
        (b"X-Waiter", (b"x-waiter", None, False)),  # not an x-waiter-* header: no dash after the prefix
    ],
)
def test_header_names_are_classified_and_remembered(name: bytes, expected: HeaderName) -> None:
    assert header_name(name) == expected
    assert HEADER_NAMES[name] == expected  # the next request with this name finds it


def test_the_header_name_cache_keeps_no_long_names_and_stops_at_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http1, "HEADER_NAMES", {})
    long = b"X-" + b"a" * HEADER_NAME_CACHED
    assert header_name(long) == (long.lower(), None, False)
    assert long not in http1.HEADER_NAMES
    for i in range(HEADER_NAMES_LIMIT + 10):
        header_name(b"X-Name-%d" % i)
    assert len(http1.HEADER_NAMES) == HEADER_NAMES_LIMIT


async def test_a_handler_that_meets_a_reset_ends_the_connection_instead_of_leaving_it_stuck() -> None:
    """A reset met on the way (ConnectionResetError) while the transport still looks open: the request can never
    be answered, so the connection is closed rather than left with a request that blocks every later one."""

    async def reset(conn: Connection, req: Request) -> None:
        raise ConnectionResetError("met on the way")

    conn, transport, _ = connect(reset)
    conn.data_received(GET % 1)
    await eventually(lambda: transport.closed, what="the connection to close", timeout=5)


@pytest.mark.parametrize(
    ("sent", "whole"),
    [
        pytest.param(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Two: 1\r\nX-Two: 2\r\n\r\n", True, id="head"),
        pytest.param(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True, id="http-1.0"),
        pytest.param(b"POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab\0cd", True, id="body"),
        pytest.param(b"POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nabcd", False, id="body-arriving"),
        pytest.param(b"POST /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n", False, id="te"),
        pytest.param(b"POST /u HTTP/1.1\r\nContent-Length: 300\r\n\r\n" + b"x" * 300, False, id="over-the-limit"),
    ],
)
async def test_a_request_as_received_parses_again_to_the_same_request(sent: bytes, whole: bool) -> None:
    # What a handoff carries to another process (waiter.handoff): parsed there, it is the same request.
    seen: list[tuple[Request, bool]] = []

    async def record(conn: Connection, req: Request) -> None:
        seen.append((req, conn.movable()))

    conn, _, _ = connect(record)
    conn.data_received(sent)
    await eventually(lambda: len(seen) == 1, what="the handler", timeout=5)
    req, movable = seen[0]
    again = req.as_received(200)
    if not whole:
        assert again is None
        return
    assert again is not None and movable
    copy, _, _ = connect(record)
    copy.data_received(again)
    await eventually(lambda: len(seen) == 2, what="the handler of the copy", timeout=5)
    parsed = seen[1][0]
    assert (parsed.method, parsed.url, parsed.headers, parsed.http11, parsed.keep_alive) == (
        req.method,
        req.url,
        req.headers,
        req.http11,
        req.keep_alive,
    )
    assert (parsed.body is None) == (req.body is None)
    if parsed.body is not None and req.body is not None:
        assert parsed.body.whole() == req.body.whole() == (b"ab\0cd",)


async def test_a_connection_moves_once_and_only_with_nothing_but_its_request_read() -> None:
    seen: list[tuple[bytes, bool]] = []

    async def record(conn: Connection, req: Request) -> None:
        seen.append((req.url, conn.movable()))

    conn, _, door = connect(record)
    conn.data_received(GET % 0 + GET % 1)  # a pipelined request behind the first would be left behind
    await eventually(lambda: len(seen) == 2, what="both answers", timeout=5)
    assert seen == [(b"/0", False), (b"/1", True)]

    handed = Connection(door, GET % 2)  # as waiter.handoff adopts one
    handed.connection_made(MockTransport(handed))
    await eventually(lambda: len(seen) == 3, what="the handed request", timeout=5)
    assert seen[2] == (b"/2", False)  # it moved once already


UPGRADE = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


async def test_an_upgrade_waiting_for_its_tunnel_keeps_reading_to_see_its_client_leave() -> None:
    # What the client sends meanwhile is kept for the tunnel, up to a limit; its leaving (EOF) is seen at once.
    waiting: list[Request] = []

    async def queued(conn: Connection, req: Request) -> None:
        waiting.append(req)
        conn.abandonable(True)
        try:
            await asyncio.Event().wait()  # a slot that never comes
        finally:
            conn.abandonable(False)

    conn, transport, _ = connect(queued)
    conn.data_received(UPGRADE + b"early")
    await eventually(lambda: len(waiting) == 1, what="the upgrade to wait", timeout=5)
    assert transport.reading
    conn.data_received(b"x" * UPGRADE_TAIL_LIMIT)
    assert b"".join(waiting[0].tail) == b"early" + b"x" * UPGRADE_TAIL_LIMIT and not transport.reading
    transport.reading = True
    assert conn.eof_received() is False  # asyncio closes the transport then, which cancels the wait
    transport.close()
    await eventually(lambda: conn.closed, what="the connection to close", timeout=5)
    assert transport.take() == b""
