"""One keep-alive HTTP/1.1 connection to a backend, carrying one exchange at a time (its state in an Exchange);
an exchange returns an UpstreamResponse (waiter.upstream.response) once the response head is parsed."""

from __future__ import annotations

import asyncio
import select
import socket
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, cast

import httptools

from waiter.upstream.errors import Body, UpstreamClosed, UpstreamTimeout
from waiter.upstream.response import _ENC, _ERRORS, Chunk, UpstreamResponse

if TYPE_CHECKING:
    from waiter.upstream.pool import UpstreamPool

# Past this many buffered response bytes reading pauses: a slow client never makes the router hold a big body.
_READ_HIGH_WATER = 256 * 1024
# Bytes bodies up to this size share one write (one syscall) with the head; larger ones are not copied for it.
_COALESCE_LIMIT = 64 * 1024
# Reads larger than this that hold a response head are split after it (see Connection.data_received).
_SPLIT_MIN = 16 * 1024


class Exchange:
    """The state of one request and its response on a connection; a new one for each exchange."""

    __slots__ = (
        "body_exc",
        "body_seen",
        "body_task",
        "buffered",
        "chunked",
        "chunks",
        "clen",
        "done",
        "exc",
        "head_done",
        "head_only",
        "headers",
        "idle_timeout",
        "interim",
        "keep_alive",
        "raw_left",
        "reason",
        "status",
    )

    def __init__(self, head_only: bool, idle_timeout: float) -> None:
        self.head_only, self.idle_timeout = head_only, idle_timeout
        self.head_done = self.done = self.interim = self.chunked = self.keep_alive = False
        self.exc: BaseException | None = None  # what ended the exchange early
        self.body_exc: Exception | None = None  # what the request body's iterator raised
        self.status, self.reason = 0, b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.clen: int | None = None
        self.buffered = self.body_seen = self.raw_left = 0
        self.chunks: list[Chunk] = []
        self.body_task: asyncio.Task[None] | None = None


def build_head(
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


class Connection(asyncio.Protocol):
    """One keep-alive connection carrying one exchange at a time; also the httptools callback object."""

    transport: asyncio.Transport

    def __init__(self, pool: UpstreamPool, key: tuple[str, int], loop: asyncio.AbstractEventLoop) -> None:
        self.pool, self.key, self.loop = pool, key, loop
        self.lost = self._parser_dirty = self._write_paused = self._read_paused = False
        self.idle_since = self._last_io = 0.0
        self._fd = -1  # the socket's descriptor, for reusable()
        # Idle timers of the read (False) and the drain (True) waits: (handle, when it fires). A timer outlives its
        # wait and is re-armed only when it fires early, so a request costs no timer of its own.
        self._timers: dict[bool, tuple[asyncio.TimerHandle, float]] = {}
        self._waits: dict[bool, tuple[float, float, str]] = {}  # the pending waits: (started, limit, what)
        self._parser = httptools.HttpResponseParser(self)
        self._lost_fut: asyncio.Future[None] = loop.create_future()
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._begin(False, 1.0)
        self.active = False

    def _begin(self, head_only: bool, idle_timeout: float) -> None:
        """A new exchange: fresh per-exchange state (and a fresh parser if the last one was left mid-message)."""
        if self._parser_dirty:
            self._parser = httptools.HttpResponseParser(self)
            self._parser_dirty = False
        self.active = True
        self.ex = Exchange(head_only, idle_timeout)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        self._fd = -1 if sock is None else sock.fileno()
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Heads and small bodies go out in single writes; Nagle would only add latency to them.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: Chunk) -> None:
        ex = self.ex
        if ex.done or not self.active:
            if self.active:
                ex.keep_alive = False  # bytes beyond the response: this connection is out of step
            else:
                self.transport.abort()  # unsolicited bytes on an idle connection
            return
        self._last_io = self.loop.time()
        if ex.raw_left:
            self._raw_body(data)
            return
        if not ex.head_done and len(data) > _SPLIT_MIN and isinstance(data, bytes):
            end = data.find(b"\r\n\r\n")
            if 0 <= end < len(data) - 4:
                # A head with the start of a big body: parse the head alone, so that the body's bytes can be
                # passed on as a view of what the socket gave, not copied by the parser (any split point is
                # safe: the parser counts what it saw of the body).
                view = memoryview(data)
                self._feed(view[: end + 4])
                if ex.exc is None:
                    self.data_received(view[end + 4 :])
                return
        self._feed(data)

    def _feed(self, data: Chunk) -> None:
        ex = self.ex
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # a 101: on_headers_complete failed the exchange
        except httptools.HttpParserError as exc:
            if ex.done:
                ex.keep_alive = False
            else:
                self._fail(UpstreamClosed(f"The backend sent an invalid HTTP response: {exc}."))
        else:
            if ex.head_done and not ex.done and ex.clen is not None and not ex.chunked:
                # The rest of a Content-Length body is counted, not parsed: the bytes read from the socket are
                # passed on as they are, without the copy the parser's on_body makes. The parser, left inside
                # the body, is replaced before the next exchange.
                ex.raw_left = ex.clen - ex.body_seen
                self._parser_dirty = True

    def _raw_body(self, data: Chunk) -> None:
        ex = self.ex
        left, size = ex.raw_left, len(data)
        if size > left:
            data, ex.keep_alive = data[:left], False  # bytes beyond the response: out of step
            size = left
        ex.raw_left = left - size
        if not ex.raw_left:
            ex.done = True
        self._add_chunk(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._disarm()
        if self.active and not self.ex.done and self.ex.exc is None:
            if exc is None and self.ex.head_done and self.ex.clen is None and not self.ex.chunked:
                self.ex.done = True  # the body was delimited by the end of the connection (HTTP/1.0 style)
            else:
                where = "body" if self.ex.head_done else "head"
                reason = f" ({exc})" if exc is not None else ""
                self.ex.exc = UpstreamClosed(
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
        if self.ex.done:
            raise UpstreamClosed("a second response arrived for one request")
        self.ex.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.ex
        ex.headers.append((name, value))
        size = len(name)
        if size == 14 and name.lower() == b"content-length":
            ex.clen = int(value)
        elif size == 17 and name.lower() == b"transfer-encoding":
            ex.chunked = value.lower().find(b"chunked") >= 0  # not ``in``: bytes.__contains__ tries int() first

    def on_headers_complete(self) -> None:
        ex = self.ex
        status = self._parser.get_status_code()
        if status == 101:
            # Requests sent here never ask to switch protocols (the front door tunnels upgrades itself).
            self._fail(UpstreamClosed("The backend switched protocols on a request that did not ask for it."))
            return
        if status < 200:
            # An interim response (100 Continue, 103 Early Hints) precedes the real one; forget it.
            ex.interim, ex.reason, ex.headers, ex.clen, ex.chunked = True, b"", [], None, False
            return
        ex.status, ex.head_done = status, True
        ex.keep_alive = self._parser.should_keep_alive()
        if ex.head_only:
            # llhttp cannot be told the request was HEAD and would wait for Content-Length bytes: end the
            # message here and give the next exchange a fresh parser.
            ex.done = self._parser_dirty = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        ex = self.ex
        if ex.done:
            ex.keep_alive = False  # a body after a HEAD response's head: never reuse this connection
            return
        ex.body_seen += len(body)
        self._add_chunk(body)

    def _add_chunk(self, body: Chunk) -> None:
        ex = self.ex
        ex.chunks.append(body)
        ex.buffered += len(body)
        if ex.buffered > _READ_HIGH_WATER and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        ex = self.ex
        if ex.interim:
            ex.interim = False
        else:
            ex.done = True
            self._wake()

    # helpers

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None  # woken once: the parser's later callbacks of the same read find nothing to do
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        """End the exchange with ``exc`` (unless its response is complete already); drop the connection."""
        if self.active and not self.ex.done and self.ex.exc is None:
            self.ex.exc = exc
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
        chunks = self.ex.chunks
        self.ex.chunks, self.ex.buffered = [], 0
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
        ex = self.ex
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
                ex.body_task = self.loop.create_task(self._send_body(body, content_length))
            while not ex.head_done:
                if ex.exc is not None:
                    raise ex.body_exc or ex.exc
                fut = self._wait_start(idle_timeout, "sent no response head", False)
                try:
                    await fut
                finally:
                    self._wait_end(False)
        except BaseException:
            self.discard()
            raise
        return UpstreamResponse(self)

    async def _send_body(self, body: AsyncIterator[bytes], content_length: int | None) -> None:
        sent = 0
        try:
            async for chunk in body:
                if not chunk:
                    continue
                sent += len(chunk)
                if content_length is not None and sent > content_length:
                    raise ValueError(f"The request body is longer than content_length={content_length}.")
                if self.ex.exc is not None or self.lost:
                    return
                self.transport.write(chunk if content_length is not None else b"%x\r\n%b\r\n" % (len(chunk), chunk))
                self._last_io = self.loop.time()
                if self._write_paused:
                    await self._wait(self.ex.idle_timeout, "accepted no request body bytes", drain=True)
                    if self.ex.exc is not None or self.lost:
                        return
            if content_length is not None and sent != content_length:
                raise ValueError(f"The request body ended after {sent} of its content_length={content_length} bytes.")
            if content_length is None and self.ex.exc is None and not self.lost:
                self.transport.write(b"0\r\n\r\n")
        except Exception as exc:
            self.ex.body_exc = exc
            self._fail(UpstreamClosed(f"Sending the request body failed: {exc}"))

    def reusable(self) -> bool:
        """Whether this idle connection can carry a request. The backend may have closed it (or sent bytes nobody
        asked for) while it was idle without the loop having read that yet: a request written onto it then breaks
        exactly as one the backend read and dropped, which must never be sent again (the backend may have acted on
        it). A look at the socket tells the two apart before anything is written."""
        if self.transport.is_closing():
            return False
        if self._fd < 0:
            return True
        # A poll, not a peeking recv: under 1 µs of CPU where the recv's socket object and EAGAIN cost ~6.
        probe = select.poll()
        probe.register(self._fd, select.POLLIN)
        return not probe.poll(0)  # readable while idle: the end of the stream, a reset, or stray bytes

    def discard(self) -> None:
        """Close the connection and stop whatever this exchange still had running."""
        self.active = False
        task, self.ex.body_task = self.ex.body_task, None
        if task is not None and not task.done():
            task.cancel()
        if not self.lost:
            self.transport.abort()

    def finish(self) -> None:
        """Return the connection to the pool when the exchange ended cleanly, else close it."""
        if not self.active:
            return
        ex = self.ex
        task = ex.body_task
        if (
            ex.done
            and ex.keep_alive
            and not ex.chunks
            and ex.exc is None
            and ex.body_exc is None
            and not self.lost
            and (task is None or task.done())
            and self.transport.get_write_buffer_size() == 0
        ):
            self.active = False
            ex.body_task = None
            self.pool._put(self)
        else:
            self.discard()
