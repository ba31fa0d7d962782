"""One request's exchange through the front door (waiter.frontdoor): proxied to a service's backend, relayed to
the aiohttp app (the admin API), or tunnelled to it (protocol upgrades).

Proxying keeps Proxy.handle's behaviour through its shared helpers (waiter.proxy): slot and retries, header rules,
timeouts, 502/504. Responses are framed for the client: Content-Length as the backend gave it, else chunked (HTTP/1.1)
or delimited by closing the connection (HTTP/1.0). Bodies up to SMALL_BODY go out with the head in one write; larger
ones are streamed as they arrive, waiting while the client's transport is paused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from waiter.descriptor import RequestOptions
from waiter.errors import WaiterError
from waiter.http1 import CRLF, ENC, ERRORS, HOP_BYTES, PROXY_DROP, RESPONSE_DROP_CID, Request, Tunnel
from waiter.proxy import (
    NO_BODY_STATUSES,
    SMALL_BODY,
    Timing,
    backend_failure,
    backend_timeout,
    open_upstream,
    timeouts,
)
from waiter.scheduler.base import Instance
from waiter.service import Service
from waiter.upstream import Chunk, UpstreamError, UpstreamResponse, UpstreamTimeout

if TYPE_CHECKING:
    from waiter.frontdoor import Connection

log = logging.getLogger(__name__)

# Requests relayed to the aiohttp app may wait long (a service's queue behind /waiter-ping, a kill with timeout).
RELAY_TIMEOUT = 900.0


async def proxy(conn: Connection, req: Request, service: Service, options: RequestOptions, cid: bytes) -> None:
    """A service's request: a slot, the backend's answer streamed back (Proxy.handle's behaviour)."""
    limits = timeouts(options, service.timeouts)
    head, has_host = _forward_head(conn, req, cid)
    body = req.body.stream() if req.body is not None else None
    head_only, idle, length = req.method == b"HEAD", limits.socket_ms / 1000, req.content_length
    send = conn.door.pool.send
    timing = Timing() if options.debug else None

    def send_to(instance: Instance) -> Awaitable[UpstreamResponse]:
        if timing is not None:
            timing.sent()
        host, port = instance.host, instance.port
        full = head + CRLF if has_host else head + b"Host: %s:%d\r\n\r\n" % (host.encode(), port)
        return send(host, port, full, body, head_only=head_only, idle_timeout=idle, content_length=length)

    instance, upstream, taken = await open_upstream(service, limits, send_to)
    try:
        extra = b"x-cid: " + cid + CRLF
        if timing is not None:
            router_id = conn.door.router.settings.router_id
            extra += _header_lines(timing.headers(router_id, cid.decode(ENC, ERRORS), service, limits, instance))
        upstream.idle_timeout = limits.streaming_ms / 1000

        def fail(exc: UpstreamError) -> WaiterError:
            if isinstance(exc, UpstreamTimeout):
                return backend_timeout(service, instance)
            return backend_failure(service, instance, exc)

        await _respond(conn, req, upstream, extra, RESPONSE_DROP_CID, fail)
    finally:
        upstream.release()
        service.done(instance.id, taken)


def _forward_head(conn: Connection, req: Request, cid: bytes) -> tuple[bytes, bool]:
    """The head for the backend without its final CRLF, and whether it has a Host header."""
    extra = req.connection_tokens() if b"connection" in req.special else None
    parts = [req.method, b" ", req.target, b" HTTP/1.1\r\n"]
    for name, value, lname in req.headers:
        if lname in PROXY_DROP or lname[:9] == b"x-waiter-" or (extra and lname in extra):
            continue
        parts += (name, b": ", value, CRLF)
    previous = req.special.get(b"x-forwarded-for")
    forwarded = previous + b", " + conn.peer if previous else conn.peer
    parts += (b"x-forwarded-for: ", forwarded, b"\r\nx-cid: ", cid, CRLF, req.framing())
    return b"".join(parts), b"host" in req.special


async def relay(conn: Connection, req: Request) -> None:
    """The admin API: the request as received, less hop-by-hop headers, to the aiohttp app, and its answer back."""
    extra = req.connection_tokens() if b"connection" in req.special else None
    parts = [req.method, b" ", req.url, b" HTTP/1.1\r\n"]
    for name, value, lname in req.headers:
        if lname in HOP_BYTES or (extra and lname in extra):
            continue
        parts += (name, b": ", value, CRLF)
    if b"host" not in req.special:
        parts.append(b"Host: %s:%d\r\n" % (conn.door.internal[0].encode(), conn.door.internal[1]))
    parts += (req.framing(), CRLF)
    host, port = conn.door.internal
    body = req.body.stream() if req.body is not None else None
    try:
        upstream = await conn.door.pool.send(
            host,
            port,
            b"".join(parts),
            body,
            head_only=req.method == b"HEAD",
            idle_timeout=RELAY_TIMEOUT,
            content_length=req.content_length,
        )
    except UpstreamError as exc:
        raise _relay_failure(exc) from None
    try:
        await _respond(conn, req, upstream, b"", HOP_BYTES, _relay_failure)
    finally:
        upstream.release()


async def _respond(
    conn: Connection,
    req: Request,
    upstream: UpstreamResponse,
    extra: bytes,
    drop: frozenset[bytes],
    fail: Callable[[UpstreamError], WaiterError],
) -> None:
    """Write the response head (with ``extra`` lines) and stream the body, framed for this client."""
    status, length = upstream.status, upstream.content_length
    parts: list[Chunk] = [b"HTTP/1.1 %d %s\r\n" % (status, upstream.raw_reason)]
    for name, value in upstream.raw_headers:
        if name.lower() not in drop:
            parts += (name, b": ", value, CRLF)
    parts.append(extra)
    if req.method == b"HEAD" or status in NO_BODY_STATUSES or status < 200:
        if length is not None:
            parts.append(b"content-length: %d\r\n" % length)
        _end_head(conn, req, parts, True)
        conn.write_head(b"".join(parts))
        return
    if length is not None and length <= SMALL_BODY:
        body = upstream.complete_body()
        if body is None:
            try:
                body = await _read_small(upstream)
            except UpstreamError as exc:
                raise fail(exc) from None
        parts.append(b"content-length: %d\r\n" % length)
        _end_head(conn, req, parts, True)
        parts += body
        conn.write_head(b"".join(parts))
        return
    chunked = length is None and req.http11
    if length is not None:
        parts.append(b"content-length: %d\r\n" % length)
    elif chunked:
        parts.append(b"transfer-encoding: chunked\r\n")
    _end_head(conn, req, parts, length is not None or chunked)
    conn.write_head(b"".join(parts))
    await _stream_body(conn, req, upstream, chunked)


def _end_head(conn: Connection, req: Request, parts: list[Chunk], delimited: bool) -> None:
    """Close the head: Connection as this exchange ends (a body that ends with the connection closes it)."""
    keep = req.keep_alive = (
        req.keep_alive and delimited and not conn.door.draining and (req.body is None or req.body.done)
    )
    if not keep:
        parts.append(b"connection: close\r\n\r\n")
    else:
        parts.append(CRLF if req.http11 else b"connection: keep-alive\r\n\r\n")


async def _stream_body(conn: Connection, req: Request, upstream: UpstreamResponse, chunked: bool) -> None:
    transport = conn.transport
    try:
        while pieces := await upstream.read_parts():
            if conn.closed:
                raise ConnectionResetError("The client closed the connection.")
            if chunked:
                framed: list[Chunk] = []
                for piece in pieces:
                    framed += (b"%x\r\n" % len(piece), piece, CRLF)
                transport.writelines(framed)
            else:
                transport.writelines(pieces)
            if conn.write_paused:
                await conn.drain()
    except UpstreamError as exc:
        # The head is gone already: the only honest signal left is to end the response without its final
        # chunk (or short of its length), so the client sees a broken body, never a hang.
        log.warning("backend broke off the response to %s: %s", req.path, exc)
        req.keep_alive = False
        transport.close()
        return
    if chunked:
        conn.write(b"0\r\n\r\n")


async def tunnel_to_app(conn: Connection, req: Request) -> None:
    """Hand the rest of the connection to the aiohttp app: the head as received, then bytes both ways."""
    host, port = conn.door.internal
    tunnel = Tunnel(conn.transport, conn.peer.decode(), conn.door.router.relayed_peers)
    try:
        await conn.loop.create_connection(lambda: tunnel, host, port)
    except OSError as exc:
        req.keep_alive = False
        raise _relay_failure(exc) from None
    req.keep_alive = False
    tunnel.transport.write(req.head_as_received() + b"".join(req.tail))
    req.tail.clear()
    conn.start_tunnel(tunnel)
    try:
        await asyncio.shield(tunnel.closed)
    finally:
        if not tunnel.transport.is_closing():
            tunnel.transport.close()


def _relay_failure(exc: BaseException) -> WaiterError:
    return WaiterError(502, f"The router's own API server could not answer: {exc}")


def _header_lines(headers: list[tuple[str, str]]) -> bytes:
    return "".join(f"{name}: {value}\r\n" for name, value in headers).encode(ENC, ERRORS)


async def _read_small(upstream: UpstreamResponse) -> list[Chunk]:
    body: list[Chunk] = []
    while pieces := await upstream.read_parts():
        body += pieces
    return body
