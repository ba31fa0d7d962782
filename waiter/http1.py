"""HTTP/1.1 pieces of the front door (waiter.frontdoor): a parsed request, its body on the way to a backend, the
heads the front door writes, and the byte tunnel that carries protocol upgrades (websockets) to an instance.

Header names and values stay ``bytes`` as httptools parsed them; llhttp refuses CR and LF inside them, so they can
be written into a new head unchanged. Text is decoded (UTF-8, surrogateescape, as aiohttp does) only where the
router reads it: x-waiter-* headers, the path, error pages.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from typing import cast
from urllib.parse import unquote

import httptools

from waiter.errors import RenderedError

ENC, ERRORS = "utf-8", "surrogateescape"
CRLF = b"\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# Past this many buffered request-body bytes the client is paused until the backend has taken them.
BODY_HIGH_WATER = 256 * 1024
BODY_LOW_WATER = 64 * 1024

# Request headers the front door looks at; the first of each is kept (Connection's and Transfer-Encoding's values
# are joined, as their repetitions mean one list).
SPECIAL = frozenset(
    {
        b"host",
        b"x-cid",
        b"x-forwarded-for",
        b"connection",
        b"expect",
        b"content-length",
        b"transfer-encoding",
        b"accept",
        b"content-type",
    }
)


# Header names as clients spell them -> (lowercase name, the x-waiter-* name as text or None, whether it is in
# SPECIAL): clients send the same few names on every request, so the parser looks them up here
# (``HEADER_NAMES.get(name) or header_name(name)``) instead of lowering and classifying each one again. It stops
# growing at HEADER_NAMES_LIMIT names of at most HEADER_NAME_CACHED bytes, so a client inventing names cannot grow
# it much.
HeaderName = tuple[bytes, str | None, bool]
HEADER_NAMES: dict[bytes, HeaderName] = {}
HEADER_NAMES_LIMIT = 1024
HEADER_NAME_CACHED = 64


def header_name(name: bytes) -> HeaderName:
    """What the front door needs to know of a header name not in HEADER_NAMES (kept there if there is room)."""
    lname = name.lower()
    known = (lname, lname.decode(ENC, ERRORS) if lname[:9] == b"x-waiter-" else None, lname in SPECIAL)
    if len(name) <= HEADER_NAME_CACHED and len(HEADER_NAMES) < HEADER_NAMES_LIMIT:
        HEADER_NAMES[name] = known
    return known


class BadRequest(Exception):
    """The client's request cannot be served: answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# What the parser's complaint is about, in our words (its own text names llhttp's states, never shown): the first
# word found in its reason picks the sentence. Order matters: "Invalid character in chunk size" is about a chunk.
_MALFORMED = (
    ("chunk", "a chunk of its body is malformed (each is its size in hex digits, CRLF, the data, CRLF)"),
    ("can't be present", "it has both Content-Length and Transfer-Encoding; only one is allowed"),
    ("content-length", "its Content-Length is not one decimal number"),
    ("transfer-encoding", "its Transfer-Encoding is not one the router accepts (only chunked)"),
    ("method", "its method is not a token HTTP allows (letters such as GET or POST)"),
    ("url", "its target has a character a URL does not allow"),
    ("version", "its request line does not end in HTTP/1.0 or HTTP/1.1"),
    ("header", "a header line is malformed (a name of token characters, a colon, a value without controls, CRLF)"),
)


def malformed(reason: str, in_head: bool) -> BadRequest:
    """The 400 for what httptools refused (``reason`` is its message, which is matched, never quoted)."""
    lowered = reason.lower()
    fallback = (
        "its head is not a request line and header lines, each ending in CRLF"
        if in_head
        else "its body does not follow the framing its head announced"
    )
    sentence = next((words for word, words in _MALFORMED if word in lowered), fallback)
    return BadRequest(400, f"The request is not valid HTTP/1.1: {sentence}.")


class HeaderView:
    """Case-insensitive ``get`` over a request's headers (what error rendering needs)."""

    __slots__ = ("_headers",)

    def __init__(self, headers: list[tuple[bytes, bytes, bytes]]) -> None:
        self._headers = headers

    def get(self, key: str, default: str, /) -> str:
        wanted = key.lower().encode()
        for _name, value, lname in self._headers:
            if lname == wanted:
                return value.decode(ENC, ERRORS)
        return default


class Request:
    """One request as parsed: request line, headers (name, value, lowercase name) and what the router needs."""

    __slots__ = (
        "body",
        "content_length",
        "fault",
        "headers",
        "http11",
        "keep_alive",
        "method",
        "special",
        "tail",
        "taken",
        "upgrade",
        "url",
        "waiter",
    )

    def __init__(self) -> None:
        self.url = b""
        self.method = b"GET"
        self.http11 = True
        self.keep_alive = True
        self.headers: list[tuple[bytes, bytes, bytes]] = []
        self.special: dict[bytes, bytes] = {}
        self.waiter: list[tuple[str, str]] = []
        self.content_length: int | None = None
        self.body: RequestBody | None = None
        self.fault: BadRequest | None = None  # set: answer this error instead of serving the request
        self.taken = False  # a handler has started serving it: from here on a fault can only break its body
        self.upgrade = False  # a protocol upgrade: the rest of the connection is tunnelled if it is accepted
        self.tail: list[bytes] = []  # bytes after an upgrade request's head, for the tunnel

    # what error rendering reads (waiter.errors.RequestInfo)

    @property
    def path(self) -> str:
        url = self.url
        if url[:1] != b"/" and b"://" in url[:10]:
            url = httptools.parse_url(url).path or b"/"
        end = url.find(b"?")
        path = (url if end < 0 else url[:end]).decode(ENC, ERRORS)
        return unquote(path, ENC, ERRORS) if "%" in path else path

    @property
    def query_string(self) -> str:
        url = self.url
        start = url.find(b"?")
        return "" if start < 0 else unquote(url[start + 1 :].split(b"#", 1)[0].decode(ENC, ERRORS))

    @property
    def headers_view(self) -> HeaderView:
        return HeaderView(self.headers)

    @property
    def target(self) -> bytes:
        """The request target for a backend: origin form (an absolute-form URL loses its scheme and host)."""
        url = self.url
        if url[:1] == b"/" or b"://" not in url[:10]:
            return url
        parsed = httptools.parse_url(url)
        return (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")

    def host(self) -> str | None:
        host = self.special.get(b"host")
        return None if host is None else host.decode(ENC, ERRORS)

    def method_str(self) -> str:
        return self.method.decode("ascii", ERRORS)

    def as_received(self, limit: int) -> bytes | None:
        """The request as the client sent it, for another process to parse again (waiter.handoff): its head and
        whole body; None when its body is still arriving or was taken, or it would be longer than ``limit``."""
        body = self.body
        chunks: tuple[bytes, ...] = ()
        if body is not None:
            whole = body.whole()
            if whole is None or self.content_length is None:  # a chunked body would need framing again
                return None
            chunks = whole
        parts = [self.method, b" ", self.url, b" HTTP/1.1\r\n" if self.http11 else b" HTTP/1.0\r\n"]
        for name, value, _ in self.headers:
            parts += (name, b": ", value, CRLF)
        parts.append(CRLF)
        parts += chunks
        data = b"".join(parts)
        return data if len(data) <= limit else None

    def framing(self) -> bytes:
        """The request's body framing header for the next hop."""
        if self.body is not None and self.content_length is None:
            return b"Transfer-Encoding: chunked\r\n"
        if self.content_length is not None:
            return b"Content-Length: %d\r\n" % self.content_length
        return b""


class AuthView:
    """A Request as waiter.auth.AuthRequest: its headers and the connection's peer address. Both are made when
    read: most requests are admitted without either (the one-user authenticator, a cookie-less token)."""

    __slots__ = ("_peer", "_req")

    def __init__(self, req: Request, peer: bytes) -> None:
        self._req = req
        self._peer = peer

    @property
    def headers(self) -> HeaderView:
        return self._req.headers_view

    @property
    def peer(self) -> str:
        return self._peer.decode(ENC, ERRORS)


class ErrorView:
    """A Request as waiter.errors.RequestInfo."""

    __slots__ = ("_req",)

    def __init__(self, req: Request) -> None:
        self._req = req

    @property
    def method(self) -> str:
        return self._req.method_str()

    @property
    def path(self) -> str:
        return self._req.path

    @property
    def query_string(self) -> str:
        return self._req.query_string

    @property
    def headers(self) -> HeaderView:
        return self._req.headers_view


def empty_response(status: int, headers: list[tuple[str, str]], keep_alive: bool) -> bytes:
    """A response without a body (a redirect, a CORS preflight's answer)."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers]
    lines.append("Content-Length: 0\r\n")
    lines.append("\r\n" if keep_alive else "Connection: close\r\n\r\n")
    return "".join(lines).encode(ENC, ERRORS)


def error_response(rendered: RenderedError, keep_alive: bool, head_only: bool) -> bytes:
    """The rendered error as one HTTP/1.1 response."""
    try:
        reason = HTTPStatus(rendered.status).phrase
    except ValueError:
        reason = "Error"
    lines = [f"HTTP/1.1 {rendered.status} {reason}\r\n", f"Content-Type: {rendered.content_type}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in rendered.headers.items()]
    lines.append(f"Content-Length: {len(rendered.body)}\r\n")
    lines.append("\r\n" if keep_alive else "Connection: close\r\n\r\n")
    head = "".join(lines).encode(ENC, ERRORS)
    return head if head_only else head + rendered.body


class RequestBody:
    """A request body on its way from the client to a backend, pulled by the upstream client as it sends.

    The client connection is paused while more than BODY_HIGH_WATER bytes wait here, so a fast client never makes
    the router hold a big body; ``Expect: 100-continue`` is answered when the body is first pulled."""

    __slots__ = (
        "_chunks",
        "_exc",
        "_pause",
        "_paused",
        "_size",
        "_streamed",
        "_waiter",
        "_write",
        "done",
        "expect_continue",
    )

    def __init__(self, pause: Callable[[bool], None], write: Callable[[bytes], None], expect_continue: bool) -> None:
        self._pause, self._write = pause, write
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._streamed = False
        self._paused = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.done = False
        self.expect_continue = expect_continue

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > BODY_HIGH_WATER and not self._paused:
            self._paused = True
            self._pause(True)
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    def whole(self) -> tuple[bytes, ...] | None:
        """The whole body, when it has arrived and nothing of it was taken yet."""
        if not self.done or self._exc is not None or self._streamed:
            return None
        return tuple(self._chunks)

    def fail(self, exc: BaseException) -> None:
        if not self.done:
            self._exc = exc
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def stream(self) -> AsyncIterator[bytes]:
        self._streamed = True
        if self.expect_continue and not self.done and not self._chunks:
            self.expect_continue = False
            self._write(CONTINUE)
        chunks = self._chunks
        while True:
            if chunks:
                chunk = chunks.popleft()
                self._size -= len(chunk)
                if self._paused and self._size < BODY_LOW_WATER:
                    self._paused = False
                    self._pause(False)
                yield chunk
            elif self.done:
                return
            elif self._exc is not None:
                raise self._exc
            else:
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None


class Tunnel(asyncio.Protocol):
    """The instance side of a protocol upgrade (a websocket): the response head is parsed and handed to the
    exchange, then bytes pass both ways unchanged, each side's flow control pausing the other's reading.

    An instance that answers without ``101`` gets no tunnel: its response body (de-chunked) is passed on and the
    client connection closes after it, so a refused upgrade never leaves a raw channel to the instance open."""

    transport: asyncio.Transport

    def __init__(self, client: asyncio.Transport, count_sent: Callable[[int], None]) -> None:
        """``count_sent`` is told the bytes passed to the client (the router's byte counters)."""
        loop = asyncio.get_running_loop()
        self.client = client
        self._count_sent = count_sent
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.upgraded = False
        self.head: asyncio.Future[None] = loop.create_future()  # the response head is in (or it failed)
        self.closed: asyncio.Future[None] = loop.create_future()
        self._parser = httptools.HttpResponseParser(self)
        self._pending: list[bytes] = []  # bytes for the client until its head is written
        self._passing = False
        self._complete = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            self._to_client(data)
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.upgraded = self.status == 101
            tail = data[upgrade.args[0] :]
            if tail:
                self._to_client(tail)
            self._head_done()
        except httptools.HttpParserError as exc:
            if not self.head.done():
                self.head.set_exception(ConnectionResetError(f"The backend sent an invalid HTTP response: {exc}."))
            self.transport.abort()

    def eof_received(self) -> bool:
        return False  # the instance is done: close, and the client with it

    def connection_lost(self, exc: Exception | None) -> None:
        # The exchange waits on ``closed`` and then ends the client's connection (after what was written to it).
        if not self.head.done():
            reason = f" ({exc})" if exc is not None else ""
            self.head.set_exception(
                ConnectionResetError(f"The backend closed the connection before its response head{reason}.")
            )
        if not self.closed.done():
            self.closed.set_result(None)

    # The instance stops reading: stop reading the client, and the other way round (see the front door's callbacks).
    def pause_writing(self) -> None:
        self.client.pause_reading()

    def resume_writing(self) -> None:
        if not self.client.is_closing():
            self.client.resume_reading()

    # httptools callbacks

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if self.status != 101:
            self._head_done()

    def on_body(self, body: bytes) -> None:
        self._to_client(body)

    def on_message_complete(self) -> None:
        if self.status != 101:
            self._complete = True
            if self._passing:
                self.transport.close()

    # the exchange's side

    def start(self) -> None:
        """The client has the response head: pass on what came after it, and from now on as it comes."""
        self._passing = True
        pending, self._pending = self._pending, []
        if pending and not self.client.is_closing():
            self._count_sent(sum(map(len, pending)))
            self.client.writelines(pending)
        if self._complete:
            self.transport.close()

    def _head_done(self) -> None:
        if not self.head.done():
            self.head.set_result(None)

    def _to_client(self, data: bytes) -> None:
        if not self._passing:
            self._pending.append(data)
        elif not self.client.is_closing():
            self._count_sent(len(data))
            self.client.write(data)
