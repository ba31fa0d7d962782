"""The front door's handler (waiter.frontdoor): routes a request and carries out its exchange — forwarded to an
instance of its service, relayed to the aiohttp app (the admin API), or tunnelled to it (protocol upgrades).

Forwarding follows waiter.forwarding's rules: slot and retries, header rules, timeouts, 502/504. Responses are
framed for the client: Content-Length as the backend gave it, else chunked (HTTP/1.1) or delimited by closing the
connection (HTTP/1.0). Bodies up to SMALL_BODY go out with the head in one write; larger ones are streamed as they
arrive, waiting while the client's transport is paused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable

from waiter.access_log import AccessLog
from waiter.async_requests import (
    DEFAULT_CHECK_INTERVAL_SECS,
    DEFAULT_TIMEOUT_SECS,
    MAX_TIMEOUT_SECS,
    backend_location,
    status_path,
)
from waiter.auth import Admission
from waiter.auth.cookie import AUTH_COOKIE, strip_auth_cookie
from waiter.auth.stamp import INTERNAL_PREFIX
from waiter.client_connection import Connection
from waiter.debug import DebugInfo, add_to_error, wants_debug
from waiter.descriptor import RequestOptions
from waiter.errors import WaiterError
from waiter.forwarding import (
    HOP_BY_HOP,
    NO_BODY_STATUSES,
    REQUEST_DROP,
    RESPONSE_DROP,
    RESPONSE_DROP_101,
    SMALL_BODY,
    UPGRADE_DROP,
    Timing,
    backend_error,
    connection_tokens,
    new_cid_bytes,
    open_upstream,
    timeouts,
)
from waiter.handoff import Handoff
from waiter.http1 import CRLF, ENC, ERRORS, AuthView, Request, Tunnel, empty_response
from waiter.interstitial import BYPASS_BYTES
from waiter.router import Router
from waiter.scheduler.base import Instance
from waiter.service import Service, Timeouts
from waiter.upstream import (
    Chunk,
    ConnectError,
    UpstreamClosed,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
)
from waiter.version import SERVER_HEADER

log = logging.getLogger(__name__)

# A proxied request as the access log records it: instance id, when its slot was taken (time.monotonic()),
# seconds it held the slot, the backend's status.
Served = tuple[str, float, float, int]

# What the access log says of a request whose client left before its answer (nginx's 499; docs/api.md §4).
CLIENT_CLOSED = 499

# Requests relayed to the aiohttp app may wait long (a service's queue behind /waiter-ping, a kill with timeout).
RELAY_TIMEOUT = 900.0


def _async_location(upstream: UpstreamResponse, req: Request) -> str | None:
    """The backend path of a 202's relative Location (None when it has none, or an absolute one)."""
    location = next((v for k, v in upstream.raw_headers if k.lower() == b"location"), None)
    if location is None:
        return None
    return backend_location(location.decode(ENC, ERRORS), req.target.decode(ENC, ERRORS).split("?", 1)[0])


def _interstitial(router: Router, req: Request, service: Service) -> None:
    """Send a browser to the starting page, or let the request through without the gate's bypass parameter."""
    accept = req.special.get(b"accept", b"").decode(ENC, ERRORS)
    decided = router.interstitial(service, accept, req.target)
    if decided.redirect is not None:
        raise WaiterError(
            303,
            f"{service.id} is starting; see {decided.redirect}",
            service_id=service.id,
            headers={"location": decided.redirect, "x-waiter-interstitial": "true"},
        )
    req.url = decided.url


class Dispatcher:
    """Serves one request for the front door: the router's own (admin API) or a service's (docs/api.md §0.2)."""

    def __init__(
        self,
        router: Router,
        pool: UpstreamPool,
        internal: tuple[str, int],
        access: AccessLog | None = None,
        handoff: Handoff | None = None,
    ) -> None:
        self.router = router
        self.pool = pool
        self.internal = internal  # the aiohttp app's loopback address
        self.access = access
        self.handoff = handoff  # sibling routers of this machine, which take requests for the slots they hold

    async def __call__(self, conn: Connection, req: Request) -> None:
        cid = req.special.get(b"x-cid") or new_cid_bytes()
        waiter = tuple(req.waiter)
        host = req.host()
        router = self.router
        received_at = time.time() if waiter else 0.0
        limits: Timeouts | None = None
        service: Service | None = None
        served: Served | None = None
        status = 0
        access = self.access
        if access is not None:
            arrived, sent = time.monotonic(), conn.sent
        try:
            path, method = req.path, req.method_str()
            api = router.is_api(path, host or "", waiter)
            handoff = self.handoff
            if handoff is not None and handoff.holders and not api and self._handed_off(conn, req, waiter, host):
                access = None  # the sibling serves it (authentication included) and logs it
                return
            view = AuthView(req, conn.peer)
            url = req.url.decode(ENC, ERRORS)
            # Authentication (and the API's authorization) first, for every request: waiter.router.Router.admit.
            admission = router.admit_now(view, method, path, url, api, waiter, host)
            if admission is None:
                admission = await router.admit(view, method, path, url, api, waiter, host)
            if admission.answer is not None:
                status = admission.answer[0]
                _answer(conn, req, *admission.answer, cid)
            elif api:
                if req.upgrade:
                    req.keep_alive = False  # the bytes after an upgrade request's head are not HTTP
                status = await self.relay(conn, req, admission)
            else:
                service, options = router.service_for(waiter, host, admission.caller)
                limits = timeouts(options, service.timeouts)
                # find(), not ``in``: bytes.__contains__ first tries its operand as an integer and formats the
                # TypeError that fails, every time.
                if service.interstitial_secs or req.url.find(BYPASS_BYTES) >= 0:
                    _interstitial(router, req, service)
                if req.upgrade:
                    await self.upgrade(conn, req, service, options, cid, admission)
                    status = 101
                else:
                    served = await self.proxy(conn, req, service, options, limits, cid, admission)
                    status = served[3]
        except WaiterError as err:
            status = err.status
            if service is not None:
                service.responses[min(status // 100, 5)] += 1
            if wants_debug(waiter):
                protocol = "HTTP/1.1" if req.http11 else "HTTP/1.0"
                rid = router.settings.router_id
                add_to_error(err, DebugInfo(rid, cid.decode(ENC, ERRORS), received_at, protocol, limits=limits))
            conn.answer_error(req, err, cid)
        except (ConnectionResetError, asyncio.CancelledError):
            # Cut short: by the client (499 before the head), or after a head was written (the drain's 503, or a
            # response the client stopped reading), which the access log reports as answered.
            status = conn.answered_status if conn.responded else CLIENT_CLOSED
            raise
        finally:
            if access is not None:
                access.write(
                    access.line(
                        cid=cid.decode(ENC, ERRORS),
                        method=req.method_str(),
                        path=req.path,
                        service=service,
                        instance_id=served[0] if served else None,
                        status=status,
                        sent=conn.sent - sent,
                        arrived=arrived,
                        taken=served[1] if served else None,
                        held=served[2] if served else None,
                    )
                )

    def _handed_off(
        self, conn: Connection, req: Request, waiter: tuple[tuple[str, str], ...], host: str | None
    ) -> bool:
        """Whether the connection went to the sibling holding the slots of the request's service (waiter.handoff),
        decided before authentication, which the sibling does: by the service its tokens name, as far as that is
        known without the caller (a service that depends on who calls is served here)."""
        assert self.handoff is not None
        resolved = self.router.before_auth(waiter, host)
        if resolved is None:
            return False
        service = self.router.registry.get(resolved.service_id)
        held = service.reservations.capacity if service is not None else 0
        return self.handoff.offer(conn, req, resolved.service_id, held)

    async def proxy(
        self,
        conn: Connection,
        req: Request,
        service: Service,
        options: RequestOptions,
        limits: Timeouts,
        cid: bytes,
        admission: Admission,
    ) -> Served:
        """A service's request: a slot, the backend's answer streamed back. Returns what the access log says."""
        head, has_host = _forward_head(conn, req, cid, admission)
        body = req.body.stream() if req.body is not None else None
        head_only, idle, length = req.method == b"HEAD", limits.socket_ms / 1000, req.content_length
        send = self.pool.send
        timing = Timing() if options.debug else None

        def send_to(instance: Instance) -> Awaitable[UpstreamResponse]:
            if timing is not None:
                timing.sent()
            host, port = instance.host, instance.port
            full = head + CRLF if has_host else head + b"Host: %s:%d\r\n\r\n" % (host.encode(), port)
            return send(host, port, full, body, head_only=head_only, idle_timeout=idle, content_length=length)

        instance, upstream, taken = await open_upstream(service, limits, send_to, conn.abandonable)
        pending: str | None = None  # the backend's status path of an async request (it keeps the slot)
        try:
            try:
                extra = b"x-cid: " + cid + CRLF + admission.response_lines
                if timing is not None:
                    router_id, text_cid = self.router.settings.router_id, cid.decode(ENC, ERRORS)
                    extra += _header_lines(timing.headers(router_id, text_cid, service, limits, instance))
                upstream.idle_timeout = limits.streaming_ms / 1000
                drop = RESPONSE_DROP
                if upstream.status == 202:
                    pending = _async_location(upstream, req)
                    if pending is not None:
                        rid, text_cid = self.router.settings.router_id, cid.decode(ENC, ERRORS)
                        path = status_path(text_cid, rid, service.id, instance.host, instance.port, pending)
                        extra += b"location: " + path.encode(ENC, ERRORS) + CRLF
                        drop = RESPONSE_DROP | {b"location"}
                await _respond(conn, req, upstream, extra, drop, service, instance)
            finally:
                upstream.release()  # what ``async with upstream`` does, without two coroutines per request
        finally:
            if pending is None:
                held = service.done(instance.id, taken, upstream.status)
            else:
                held = time.monotonic() - taken
                self._hold(service, instance, taken, cid.decode(ENC, ERRORS), pending, options)
        return instance.id, taken, held, upstream.status

    def _hold(
        self,
        service: Service,
        instance: Instance,
        taken: float,
        request_id: str,
        location: str,
        options: RequestOptions,
    ) -> None:
        """The backend works on after its 202: keep the slot until its status URL says it is done."""
        pool, router = self.pool, self.router

        async def check(path: str) -> int:
            if await router.async_completed_elsewhere(request_id):
                return 0
            try:
                response = await pool.request(instance.host, instance.port, "GET", path, [], None, idle_timeout=30.0)
                async with response:
                    return response.status
            except (UpstreamError, OSError):
                return 0

        timeout = min(options.async_request_timeout_secs or DEFAULT_TIMEOUT_SECS, MAX_TIMEOUT_SECS)
        self.router.async_holds.hold(
            request_id,
            location,
            check,
            lambda: service.done(instance.id, taken, 202),
            interval=options.async_check_interval_secs or DEFAULT_CHECK_INTERVAL_SECS,
            timeout=timeout,
        )

    async def relay(self, conn: Connection, req: Request, admission: Admission) -> int:
        """The admin API: the request as received, less hop-by-hop headers, to the aiohttp app, and its answer back.

        The request is stamped with who the front door authenticated (waiter.auth.stamp); client-supplied copies of
        the stamp's headers are dropped."""
        extra = connection_tokens(req.special.get(b"connection"))
        parts = [req.method, b" ", req.url, b" HTTP/1.1\r\n"]
        for name, value, lname in req.headers:
            if lname in HOP_BY_HOP or lname in extra or lname.startswith(INTERNAL_PREFIX):
                continue
            parts += (name, b": ", value, CRLF)
        parts.append(self.router.stamp.lines(admission.caller))
        host, port = self.internal
        if b"host" not in req.special:
            parts.append(b"Host: %s:%d\r\n" % (host.encode(), port))
        parts += (req.framing(), CRLF)
        body = req.body.stream() if req.body is not None else None
        try:
            upstream = await self.pool.send(
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
        async with upstream:
            await _respond(conn, req, upstream, admission.response_lines, HOP_BY_HOP)
        return upstream.status

    async def upgrade(
        self,
        conn: Connection,
        req: Request,
        service: Service,
        options: RequestOptions,
        cid: bytes,
        admission: Admission,
    ) -> None:
        """A protocol upgrade (a websocket) for a service: its slot is held while the instance's ``101`` and then
        the connection's bytes pass both ways. An instance that refuses the upgrade is answered as it said."""
        req.keep_alive = False
        if req.body is not None:
            raise WaiterError(400, "A protocol upgrade request with a body is not supported; send it without one.")
        limits = timeouts(options, service.timeouts)
        head, has_host = _forward_head(conn, req, cid, admission, upgrade=True)
        loop, connect_timeout, head_timeout = conn.loop, self.pool.connect_timeout, limits.socket_ms / 1000
        timing = Timing() if options.debug else None

        async def open_tunnel(instance: Instance) -> Tunnel:
            if timing is not None:
                timing.sent()
            host, port = instance.host, instance.port
            tunnel = Tunnel(conn.transport, conn.count_sent)
            try:
                async with asyncio.timeout(connect_timeout):
                    await loop.create_connection(lambda: tunnel, host, port)
            except (OSError, TimeoutError) as exc:
                raise ConnectError(f"Could not connect to {host}:{port}: {exc or 'timed out'}.") from None
            full = head + CRLF if has_host else head + b"Host: %s:%d\r\n\r\n" % (host.encode(), port)
            tunnel.transport.write(full + b"".join(req.tail))
            req.tail.clear()
            try:
                async with asyncio.timeout(head_timeout):
                    await tunnel.head
            except TimeoutError:
                tunnel.transport.abort()
                raise UpstreamTimeout(f"The backend sent no response head for {head_timeout:g} s.") from None
            except ConnectionResetError as exc:
                tunnel.transport.abort()
                raise UpstreamClosed(str(exc)) from None
            return tunnel

        instance, tunnel, taken = await open_upstream(service, limits, open_tunnel, conn.abandonable)
        try:
            drop = RESPONSE_DROP_101 if tunnel.upgraded else RESPONSE_DROP
            parts = [b"HTTP/1.1 %d %s\r\n" % (tunnel.status, tunnel.reason)]
            for name, value in tunnel.headers:
                if name.lower() not in drop:
                    parts += (name, b": ", value, CRLF)
            parts += (b"x-cid: ", cid, CRLF, admission.response_lines)
            if timing is not None:
                router_id = self.router.settings.router_id
                parts.append(
                    _header_lines(timing.headers(router_id, cid.decode(ENC, ERRORS), service, limits, instance))
                )
            # A refused upgrade's body is passed on de-chunked, so it ends with the connection.
            parts.append(CRLF if tunnel.upgraded else b"connection: close\r\n\r\n")
            conn.write_head(b"".join(parts))
            if tunnel.upgraded:
                conn.start_tunnel(tunnel)
            tunnel.start()
            await asyncio.shield(tunnel.closed)
        finally:
            if not tunnel.transport.is_closing():
                tunnel.transport.close()
            service.done(instance.id, taken, tunnel.status)


_AUTH_COOKIE = AUTH_COOKIE.encode()


def _answer(conn: Connection, req: Request, status: int, headers: tuple[tuple[str, str], ...], cid: bytes) -> None:
    """A response without a body that the router makes before anything else (CORS preflight, https redirect)."""
    if (req.body is not None and not req.body.done) or req.upgrade:
        req.keep_alive = False
    lines = [*headers, ("x-cid", cid.decode(ENC, ERRORS)), ("server", SERVER_HEADER)]
    conn.write_head(empty_response(status, lines, req.keep_alive and not conn.door.draining))


def _forward_head(
    conn: Connection, req: Request, cid: bytes, admission: Admission, upgrade: bool = False
) -> tuple[bytes, bool]:
    """The head for the backend without its final CRLF, and whether it has a Host header. An upgrade keeps its
    Upgrade header and asks for it with ``Connection: Upgrade``.

    Dropped: hop-by-hop headers, every x-waiter-* (the router's own, and client-supplied copies of the principal
    headers), the router's auth cookie, and the Authorization header when it held the router's credentials."""
    extra = connection_tokens(req.special.get(b"connection")) if b"connection" in req.special else None
    drop = REQUEST_DROP
    parts = [req.method, b" ", req.target, b" HTTP/1.1\r\n"]
    if upgrade:
        drop, extra = UPGRADE_DROP, (extra or frozenset()) - {b"upgrade"}
        parts.append(b"Connection: Upgrade\r\n")
    strip_authorization = admission.strip_authorization
    for name, value, lname in req.headers:
        if lname in drop or lname[:9] == b"x-waiter-" or (extra and lname in extra):
            continue
        if lname == b"cookie" and value.find(_AUTH_COOKIE) >= 0:  # find(): see Dispatcher.__call__
            value = strip_auth_cookie(value)
            if not value:
                continue
        elif lname == b"authorization" and strip_authorization:
            continue
        parts += (name, b": ", value, CRLF)
    parts.append(admission.principal_lines)
    previous = req.special.get(b"x-forwarded-for")
    forwarded = previous + b", " + conn.peer if previous else conn.peer
    parts += (b"x-forwarded-for: ", forwarded, b"\r\nx-cid: ", cid, CRLF, req.framing())
    return b"".join(parts), b"host" in req.special


async def _respond(
    conn: Connection,
    req: Request,
    upstream: UpstreamResponse,
    extra: bytes,
    drop: frozenset[bytes],
    service: Service | None = None,
    instance: Instance | None = None,
) -> None:
    """Write the response head (with ``extra`` lines) and stream the body, framed for this client. A backend that
    fails before the head is written is answered as ``service``'s ``instance`` failing (502/504), or without them
    as the router's own API server failing."""
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
                if service is None or instance is None:
                    raise _relay_failure(exc) from None
                raise backend_error(service, instance, exc) from None
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
    keep = req.keep_alive = req.keep_alive and delimited and not conn.draining and (req.body is None or req.body.done)
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


def _relay_failure(exc: BaseException) -> WaiterError:
    log.warning("the admin app behind the front door did not answer: %s", exc)
    return WaiterError(502, "The router's own API server could not answer; the router's log has why.")


def _header_lines(headers: list[tuple[str, str]]) -> bytes:
    return "".join(f"{name}: {value}\r\n" for name, value in headers).encode(ENC, ERRORS)


async def _read_small(upstream: UpstreamResponse) -> list[Chunk]:
    body: list[Chunk] = []
    while pieces := await upstream.read_parts():
        body += pieces
    return body
