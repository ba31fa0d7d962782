"""The router's public HTTP/1.1 server: proxied requests served natively on asyncio.Protocol and httptools.

aiohttp's server half cost more CPU per request than everything else the router does, so the hot path — a request
for a service — is served here end to end, with Router.handle's and Proxy.handle's behaviour (through their shared
helpers): x-cid, x-forwarded-for, header rules, timeouts, retries, 502/504, bodies streamed both ways with flow
control. What the router answers itself (the admin API) is relayed to the aiohttp app (waiter.app) on a private
loopback port through the upstream pool, and protocol upgrades (websockets) are tunnelled to it byte for byte, so
that API and the websocket proxy keep their one implementation (waiter.exchange does the three).

This module is the connection: parsing (with head size limits: 414, 431, 400), one request served at a time in
order (pipelined ones wait, reading paused), keep-alive and its idle timeout, half-closed clients, drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from typing import cast

import httptools

from waiter import exchange
from waiter.debug import DebugInfo, add_to_error, wants_debug
from waiter.errors import WaiterError, internal_error, render_error_parts
from waiter.http1 import (
    ENC,
    ERRORS,
    SPECIAL,
    BadRequest,
    ErrorView,
    Request,
    RequestBody,
    Tunnel,
    error_response,
)
from waiter.proxy import timeouts
from waiter.router import Router, new_cid
from waiter.service import Timeouts
from waiter.text import printable
from waiter.upstream import UpstreamPool

log = logging.getLogger(__name__)

MAX_URL = 64 * 1024
MAX_FIELD = 64 * 1024  # one header, name and value: aiohttp's max_field_size in waiter.app
MAX_HEAD = 256 * 1024
# Reasons reading from a client is paused (bits): a body backlog, requests waiting their turn, a tunnel, a fault.
_BODY, _PIPELINE, _TUNNEL, _STOPPED = 1, 2, 4, 8


class FrontDoor:
    """The server's shared state; called, it makes the protocol of a new connection."""

    def __init__(
        self, router: Router, pool: UpstreamPool, internal: tuple[str, int], *, idle_timeout: float = 75.0
    ) -> None:
        if not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be a positive number of seconds, got {idle_timeout!r}.")
        self.router = router
        self.pool = pool
        self.internal = internal
        self.idle_timeout = idle_timeout
        self.connections: set[Connection] = set()
        self.draining = False
        self._emptied: asyncio.Event | None = None

    def __call__(self) -> Connection:
        return Connection(self)

    def busy(self) -> int:
        """How many connections have a request in progress."""
        return sum(1 for conn in self.connections if conn.active is not None)

    async def drain(self, timeout: float) -> None:
        """Close idle connections now and the others after their current response; abort what is left after
        ``timeout`` seconds. Stop accepting first (close the listening socket)."""
        self.draining = True
        self._emptied = asyncio.Event()
        for conn in list(self.connections):
            conn.close_if_idle()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._emptied.wait()
        for conn in list(self.connections):
            log.warning("aborting a connection still busy after the %g s drain timeout", timeout)
            conn.transport.abort()

    def _forget(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if not self.connections and self._emptied is not None:
            self._emptied.set()


class Connection(asyncio.Protocol):
    """One client connection: parses requests (it is also the httptools callback object) and serves them in order."""

    transport: asyncio.Transport

    def __init__(self, door: FrontDoor) -> None:
        self.door = door
        self.loop = asyncio.get_running_loop()
        self.peer = b""
        self.active: Request | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._parsing: Request | None = None
        self._queue: deque[Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None  # the idle task waits on it for the next request
        self._paused = 0
        self._in_head = False
        self._head_bytes = self._fields_size = 0  # raw bytes of an unfinished head; sizes of its headers
        self._write_paused = self._closed = self._eof = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._last_io = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._tunnel: Tunnel | None = None
        self._responded = False  # the current request's response head is written

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]).encode() if isinstance(peer, tuple) else b""
        self.door.connections.add(self)
        self._last_io = self.loop.time()
        self._idle_timer = self.loop.call_later(self.door.idle_timeout, self._check_idle)
        if self.door.draining:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.transport.write(data)
            return
        if self._paused & _STOPPED:
            if self._parsing is not None and self._parsing.upgrade:
                self._parsing.tail.append(data)  # an upgrade waiting for its tunnel
            return
        self._last_io = self.loop.time()
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgraded(data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, BadRequest):
                self._fault(cause)
            else:
                self._fault(BadRequest(400, f"The request is not valid HTTP/1.1: {exc}."))
        else:
            if self._in_head and self._head_bytes > MAX_HEAD:
                self._fault(BadRequest(431, f"The request head is larger than the limit of {MAX_HEAD} bytes."))

    def eof_received(self) -> bool:
        self._eof = True
        if self._tunnel is not None:
            if self._tunnel.transport.can_write_eof():
                self._tunnel.transport.write_eof()
            return True
        if self._parsing is not None and self._parsing.body is not None:
            self._parsing.body.fail(ConnectionResetError("The client closed its side before the body was complete."))
        # Half-closed: still answer the requests already received, then close.
        return self.active is not None or bool(self._queue)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.door._forget(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        gone = ConnectionResetError("The client closed the connection.")
        for req in (self.active, self._parsing, *self._queue):
            if req is not None and req.body is not None:
                req.body.fail(gone)
        self._queue.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()  # releases the slot and the backend connection on its way out
        self._wake_drain()
        if self._tunnel is not None and not self._tunnel.transport.is_closing():
            self._tunnel.transport.close()

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._tunnel is not None:
            self._tunnel.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()
        if self._tunnel is not None and not self._tunnel.transport.is_closing():
            self._tunnel.transport.resume_reading()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._parsing = Request()
        self._in_head, self._head_bytes, self._fields_size = True, 0, 0

    def on_url(self, url: bytes) -> None:
        req = self._parsing
        assert req is not None
        req.url += url
        if len(req.url) > MAX_URL:
            raise BadRequest(414, f"The request target is longer than the limit of {MAX_URL} bytes.")

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self._parsing
        assert req is not None
        size = len(name) + len(value)
        if size > MAX_FIELD:
            raise BadRequest(
                431, f"The header {name.decode(ENC, ERRORS)} is larger than the limit of {MAX_FIELD} bytes."
            )
        self._fields_size += size
        if self._fields_size > MAX_HEAD:
            raise BadRequest(431, f"The request head is larger than the limit of {MAX_HEAD} bytes.")
        lname = name.lower()
        req.headers.append((name, value, lname))
        if lname[:9] == b"x-waiter-":
            req.waiter.append((lname.decode(ENC, ERRORS), value.decode(ENC, ERRORS)))
        elif lname in SPECIAL:
            known = req.special.get(lname)
            if known is None:
                req.special[lname] = value
            elif lname == b"connection":
                req.special[lname] = known + b", " + value

    def on_headers_complete(self) -> None:
        req = self._parsing
        assert req is not None
        parser = self._parser
        self._in_head = False
        req.method = parser.get_method()
        req.http11 = parser.get_http_version() == "1.1"
        req.keep_alive = parser.should_keep_alive()
        special = req.special
        chunked = b"chunked" in special.get(b"transfer-encoding", b"").lower()
        length = special.get(b"content-length")
        if not chunked and length is not None:
            req.content_length = int(length)
        if chunked or (req.content_length or 0) > 0:
            expect = special.get(b"expect", b"").lower() == b"100-continue"
            req.body = RequestBody(self._pause_body, self._write_continue, expect)
        if parser.should_upgrade():
            req.upgrade = True
            return  # queued once the parser hands over the bytes after the head (HttpParserUpgrade)
        self._enqueue(req)

    def on_body(self, body: bytes) -> None:
        req = self._parsing
        assert req is not None and req.body is not None
        req.body.feed(body)

    def on_message_complete(self) -> None:
        req = self._parsing
        assert req is not None
        if req.body is not None:
            req.body.finish()
        if not req.upgrade:
            self._parsing = None

    # the request pipeline

    def _enqueue(self, req: Request) -> None:
        if self.active is not None:
            self._queue.append(req)
            self._pause(_PIPELINE, True)
            return
        self.active, self._responded = req, False
        # One task serves the connection's requests in turn: waking it costs less than a task per request.
        if self._task is None:
            self._task = self.loop.create_task(self._run())
        elif self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    def _upgraded(self, tail: bytes) -> None:
        req = self._parsing
        if req is None or not req.upgrade:
            self._fault(BadRequest(400, "The request asked for a protocol upgrade the router could not follow."))
            return
        # The parser stops at an upgrade: from here on the connection's bytes belong to the tunnel.
        if tail:
            req.tail.append(tail)
        self._pause(_STOPPED, True)
        self._enqueue(req)

    def _fault(self, fault: BadRequest) -> None:
        """Stop parsing; answer ``fault`` after the requests already received, then close."""
        req, self._parsing = self._parsing, None
        self._pause(_STOPPED, True)
        if req is not None and not self._in_head:
            # Its head was fine and it is served already (or queued): its body is what broke, so it cannot end.
            if req.body is not None:
                req.body.fail(ConnectionResetError(fault.message))
            return
        req = req or Request()
        req.fault, req.keep_alive = fault, False
        self._enqueue(req)

    async def _run(self) -> None:
        try:
            while True:
                req = self.active
                if req is None:
                    self._ready = self.loop.create_future()
                    await self._ready
                    continue
                try:
                    await self._handle(req)
                except ConnectionResetError:
                    return
                except Exception:
                    log.exception("front door failed serving %s %s", req.method_str(), printable(req.path))
                    self.transport.abort()
                    return
                if not self._finished(req):
                    return
        except asyncio.CancelledError:
            if not self._closed:
                raise  # the client left: nothing else to do
        finally:
            self._task = self._ready = None

    def _finished(self, req: Request) -> bool:
        """Move on to the next request; False when the connection is closing."""
        self.active = None
        if self._closed:
            return False
        self._last_io = self.loop.time()
        if not req.keep_alive or self.door.draining or (req.body is not None and not req.body.done):
            self.transport.close()
            return False
        if self._queue:
            self.active, self._responded = self._queue.popleft(), False
            if not self._queue:
                self._pause(_PIPELINE, False)
        elif self._eof:
            self.transport.close()
            return False
        return True

    def close_if_idle(self) -> None:
        if self.active is None and not self._closed:
            self.transport.close()

    def _check_idle(self) -> None:
        timeout = self.door.idle_timeout
        if self.active is not None:
            self._idle_timer = self.loop.call_later(timeout, self._check_idle)
            return
        idle_for = self.loop.time() - self._last_io
        if idle_for >= timeout:
            self._idle_timer = None
            self.transport.close()
        else:
            self._idle_timer = self.loop.call_later(timeout - idle_for, self._check_idle)

    # flow control and writing

    def _pause(self, reason: int, on: bool) -> None:
        before = self._paused
        self._paused = before | reason if on else before & ~reason
        if self._closed or bool(before) == bool(self._paused):
            return
        if self._paused:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def _pause_body(self, on: bool) -> None:
        self._pause(_BODY, on)

    def _write_continue(self, data: bytes) -> None:
        if not self._closed:
            self.transport.write(data)

    # what waiter.exchange writes through

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    def write(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionResetError("The client closed the connection.")
        self.transport.write(data)

    def write_head(self, data: bytes) -> None:
        """Write a response head (and maybe its body): from here on an error can only close the connection."""
        self.write(data)
        self._responded = True

    def start_tunnel(self, tunnel: Tunnel) -> None:
        """From now on the client's bytes go to ``tunnel`` and back (the app answers the upgrade itself)."""
        self._tunnel = tunnel
        self._responded = True
        if self._write_paused:
            tunnel.transport.pause_reading()
        self._pause(_STOPPED | _PIPELINE | _BODY | _TUNNEL, False)

    async def drain(self) -> None:
        while self._write_paused and not self._closed:
            waiter = self._drain_waiter = self.loop.create_future()
            await waiter
        if self._closed:
            raise ConnectionResetError("The client closed the connection.")

    def _wake_drain(self) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # serving one request

    async def _handle(self, req: Request) -> None:
        if req.fault is not None:
            err = WaiterError(req.fault.status, req.fault.message)
            self.write(self._error_bytes(req, err, new_cid().encode()))
            return
        cid = req.special.get(b"x-cid") or new_cid().encode()
        waiter = tuple(req.waiter)
        host = req.host()
        router = self.door.router
        received_at = time.time() if waiter else 0.0
        limits: Timeouts | None = None
        try:
            if req.upgrade:
                await exchange.tunnel_to_app(self, req)
            elif router.is_api(req.path, host or "", waiter):
                await exchange.relay(self, req)
            else:
                service, options = router.service_for(waiter, host)
                limits = timeouts(options, service.timeouts)
                await exchange.proxy(self, req, service, options, cid)
        except WaiterError as err:
            if wants_debug(waiter):
                protocol = "HTTP/1.1" if req.http11 else "HTTP/1.0"
                rid = router.settings.router_id
                add_to_error(err, DebugInfo(rid, cid.decode(ENC, ERRORS), received_at, protocol, limits=limits))
            self._answer_error(req, err, cid)
        except ConnectionResetError:
            raise
        except Exception:
            if self._responded:
                raise  # the head is out: _run logs it and closes the connection
            text = printable(cid.decode(ENC, ERRORS))
            log.exception("internal error on %s %s (cid %s)", req.method_str(), printable(req.path), text)
            self._answer_error(req, internal_error(text), cid)

    def _answer_error(self, req: Request, err: WaiterError, cid: bytes) -> None:
        if self._closed:
            return
        if req.body is not None and not req.body.done:
            req.keep_alive = False  # the unread rest of the body would be taken for the next request
        self.write(self._error_bytes(req, err, cid))

    def _error_bytes(self, req: Request, err: WaiterError, cid: bytes) -> bytes:
        keep_alive = req.keep_alive and not self.door.draining
        rendered = render_error_parts(ErrorView(req), err, cid.decode(ENC, ERRORS))
        return error_response(rendered, keep_alive, req.method == b"HEAD")
