"""A lean asyncio HTTP/1.1 client for forwarding requests to backend instances.

aiohttp's ClientSession spends 95-140 µs of CPU on a request, mostly on what a reverse proxy does not need (cookies,
redirects, URL objects, multidicts). This client speaks HTTP/1.1 on ``asyncio.Protocol`` with ``httptools`` parsing,
keeps a LIFO pool of keep-alive connections per (host, port), and streams both bodies with flow control. It runs on
the default loop and on uvloop. Exceptions::

    UpstreamError
    ├── ConnectError      could not connect; nothing was sent, another instance may be tried
    ├── UpstreamTimeout   the backend sent (or accepted) nothing for idle_timeout seconds
    └── UpstreamClosed    the connection ended or broke before the response was complete

Header names and values are ``str`` encoded and decoded as UTF-8 with ``surrogateescape``, aiohttp's own convention,
so the bytes a client sent reach the backend unchanged.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from typing import cast

import httptools

__all__ = [
    "Chunk",
    "ConnectError",
    "UpstreamClosed",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamResponse",
    "UpstreamTimeout",
]

# Past this many buffered response bytes reading pauses: a slow client never makes the router hold a big body.
_READ_HIGH_WATER = 256 * 1024
# Bytes bodies up to this size share one write (one syscall) with the head; larger ones are not copied for it.
_COALESCE_LIMIT = 64 * 1024
# A streamed request body is held for a transparent retry on a fresh connection while it stays this small.
_REPLAY_LIMIT = 64 * 1024
_ENC, _ERRORS = "utf-8", "surrogateescape"
Body = bytes | AsyncIterator[bytes] | None
Chunk = bytes | memoryview  # a piece of a response body
# Reads larger than this that hold a response head are split after it (see _Conn.data_received).
_SPLIT_MIN = 16 * 1024


class UpstreamError(Exception):
    """Base of every failure talking to a backend."""


class ConnectError(UpstreamError):
    """Could not connect (refused, unreachable, connect timeout). Nothing was sent: retry elsewhere."""


class UpstreamTimeout(UpstreamError):
    """No byte from the backend for idle_timeout seconds (waiting for the head, between body chunks, or to drain)."""


class UpstreamClosed(UpstreamError):
    """The backend closed or broke the connection before the response was complete."""


class _StaleConnection(Exception):
    """A pooled connection died before answering; the request may be replayed with ``body`` on a fresh one."""

    def __init__(self, body: Body, consumed: bool) -> None:
        super().__init__("stale pooled connection")
        self.body, self.consumed = body, consumed


async def _replay_then(held: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in held:
        yield chunk
    async for chunk in rest:
        yield chunk


def _build_head(
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    host: str,
    port: int,
    body: Body,
    content_length: int | None,
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1\r\n"]
    has_host = False
    for name, value in headers:
        if len(name) == 4 and name.lower() == "host":
            has_host = True
        lines.append(f"{name}: {value}\r\n")
    if not has_host:
        name = f"[{host}]" if ":" in host else host
        lines.append(f"Host: {name}\r\n" if port == 80 else f"Host: {name}:{port}\r\n")
    if isinstance(body, bytes):
        if content_length is not None and content_length != len(body):
            raise ValueError(f"content_length {content_length} does not match the {len(body)}-byte body.")
        lines.append(f"Content-Length: {len(body)}\r\n")
    elif content_length is not None:
        if content_length < 0 or (body is None and content_length != 0):
            raise ValueError(f"content_length {content_length} is not allowed here: >= 0, and 0 without a body.")
        lines.append(f"Content-Length: {content_length}\r\n")
    elif body is not None:
        lines.append("Transfer-Encoding: chunked\r\n")
    lines.append("\r\n")
    text = "".join(lines)
    # Each line brings exactly one CR and one LF; any more came from a value and would split the request.
    if text.count("\n") != len(lines) or text.count("\r") != len(lines):
        raise ValueError(
            "The request method, target or a header contains a CR or LF character; the request is refused "
            "because it could smuggle a second request to the backend."
        )
    return text.encode(_ENC, _ERRORS)


class _Conn(asyncio.Protocol):
    """One keep-alive connection carrying one exchange at a time; also the httptools callback object."""

    transport: asyncio.Transport

    def __init__(self, pool: UpstreamPool, key: tuple[str, int], loop: asyncio.AbstractEventLoop) -> None:
        self.pool, self.key, self.loop = pool, key, loop
        self.reused = self.lost = self._parser_dirty = self._write_paused = self._upgraded = False
        self.idle_since = self._last_io = 0.0
        # Idle timers of the read (False) and the drain (True) waits: (handle, when it fires). A timer outlives its
        # wait and is re-armed only when it fires early, so a request costs no timer of its own.
        self._timers: dict[bool, tuple[asyncio.TimerHandle, float]] = {}
        self._waits: dict[bool, tuple[float, float, str]] = {}  # the pending waits: (started, limit, what)
        self._parser = httptools.HttpResponseParser(self)
        self._lost_fut: asyncio.Future[None] = loop.create_future()
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._tail: list[Chunk] = []
        self._begin(False, 1.0)
        self.active = False

    def _begin(self, head_only: bool, idle_timeout: float) -> None:
        """Reset the per-exchange state."""
        if self._parser_dirty:
            self._parser = httptools.HttpResponseParser(self)
            self._parser_dirty = False
        self.active = True
        self._head_only, self._idle_timeout = head_only, idle_timeout
        self._head_done = self._done = self._interim = self._got_byte = False
        self._chunked = self._keep_alive = self._read_paused = False
        self._exc: BaseException | None = None
        self._body_exc: Exception | None = None
        self._status, self._reason, self._buffered, self._replay_size = 0, b"", 0, 0
        self._body_seen = self._raw_left = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._clen: int | None = None
        self._chunks: list[Chunk] = []
        self._body_task: asyncio.Task[None] | None = None
        self._body_iter: AsyncIterator[bytes] | None = None
        self._replay: list[bytes] | None = [] if self.reused else None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Heads and small bodies go out in single writes; Nagle would only add latency to them.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._received(data)

    def _received(self, data: Chunk) -> None:
        if self._done or not self.active:
            if self._upgraded:
                self._tail.append(data)
            elif self.active:
                self._keep_alive = False  # bytes beyond the response: this connection is out of step
            else:
                self.transport.abort()  # unsolicited bytes on an idle connection
            return
        self._got_byte = True
        self._last_io = self.loop.time()
        if self._raw_left:
            self._raw_body(data)
            return
        if not self._head_done and len(data) > _SPLIT_MIN and isinstance(data, bytes):
            end = data.find(b"\r\n\r\n")
            if 0 <= end < len(data) - 4:
                # A head with the start of a big body: parse the head alone, so that the body's bytes can be
                # passed on as a view of what the socket gave, not copied by the parser (any split point is
                # safe: the parser counts what it saw of the body).
                view = memoryview(data)
                self._feed(view[: end + 4])
                if self._exc is None:
                    self._received(view[end + 4 :])
                return
        self._feed(data)

    def _feed(self, data: Chunk) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._tail.append(data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            if self._done:
                self._keep_alive = False
            else:
                self._fail(UpstreamClosed(f"The backend sent an invalid HTTP response: {exc}."))
        else:
            if self._head_done and not self._done and self._clen is not None and not self._chunked:
                # The rest of a Content-Length body is counted, not parsed: the bytes read from the socket are
                # passed on as they are, without the copy the parser's on_body makes. The parser, left inside
                # the body, is replaced before the next exchange.
                self._raw_left = self._clen - self._body_seen
                self._parser_dirty = True

    def _raw_body(self, data: Chunk) -> None:
        left, size = self._raw_left, len(data)
        if size > left:
            data, self._keep_alive = data[:left], False  # bytes beyond the response: out of step
            size = left
        self._raw_left = left - size
        self._add_chunk(data)
        if not self._raw_left:
            self._done = True

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._disarm()
        if self.active and not self._done and self._exc is None:
            if exc is None and self._head_done and self._clen is None and not self._chunked:
                self._done = True  # the body was delimited by the end of the connection (HTTP/1.0 style)
            else:
                where = "body" if self._head_done else "head"
                reason = f" ({exc})" if exc is not None else ""
                self._exc = UpstreamClosed(
                    f"The backend closed the connection before the response {where} was complete{reason}."
                )
        self._wake()
        self.resume_writing()
        self.pool._forget(self)
        if not self._lost_fut.done():
            self._lost_fut.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)

    # httptools callbacks

    def on_status(self, reason: bytes) -> None:
        if self._done:
            raise UpstreamClosed("a second response arrived for one request")
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        if len(name) == 14 and name.lower() == b"content-length":
            self._clen = int(value)
        elif len(name) == 17 and name.lower() == b"transfer-encoding":
            self._chunked = b"chunked" in value.lower()

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200 and status != 101:
            # An interim response (100 Continue, 103 Early Hints) precedes the real one; forget it.
            self._interim, self._reason, self._headers, self._clen, self._chunked = True, b"", [], None, False
            return
        self._status, self._head_done = status, True
        self._keep_alive = self._parser.should_keep_alive()
        if status == 101:
            self._upgraded, self._keep_alive = True, False
        elif self._head_only:
            # llhttp cannot be told the request was HEAD and would wait for Content-Length bytes: end the
            # message here and give the next exchange a fresh parser.
            self._done = self._parser_dirty = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._done:
            self._keep_alive = False  # a body after a HEAD response's head: never reuse this connection
            return
        self._body_seen += len(body)
        self._add_chunk(body)

    def _add_chunk(self, body: Chunk) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _READ_HIGH_WATER and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        else:
            self._done = True
            self._wake()

    # helpers

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        """End the exchange with ``exc`` (unless its response is complete already); drop the connection."""
        if self.active and not self._done and self._exc is None:
            self._exc = exc
        self._wake()
        if not self.lost:
            self.transport.abort()

    async def _wait(self, limit_secs: float, what: str, drain: bool = False) -> None:
        """Wait for a wake-up (data arrived, or the write buffer drained); fail after ``limit_secs`` without I/O."""
        fut = self._wait_start(limit_secs, what, drain)
        try:
            await fut
        finally:
            self._wait_end(drain)

    # _wait in two halves, for the hot paths to await the future directly (a coroutine frame less).
    def _wait_start(self, limit_secs: float, what: str, drain: bool) -> asyncio.Future[None]:
        fut = self.loop.create_future()
        if drain:
            self._drain_waiter = fut
        else:
            self._waiter = fut
        now = self.loop.time()
        self._waits[drain] = (now, limit_secs, what)
        self._arm(drain, now + limit_secs)
        return fut

    def _wait_end(self, drain: bool) -> None:
        if drain:
            self._drain_waiter = None
        else:
            self._waiter = None
        del self._waits[drain]

    def _arm(self, drain: bool, due: float) -> None:
        armed = self._timers.get(drain)
        if armed is not None:
            if armed[1] <= due:
                return  # it fires in time, and then looks again
            armed[0].cancel()
        self._timers[drain] = (self.loop.call_at(due, self._expired, drain), due)

    def _expired(self, drain: bool) -> None:
        del self._timers[drain]
        fut = self._drain_waiter if drain else self._waiter
        wait = self._waits.get(drain)
        if fut is None or fut.done() or wait is None:
            return
        started, limit_secs, what = wait
        # Bytes moved meanwhile (say, a long upload the backend reads before answering): not idle yet.
        due = max(started, self._last_io) + limit_secs
        if self.loop.time() < due:
            self._arm(drain, due)
            return
        fut.set_result(None)
        self._fail(UpstreamTimeout(f"The backend {what} for {limit_secs:g} s (idle_timeout)."))

    def _disarm(self) -> None:
        for handle, _ in self._timers.values():
            handle.cancel()
        self._timers.clear()

    def take(self) -> list[Chunk]:
        """The body pieces received so far (never joined here: a proxy writes them on as they are)."""
        chunks = self._chunks
        self._chunks, self._buffered = [], 0
        if self._read_paused:
            self._read_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()
        return chunks

    # one exchange

    async def exchange(
        self, head: bytes, body: Body, head_only: bool, idle_timeout: float, content_length: int | None
    ) -> UpstreamResponse:
        self._begin(head_only, idle_timeout)
        try:
            if body is None:
                self.transport.write(head)
            elif isinstance(body, bytes):
                if len(body) <= _COALESCE_LIMIT:
                    self.transport.write(head + body)
                else:
                    self.transport.write(head)
                    self.transport.write(body)
            else:
                self.transport.write(head)
                self._body_iter = body
                self._body_task = self.loop.create_task(self._send_body(body, content_length))
            while not self._head_done:
                if self._exc is not None:
                    await self._raise_failure(body)
                fut = self._wait_start(idle_timeout, "sent no response head", False)
                try:
                    await fut
                finally:
                    self._wait_end(False)
        except BaseException:
            self.discard()
            raise
        return UpstreamResponse(self)

    async def _raise_failure(self, body: Body) -> None:
        task = self._body_task
        stale = self.reused and not self._got_byte and isinstance(self._exc, UpstreamClosed)
        if task is not None and stale:
            await task  # it stops after at most one more chunk, which it keeps for the replay
        if self._body_exc is not None:
            raise self._body_exc
        if stale and task is None:
            raise _StaleConnection(body, False)
        if stale and self._replay is not None and self._body_iter is not None:
            raise _StaleConnection(_replay_then(self._replay, self._body_iter), bool(self._replay))
        assert self._exc is not None
        raise self._exc

    async def _send_body(self, body: AsyncIterator[bytes], content_length: int | None) -> None:
        sent = 0
        try:
            async for chunk in body:
                if not chunk:
                    continue
                sent += len(chunk)
                if content_length is not None and sent > content_length:
                    raise ValueError(f"The request body is longer than content_length={content_length}.")
                if self._replay is not None:
                    self._hold(chunk)
                if self._exc is not None or self.lost:
                    return  # the connection is gone; the chunk survives in the replay list if it still fits
                self.transport.write(chunk if content_length is not None else b"%x\r\n%b\r\n" % (len(chunk), chunk))
                self._last_io = self.loop.time()
                if self._write_paused:
                    await self._wait(self._idle_timeout, "accepted no request body bytes", drain=True)
                    if self._exc is not None or self.lost:
                        return
            if content_length is not None and sent != content_length:
                raise ValueError(f"The request body ended after {sent} of its content_length={content_length} bytes.")
            if content_length is None and self._exc is None and not self.lost:
                self.transport.write(b"0\r\n\r\n")
        except Exception as exc:
            self._body_exc = exc
            self._fail(UpstreamClosed(f"Sending the request body failed: {exc}"))

    def _hold(self, chunk: bytes) -> None:
        self._replay_size += len(chunk)
        if self._got_byte or self._replay_size > _REPLAY_LIMIT:
            self._replay = None  # past the point of a transparent retry; stop holding memory for it
        else:
            assert self._replay is not None
            self._replay.append(chunk)

    def discard(self) -> None:
        """Close the connection and stop whatever this exchange still had running."""
        self.active = False
        task, self._body_task = self._body_task, None
        if task is not None and not task.done():
            task.cancel()
        if not self.lost:
            self.transport.abort()

    def finish(self) -> None:
        """Return the connection to the pool when the exchange ended cleanly, else close it."""
        if not self.active:
            return
        task = self._body_task
        clean = self._done and self._keep_alive and not self._chunks and self._exc is None
        if (
            clean
            and self._body_exc is None
            and not self.lost
            and (task is None or task.done())
            and self.transport.get_write_buffer_size() == 0
        ):
            self.active = False
            self._body_task = self._body_iter = self._replay = None
            self.pool._put(self)
        else:
            self.discard()

    def detach(self) -> tuple[asyncio.Transport, bytes]:
        self.active = False
        self.pool._forget(self)
        tail, self._tail = b"".join(self._tail), []
        return self.transport, tail


class UpstreamResponse:
    """A backend's response, returned as soon as its head is parsed; the body is read with ``read_chunk``.

    ``content_length`` echoes the header even for responses that have no body (HEAD, 204, 304); their body is empty.
    ``idle_timeout`` starts as the request's and may be changed before reading the body.
    """

    __slots__ = (
        "_conn",
        "chunked",
        "content_length",
        "idle_timeout",
        "keep_alive",
        "raw_headers",
        "raw_reason",
        "status",
    )

    def __init__(self, conn: _Conn) -> None:
        self._conn: _Conn | None = conn
        self.status: int = conn._status
        self.raw_reason: bytes = conn._reason
        self.raw_headers: list[tuple[bytes, bytes]] = conn._headers  # as received, for writing on unchanged
        self.content_length: int | None = None if conn._chunked else conn._clen
        self.chunked: bool = conn._chunked
        self.keep_alive: bool = conn._keep_alive
        self.idle_timeout: float = conn._idle_timeout

    @property
    def reason(self) -> str:
        return self.raw_reason.decode(_ENC, _ERRORS)

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [(name.decode(_ENC, _ERRORS), value.decode(_ENC, _ERRORS)) for name, value in self.raw_headers]

    def __repr__(self) -> str:
        return f"<UpstreamResponse {self.status} {self.reason!r} content_length={self.content_length}>"

    async def read_chunk(self) -> bytes:
        """The next piece of the body as it arrives; ``b""`` at its end."""
        parts = await self.read_parts()
        return parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else b"".join(parts)

    async def read_parts(self) -> list[Chunk]:
        """The next pieces of the body as they arrived (bytes, or views of what the socket gave), not joined;
        ``[]`` at its end. A proxy writes them on as they are."""
        conn = self._conn
        if conn is None:
            raise UpstreamError("The body was read after release() or detach(); it is gone.")
        while True:
            if conn._chunks:
                return conn.take()
            if conn._done:
                return []
            if conn._exc is not None:
                raise conn._exc
            fut = conn._wait_start(self.idle_timeout, "sent no more of the response body", False)
            try:
                await fut
            finally:
                conn._wait_end(False)

    def complete_body(self) -> list[Chunk] | None:
        """The whole body if it has arrived already (no await needed), else None: read it with read_parts."""
        conn = self._conn
        if conn is None or not conn._done or conn._exc is not None:
            return None
        return conn.take()

    async def read_all(self, limit: int) -> bytes:
        """The whole body, for small ones; raises UpstreamError past ``limit`` bytes. Still call release()."""
        parts: list[bytes] = []
        size = 0
        while chunk := await self.read_chunk():
            size += len(chunk)
            if size > limit:
                raise UpstreamError(f"The response body is larger than the limit of {limit} bytes.")
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        """Pool the connection if the body was read to its end and the backend keeps it alive, else close it.

        Must always be called; calling it again does nothing."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finish()

    def detach(self) -> tuple[asyncio.Transport, bytes]:
        """Hand over a 101 Switching Protocols connection: its transport and the bytes after the head.

        Call ``transport.set_protocol(...)`` before the next await: until then new bytes still reach this client and
        would be lost. The pool forgets the connection; closing it is the caller's job.
        """
        conn = self._conn
        if conn is None or conn._status != 101 or conn.lost:
            raise UpstreamError("detach() needs an open 101 Switching Protocols response, not yet released.")
        self._conn = None
        return conn.detach()


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
        self._idle: dict[tuple[str, int], list[_Conn]] = {}  # oldest first; reuse pops the newest
        self._conns: set[_Conn] = set()
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
        ends. A pooled connection found dead before any response byte is replaced by a fresh one, replaying the body
        if all of it consumed so far is still held (up to 64 KiB). Raises ConnectError, UpstreamTimeout,
        UpstreamClosed, ValueError for a malformed request, and whatever the body iterator raises.
        """
        head = _build_head(method, target, headers, host, port, body, content_length)
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
        try:
            return await conn.exchange(head, body, head_only, idle_timeout, content_length)
        except _StaleConnection as stale:
            try:
                conn = await self._connect(key)
            except ConnectError as exc:
                if stale.consumed:
                    # Part of the caller's body stream is spent, so another instance could not get it whole.
                    raise UpstreamClosed(f"{exc} (after a pooled connection to it had closed)") from exc
                raise
            return await conn.exchange(head, stale.body, head_only, idle_timeout, content_length)

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

    async def _connect(self, key: tuple[str, int]) -> _Conn:
        host, port = key
        loop = asyncio.get_running_loop()
        conn = _Conn(self, key, loop)
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

    def _pop_idle(self, key: tuple[str, int]) -> _Conn | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.transport.is_closing():
                return conn
        return None

    def _put(self, conn: _Conn) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if self._closed or len(idle) >= self._max_idle:
            conn.transport.close()
            return
        conn.reused, conn.idle_since = True, conn.loop.time()
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

    def _forget(self, conn: _Conn) -> None:
        self._conns.discard(conn)
        idle = self._idle.get(conn.key)
        if idle is not None and conn in idle:
            idle.remove(conn)
