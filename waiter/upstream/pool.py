"""Keep-alive connections to backends, reused last-in first-out per (host, port)."""

from __future__ import annotations

import asyncio
import os

from waiter.upstream.connection import Connection, build_head
from waiter.upstream.errors import Body, ConnectError, UpstreamClosed, UpstreamError
from waiter.upstream.response import UpstreamResponse


class UpstreamPool:
    """Keep-alive connections to backends, reused last-in first-out per (host, port)."""

    def __init__(
        self, *, connect_timeout: float = 5.0, max_idle_per_endpoint: int = 256, idle_keepalive_secs: float = 30.0
    ) -> None:
        limits = {"connect_timeout": connect_timeout, "idle_keepalive_secs": idle_keepalive_secs}
        for name, value in limits.items():
            if not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}.")
        if max_idle_per_endpoint < 0:
            raise ValueError(f"max_idle_per_endpoint must be 0 or more, got {max_idle_per_endpoint!r}.")
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle_per_endpoint
        self._keepalive = idle_keepalive_secs
        self._idle: dict[tuple[str, int], list[Connection]] = {}  # oldest first; reuse pops the newest
        self._conns: set[Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def connect_timeout(self) -> float:
        return self._connect_timeout

    async def request(
        self,
        host: str,
        port: int,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: Body,
        *,
        idle_timeout: float,
        content_length: int | None = None,
    ) -> UpstreamResponse:
        """Send the request and return once the response head is parsed; the caller must release() it.

        The head gets Host (unless given) and framing: Content-Length for a bytes body or a given content_length,
        else chunked for an async iterator. A streamed body is sent by a task, so the backend may answer before it
        ends. A pooled connection the backend closed while it was idle is replaced by a fresh one before anything is
        written; once the request is written it is never sent again, since the backend may have read it and acted
        on it before the connection broke (that is UpstreamClosed). Raises ConnectError, UpstreamTimeout,
        UpstreamClosed, ValueError for a malformed request, and whatever the body iterator raises.
        """
        head = build_head(method, target, headers, host, port, body, content_length)
        return await self.send(
            host, port, head, body, head_only=method == "HEAD", idle_timeout=idle_timeout, content_length=content_length
        )

    async def send(
        self,
        host: str,
        port: int,
        head: bytes,
        body: Body,
        *,
        head_only: bool,
        idle_timeout: float,
        content_length: int | None = None,
    ) -> UpstreamResponse:
        """``request`` with the head already built: its request line, Host and framing headers are the caller's,
        and so is keeping CR and LF out of it (bytes from an HTTP parser are safe). ``head_only`` for HEAD."""
        if self._closed:
            raise UpstreamError("The upstream pool is closed; it sends no new requests.")
        if not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be a positive number of seconds, got {idle_timeout!r}.")
        key = (host, port)
        conn = self._pop_idle(key) or await self._connect(key)
        return await conn.exchange(head, body, head_only, idle_timeout, content_length)

    async def close(self) -> None:
        """Close every connection, idle or in use; responses still being read end with UpstreamClosed."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._idle.clear()
        conns = list(self._conns)
        for conn in conns:
            conn._fail(UpstreamClosed("The upstream pool was closed while the response was being read."))
            conn.discard()
        await asyncio.gather(*(conn._lost_fut for conn in conns))

    def endpoint_count(self) -> int:
        """How many idle connections the pool holds, over all endpoints."""
        return sum(len(idle) for idle in self._idle.values())

    async def _connect(self, key: tuple[str, int]) -> Connection:
        host, port = key
        loop = asyncio.get_running_loop()
        conn = Connection(self, key, loop)
        try:
            async with asyncio.timeout(self._connect_timeout):
                await loop.create_connection(lambda: conn, host, port)
        except TimeoutError as exc:
            raise ConnectError(
                f"Connecting to {host}:{port} timed out after {self._connect_timeout:g} s (connect_timeout)."
            ) from exc
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ConnectError(f"Could not connect to {host}:{port}: {reason}.") from exc
        if self._closed:
            conn.transport.abort()
            raise UpstreamError("The upstream pool was closed while connecting; it sends no new requests.")
        self._conns.add(conn)
        return conn

    def _pop_idle(self, key: tuple[str, int]) -> Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.reusable():
                return conn
            conn.discard()
        return None

    def _put(self, conn: Connection) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if self._closed or len(idle) >= self._max_idle:
            conn.transport.close()
            return
        conn.idle_since = conn.loop.time()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = conn.loop.call_at(conn.idle_since + self._keepalive, self._sweep, conn.loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close connections idle for idle_keepalive_secs; lists are oldest first, so only fronts expire."""
        self._sweeper = None
        deadline, next_due = loop.time() - self._keepalive, float("inf")
        for key, idle in list(self._idle.items()):
            expired = 0
            while expired < len(idle) and idle[expired].idle_since <= deadline:
                idle[expired].transport.close()
                expired += 1
            del idle[:expired]
            if idle:
                next_due = min(next_due, idle[0].idle_since + self._keepalive)
            else:
                del self._idle[key]
        if next_due != float("inf"):
            self._sweeper = loop.call_at(next_due, self._sweep, loop)

    def _forget(self, conn: Connection) -> None:
        self._conns.discard(conn)
        idle = self._idle.get(conn.key)
        if idle is not None and conn in idle:
            idle.remove(conn)
