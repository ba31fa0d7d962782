"""Forwarding one request to an instance of its service and streaming the answer back.

Bodies stream both ways with flow control, so a 1 GiB upload or download never sits in the router's memory. A
connection refused before anything was sent is retried on another instance; after that, failures end the
response with the router's error (before the head) or by closing the connection without a final chunk (after).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict

from waiter.descriptor import RequestOptions
from waiter.errors import WaiterError
from waiter.forwarding import (
    HOP_BY_HOP,
    NO_BODY_STATUSES,
    SMALL_BODY,
    Timing,
    backend_failure,
    backend_timeout,
    open_upstream,
    timeouts,
)
from waiter.scheduler.base import Instance
from waiter.service import Service, Timeouts
from waiter.upstream import UpstreamError, UpstreamPool, UpstreamResponse, UpstreamTimeout

log = logging.getLogger(__name__)

_HOP = frozenset(name.decode() for name in HOP_BY_HOP)
_WS_HOP = _HOP | {
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-accept",
    "host",
}


def _extra_hop_headers(request: web.BaseRequest) -> frozenset[str]:
    connection = request.headers.get("connection")
    if not connection:
        return frozenset()
    return frozenset(token.strip().lower() for token in connection.split(","))


def forward_headers(request: web.BaseRequest, cid: str, drop: frozenset[str] = _HOP) -> list[tuple[str, str]]:
    extra = _extra_hop_headers(request)
    headers = [
        (name, value)
        for name, value in request.headers.items()
        if (lname := name.lower()) not in drop
        and lname not in extra
        and not lname.startswith("x-waiter-")
        and lname != "x-cid"
        and lname != "x-forwarded-for"
    ]
    peer = request.remote or ""
    previous = request.headers.get("x-forwarded-for")
    headers.append(("x-forwarded-for", f"{previous}, {peer}" if previous else peer))
    headers.append(("x-cid", cid))
    return headers


async def _request_body(request: web.BaseRequest) -> AsyncIterator[bytes]:
    content = request.content
    while True:
        chunk = await content.readany()
        if not chunk:
            return
        yield chunk


class Proxy:
    def __init__(self, pool: UpstreamPool, session: aiohttp.ClientSession, router_id: str) -> None:
        self.pool = pool
        self.session = session
        self.router_id = router_id

    async def handle(
        self, request: web.BaseRequest, service: Service, options: RequestOptions, cid: str
    ) -> web.StreamResponse:
        limits = timeouts(options, service.timeouts)
        if request.headers.get("upgrade", "").lower() == "websocket":
            return await self._websocket(request, service, limits, cid)
        method = request.method
        headers = forward_headers(request, cid)
        body: AsyncIterator[bytes] | None = None
        length = request.content_length
        if request.body_exists:
            body = _request_body(request)
        timing = Timing() if options.debug else None

        def send(instance: Instance) -> Awaitable[UpstreamResponse]:
            if timing is not None:
                timing.sent()
            return self.pool.request(
                instance.host,
                instance.port,
                method,
                request.raw_path,
                headers,
                body,
                idle_timeout=limits.socket_ms / 1000,
                content_length=length,
            )

        instance, upstream, taken = await open_upstream(service, limits, send)
        try:
            out_headers = CIMultiDict(
                (k, v) for k, v in upstream.headers if (lk := k.lower()) not in _HOP and lk != "x-cid"
            )
            out_headers["x-cid"] = cid
            if timing is not None:
                out_headers.extend(timing.headers(self.router_id, cid, service, limits, instance))
            return await self._respond(request, upstream, out_headers, limits, service, instance)
        finally:
            upstream.release()
            service.done(instance.id, taken)

    async def _respond(
        self,
        request: web.BaseRequest,
        upstream: UpstreamResponse,
        headers: CIMultiDict[str],
        limits: Timeouts,
        service: Service,
        instance: Instance,
    ) -> web.StreamResponse:
        status = upstream.status
        length = upstream.content_length
        if request.method == "HEAD" or status in NO_BODY_STATUSES or 100 <= status < 200:
            if length is not None:
                headers["content-length"] = str(length)
            resp = web.StreamResponse(status=status, reason=upstream.reason, headers=headers)
            await resp.prepare(request)
            return resp
        upstream.idle_timeout = limits.streaming_ms / 1000
        if length is not None and length <= SMALL_BODY:
            try:
                data = await upstream.read_all(SMALL_BODY)
            except UpstreamTimeout:
                raise backend_timeout(service, instance) from None
            except UpstreamError as exc:
                raise backend_failure(service, instance, exc) from None
            return web.Response(status=status, reason=upstream.reason, body=data, headers=headers)
        resp = web.StreamResponse(status=status, reason=upstream.reason, headers=headers)
        if length is not None:
            resp.content_length = length
        await resp.prepare(request)
        try:
            while chunk := await upstream.read_chunk():
                await resp.write(chunk)
        except UpstreamError as exc:
            # The head is gone already: the only honest signal left is to end the response without its final
            # chunk (or short of its length), so the client sees a broken body, never a hang.
            log.warning("backend %s broke off the response to %s: %s", instance.id, request.path, exc)
            if request.transport is not None:
                request.transport.close()
            return resp
        except ConnectionResetError:
            # The client went away mid-body: nothing to answer; the backend connection is closed by release().
            log.debug("client of %s left before the end of the response", request.path)
            return resp
        await resp.write_eof()
        return resp

    async def _websocket(
        self, request: web.BaseRequest, service: Service, limits: Timeouts, cid: str
    ) -> web.StreamResponse:
        instance = await service.acquire(limits.queue_ms)
        try:
            headers = forward_headers(request, cid, _WS_HOP)
            protocols = [p.strip() for p in request.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
            headers = [(k, v) for k, v in headers if k.lower() != "sec-websocket-protocol"]
            url = f"http://{instance.host}:{instance.port}{request.raw_path}"
            try:
                backend = await self.session.ws_connect(
                    url, headers=headers, protocols=protocols, timeout=aiohttp.ClientWSTimeout(ws_close=5.0)
                )
            except aiohttp.WSServerHandshakeError as exc:
                raise WaiterError(
                    502,
                    f"The service backend refused the websocket upgrade with status {exc.status}",
                    error_class="waiter.BackendError",
                    service_id=service.id,
                    instance_id=instance.id,
                ) from None
            except (aiohttp.ClientError, OSError) as exc:
                service.eject(instance.id)
                raise WaiterError(
                    502,
                    f"Request failed to connect to service backend: {exc}",
                    error_class="waiter.BackendError",
                    service_id=service.id,
                    instance_id=instance.id,
                ) from None
            async with backend:
                client = web.WebSocketResponse(protocols=[backend.protocol] if backend.protocol else ())
                client.headers["x-cid"] = cid
                await client.prepare(request)
                await _pump_both(client, backend)
                return client
        finally:
            service.release(instance.id)


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    async for msg in source:
        if msg.type == WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
        elif msg.type == WSMsgType.PING:
            await sink.ping(msg.data)
        elif msg.type == WSMsgType.PONG:
            await sink.pong(msg.data)
    code = source.close_code or 1000
    if not sink.closed:
        await sink.close(code=code if 1000 <= code < 5000 else 1000)


async def _pump_both(client: web.WebSocketResponse, backend: aiohttp.ClientWebSocketResponse) -> None:
    tasks = [asyncio.create_task(_pump(client, backend)), asyncio.create_task(_pump(backend, client))]
    try:
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        # One side ended: give the other a moment to pass the close on, then stop it.
        await asyncio.wait(pending, timeout=5.0)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
