"""The front door (waiter.frontdoor) as an HTTP/1.1 server: raw sockets against a real router and real backends."""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import replace

import aiohttp
import pytest

from tests.conftest import FAKE, RunningRouter, backend_token
from tests.support import eventually, read_response
from waiter.errors import RenderedError
from waiter.http1 import Request, error_response

# Instances only need to answer HTTP here (tests.fakes); real processes: test_router_e2e.py and the scheduler tests.
pytestmark = pytest.mark.schedulers(FAKE)

TOKEN_LINE = b"x-waiter-token: echo\r\n"


async def connect(r: RunningRouter) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", r.server.port)


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    async with asyncio.timeout(timeout):
        return await reader.read() == b""


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


async def echo_router(make_router) -> RunningRouter:  # type: ignore[no-untyped-def]
    """A router with the test backend behind token ``echo``, its first instance already healthy."""
    r = await make_router([backend_token("echo", mem=512)])
    async with r.client.get(r.url + "/hello", headers={"x-waiter-token": "echo"}) as resp:
        assert resp.status == 200
    return r


async def test_keep_alive_and_pipelined_requests_are_answered_in_order(make_router) -> None:
    r = await echo_router(make_router)
    reader, writer = await connect(r)
    request = b"GET /sleep?ms=%d&id=%d HTTP/1.1\r\nHost: x\r\n%b\r\n"
    pipelined = b"".join(request % (ms, i, TOKEN_LINE) for i, ms in enumerate((150, 0, 50)))
    writer.write(pipelined)
    bodies = [(await read_response(reader)).body for _ in range(3)]
    assert bodies == [b"slept 0", b"slept 1", b"slept 2"]
    # The same connection serves more afterwards (keep-alive), each response with its own x-cid.
    writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\nx-cid: mine\r\n" + TOKEN_LINE + b"\r\n")
    last = await read_response(reader)
    assert last.status == 200 and last.headers["x-cid"] == "mine" and "connection" not in last.headers
    await close(writer)


async def test_http_1_0_closes_unless_kept_alive(make_router) -> None:
    r = await echo_router(make_router)
    reader, writer = await connect(r)
    writer.write(b"GET /hello HTTP/1.0\r\n" + TOKEN_LINE + b"\r\n")
    resp = await read_response(reader)
    assert resp.status == 200 and resp.body.startswith(b"hello from")
    assert resp.headers["connection"] == "close"
    assert await closed_by_peer(reader)
    await close(writer)

    reader, writer = await connect(r)
    writer.write(b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n" + TOKEN_LINE + b"\r\n")
    resp = await read_response(reader)
    assert resp.headers["connection"] == "keep-alive"
    # A streamed (chunked) backend response reaches an HTTP/1.0 client delimited by the end of the connection.
    writer.write(b"GET /stream?chunks=3&delay_ms=10 HTTP/1.0\r\nConnection: keep-alive\r\n" + TOKEN_LINE + b"\r\n")
    streamed = await read_response(reader)
    assert "transfer-encoding" not in streamed.headers and streamed.headers["connection"] == "close"
    assert streamed.body.count(b"chunk ") == 3
    await close(writer)


async def test_expect_100_continue(make_router) -> None:
    r = await echo_router(make_router)
    body = b"x" * 5000
    reader, writer = await connect(r)
    writer.write(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n" + TOKEN_LINE + b"\r\n"
    )
    interim = await read_response(reader, head_only=True)
    assert interim.status == 100  # the router asks for the body only once a backend takes the request
    writer.write(body)
    resp = await read_response(reader)
    assert resp.status == 200
    assert resp.body == b'{"bytes": 5000, "sha256": "%s"}' % hashlib.sha256(body).hexdigest().encode()
    # Refused before any backend is involved: no 100, the error, and the unread body ends the connection.
    writer.write(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n"
        b"x-waiter-token: nope\r\n\r\n"
    )
    refused = await read_response(reader)
    assert refused.status == 404 and refused.headers["connection"] == "close"
    assert await closed_by_peer(reader)
    await close(writer)


async def test_chunked_upload_is_streamed_to_the_backend(make_router) -> None:
    r = await echo_router(make_router)
    pieces = [b"a" * 10, b"b" * 70000, b"c" * 3]
    reader, writer = await connect(r)
    writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n" + TOKEN_LINE + b"\r\n")
    for piece in pieces:
        writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
        await writer.drain()
    writer.write(b"0\r\n\r\n")
    resp = await read_response(reader)
    whole = b"".join(pieces)
    assert resp.status == 200
    assert resp.body == b'{"bytes": %d, "sha256": "%s"}' % (len(whole), hashlib.sha256(whole).hexdigest().encode())
    await close(writer)


async def test_broken_chunked_upload_is_the_clients_error_and_never_reaches_the_backend_whole(make_router) -> None:
    r = await echo_router(make_router)
    service = r.router.registry.get(await r.service_id({"x-waiter-token": "echo"}))
    assert service is not None
    reader, writer = await connect(r)
    writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n" + TOKEN_LINE + b"\r\n")
    writer.write(b"5\r\nhello\r\n")
    await eventually(_async(lambda: service.reservations.in_flight == 1), what="the upload in flight")
    writer.write(b"zz\r\n")  # not a chunk size
    resp = await read_response(reader)
    assert resp.status == 400 and b"not valid HTTP" in resp.body
    assert await closed_by_peer(reader)
    await eventually(_async(lambda: service.reservations.in_flight == 0), what="the slot to be released")
    await close(writer)

    async def backend_idle() -> bool:
        return (await r.get_json("/stats", headers={"x-waiter-token": "echo"}))["current"] == 0

    await eventually(backend_idle, what="the backend to drop the broken upload")
    assert (await r.get_json("/stats", headers={"x-waiter-token": "echo"}))["uploads"] == 0


@pytest.mark.parametrize(
    ("request_bytes", "status", "named"),
    [
        pytest.param(b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 70000 + b"\r\n\r\n", 431, b"X-Big", id="one-header-too-big"),
        pytest.param(
            b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(300)) + b"\r\n",
            431,
            b"limit",
            id="head-too-big",
        ),
        pytest.param(b"GET /" + b"p" * 70000 + b" HTTP/1.1\r\n\r\n", 414, b"target", id="target-too-long"),
        pytest.param(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 400, b"not valid HTTP", id="malformed"),
    ],
)
async def test_bad_request_heads_are_refused_and_the_connection_closed(
    make_router, request_bytes: bytes, status: int, named: bytes
) -> None:
    r = await make_router()
    reader, writer = await connect(r)
    # Sent in pieces, as a slow client would: the limits hold however the bytes arrive.
    for start in range(0, len(request_bytes), 16384):
        writer.write(request_bytes[start : start + 16384])
        await writer.drain()
    resp = await read_response(reader)
    assert resp.status == status and named in resp.body
    assert resp.headers["connection"] == "close" and resp.headers["x-cid"]
    assert await closed_by_peer(reader)
    await close(writer)


async def test_idle_keep_alive_connection_is_closed(make_router) -> None:
    r = await make_router()
    r.server.front_door.limits = replace(r.server.front_door.limits, idle_timeout=0.3)
    reader, writer = await connect(r)
    writer.write(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert (await read_response(reader)).status == 200
    started = time.monotonic()
    assert await closed_by_peer(reader)
    assert 0.2 < time.monotonic() - started < 3
    await close(writer)


async def test_client_leaving_mid_response_releases_the_slot(make_router) -> None:
    r = await echo_router(make_router)
    sid = await r.service_id({"x-waiter-token": "echo"})
    service = r.router.registry.get(sid)
    assert service is not None
    reader, writer = await connect(r)
    writer.write(b"GET /download?bytes=1073741824 HTTP/1.1\r\nHost: x\r\n" + TOKEN_LINE + b"\r\n")
    await reader.readexactly(100_000)
    assert service.reservations.in_flight == 1
    writer.transport.abort()

    async def released() -> bool:
        return service.reservations.in_flight == 0

    await eventually(released, timeout=10, what="the slot to be released")
    async with r.client.get(r.url + "/hello", headers={"x-waiter-token": "echo"}) as resp:
        assert resp.status == 200


async def test_api_requests_go_through_the_relay(make_router) -> None:
    r = await make_router([backend_token("echo")])
    reader, writer = await connect(r)
    writer.write(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nx-cid: api-cid\r\n\r\n")
    status = await read_response(reader)
    assert status.status == 200 and status.headers["x-cid"] == "api-cid" and b'"status": "ok"' in status.body
    token = b'{"token": "posted", "cmd": "x", "cpus": 0.1, "mem": 64, "version": "1"}'
    writer.write(b"POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%b" % (len(token), token))
    posted = await read_response(reader)
    assert posted.status == 200, posted.body
    writer.write(b"HEAD /settings HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = await read_response(reader, head_only=True)
    assert head.status == 200 and int(head.headers["content-length"]) > 0
    writer.write(b"GET /token?token=posted HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert b'"cmd": "x"' in (await read_response(reader)).body
    await close(writer)


async def test_websocket_is_tunnelled_to_the_instance_holding_its_slot(make_router) -> None:
    r = await echo_router(make_router)
    service = r.router.registry.get(await r.service_id({"x-waiter-token": "echo"}))
    assert service is not None
    received, sent = r.router.client_traffic.bytes()
    async with r.client.ws_connect(r.url + "/ws", headers={"x-waiter-token": "echo", "x-cid": "ws-1"}) as ws:
        assert ws._response.headers["x-cid"] == "ws-1"
        assert service.reservations.in_flight == 1  # the websocket holds its slot while it is open
        for i in range(3):
            await ws.send_str(f"ping {i}")
            assert await ws.receive_str() == f"echo: ping {i}"
        big = bytes(range(256)) * 12_000  # 3 MB each way (the backend takes up to 4): more than buffers hold
        await ws.send_bytes(big)
        assert await ws.receive_bytes() == big
    await eventually(_async(lambda: service.reservations.in_flight == 0), what="the slot to be released")
    # The tunnel's bytes count in the router's byte counters (/metrics: waiter_received_bytes, waiter_sent_bytes).
    received_now, sent_now = r.router.client_traffic.bytes()
    assert received_now - received > len(big) and sent_now - sent > len(big)


async def test_refused_upgrade_is_answered_as_the_instance_said_and_the_connection_closed(make_router) -> None:
    r = await echo_router(make_router)
    reader, writer = await connect(r)
    writer.write(
        b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        + b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        + TOKEN_LINE
        + b"\r\n"
    )
    resp = await read_response(reader)
    assert resp.status == 200 and resp.body.startswith(b"hello from ")  # the instance's plain answer
    assert resp.headers["connection"] == "close" and resp.headers["x-cid"]
    await close(writer)


async def test_upgrade_to_an_api_path_is_served_as_a_plain_request(make_router) -> None:
    r = await make_router()
    reader, writer = await connect(r)
    writer.write(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    resp = await read_response(reader)
    assert resp.status == 200 and b"shared-state" in resp.body
    assert await closed_by_peer(reader)
    await close(writer)


def _async(pred):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return bool(pred())

    return check


async def test_drain_finishes_requests_in_flight_and_closes_idle_connections(make_router) -> None:
    r = await echo_router(make_router)
    idle_reader, idle_writer = await connect(r)
    idle_writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n" + TOKEN_LINE + b"\r\n")
    assert (await read_response(idle_reader)).status == 200
    reader, writer = await connect(r)
    writer.write(b"GET /sleep?ms=700&id=drained HTTP/1.1\r\nHost: x\r\n" + TOKEN_LINE + b"\r\n")
    await eventually(_async(lambda: r.server.front_door.busy() == 1), what="the slow request in flight")
    stopping = asyncio.create_task(r.server.stop())
    assert await closed_by_peer(idle_reader)  # the idle keep-alive connection goes at once
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", r.server.port)  # no longer accepting
    resp = await read_response(reader)
    assert resp.status == 200 and resp.body == b"slept drained" and resp.headers["connection"] == "close"
    await stopping
    for w in (writer, idle_writer):
        await close(w)


async def test_aiohttp_client_sees_the_same_errors_and_headers(make_router) -> None:
    r = await echo_router(make_router)
    async with r.client.get(r.url + "/", headers={"x-waiter-token": "nope", "accept": "application/json"}) as resp:
        assert resp.status == 404 and resp.content_type == "application/json"
        body = await resp.json()
    assert body["waiter-error"]["cid"] == resp.headers["x-cid"] and body["waiter-error"]["uri"] == "/"
    async with aiohttp.ClientSession() as session:
        headers = {"x-waiter-token": "echo", "x-forwarded-for": "10.0.0.1", "connection": "x-drop", "x-drop": "1"}
        async with session.get(r.url + "/headers", headers=headers) as resp:
            seen = await resp.json()
    assert seen["x-forwarded-for"] == "10.0.0.1, 127.0.0.1" and "x-drop" not in seen


@pytest.mark.parametrize(
    ("url", "path", "query", "target"),
    [
        pytest.param(b"/a/b?x=1&y=2", "/a/b", "x=1&y=2", b"/a/b?x=1&y=2", id="origin-form"),
        pytest.param(b"/a%20b", "/a b", "", b"/a%20b", id="percent-encoded"),
        pytest.param(b"http://h:1/p?q=1", "/p", "q=1", b"/p?q=1", id="absolute-form"),
        pytest.param(b"http://h", "/", "", b"/", id="absolute-form-no-path"),
        pytest.param(b"*", "*", "", b"*", id="asterisk"),
    ],
)
def test_request_target_parts(url: bytes, path: str, query: str, target: bytes) -> None:
    req = Request()
    req.url = url
    assert (req.path, req.query_string, req.target) == (path, query, target)


@pytest.mark.parametrize(
    ("keep_alive", "head_only", "ends_with"),
    [
        pytest.param(True, False, b"\r\n\r\nbody", id="keep-alive"),
        pytest.param(False, False, b"Connection: close\r\n\r\nbody", id="close"),
        pytest.param(True, True, b"Content-Length: 4\r\n\r\n", id="head"),
    ],
)
def test_error_response_framing(keep_alive: bool, head_only: bool, ends_with: bytes) -> None:
    rendered = RenderedError(503, "text/plain; charset=utf-8", b"body", {"x-cid": "c"})
    raw = error_response(rendered, keep_alive, head_only)
    assert raw.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") and raw.endswith(ends_with)
    assert b"x-cid: c\r\n" in raw and b"Content-Length: 4\r\n" in raw
