"""One client connection of the front door (waiter.frontdoor), on asyncio.Protocol.

Requests read with limits (waiter.request_reader; 408 here for a head that takes too long), one
request served at a time in order (pipelined ones wait, reading paused), keep-alive and its idle timeout,
half-closed clients, flow control both ways, drain. A request whose framing breaks before its handler started is
answered here and never reaches the handler; after that its body fails with BadRequest, so nothing downstream
takes a truncated body for a whole one.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from typing import TYPE_CHECKING, cast

from waiter.errors import WaiterError, internal_error, render_error_parts, router_draining
from waiter.forwarding import new_cid_bytes
from waiter.http1 import ENC, ERRORS, BadRequest, ErrorView, Request, Tunnel, error_response
from waiter.listener import unread_bytes_waiting
from waiter.request_reader import RequestReader
from waiter.text import printable

if TYPE_CHECKING:
    from waiter.frontdoor import FrontDoor

log = logging.getLogger(__name__)

# Reasons reading from a client is paused (bits): a body backlog, requests waiting their turn, a tunnel, a fault.
_BODY, _PIPELINE, _TUNNEL, _STOPPED = 1, 2, 4, 8
UPGRADE_TAIL_LIMIT = 64 * 1024  # bytes a client may send after an upgrade's head before its tunnel opens
LINGER_SECS = 2.0  # at most this long reading what a refused client still sends (see Connection._linger)
# A client opens a connection to send a request: closing one that has not sent it yet would lose that request (the
# client sees the close after sending), so on drain it gets this long to send one, then is closed if still silent.
FIRST_REQUEST_GRACE_SECS = 1.0


class Connection(asyncio.Protocol):
    """One client connection: reads requests (waiter.request_reader) and serves them in order."""

    transport: asyncio.Transport

    def __init__(self, door: FrontDoor, handed: bytes = b"") -> None:
        """``handed``: a request another process read from this connection and passed on with it
        (waiter.handoff), parsed as if it had just arrived."""
        self.door = door
        self._handed = handed  # until connection_made parses it
        self._adopted = bool(handed)  # it moved here once already (movable())
        self.limits = door.limits
        self.loop = asyncio.get_running_loop()
        self.peer = b""
        self.received = self.sent = 0  # bytes, for /metrics and the access log
        self.active: Request | None = None
        self._reader = RequestReader(door.limits, self._enqueue, self._pause_body, self._write_continue, self.loop.time)
        self._queue: deque[Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None  # the idle task waits on it for the next request
        self._paused = 0
        self._write_paused = self._closed = self._eof = self._lingering = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._last_io = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._tunnel: Tunnel | None = None
        self._responded = False  # the current request's response head is written
        self._head = b""  # the last response head written (for answered_status)
        self._abandonable = False  # see abandonable
        self._moved = False  # handed to another process (moved())

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]).encode() if isinstance(peer, tuple) else b""
        self.door.connections.add(self)
        self.door.accepted += 1
        self._last_io = self.loop.time()
        self._arm_timer()
        if self.door.draining:  # accepted while the router stops listening: served, then closed
            self.close_if_idle(FIRST_REQUEST_GRACE_SECS)
        if self._handed:
            handed, self._handed = self._handed, b""
            self.data_received(handed)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self._lingering:
            return
        if self._tunnel is not None:
            self._tunnel.transport.write(data)
            return
        if self._paused & _STOPPED:
            req = self._reader.parsing
            if req is not None and req.upgrade:  # an upgrade waiting for its tunnel: kept for it
                req.tail.append(data)
                if sum(map(len, req.tail)) > UPGRADE_TAIL_LIMIT:
                    self.transport.pause_reading()
            return
        self._last_io = self.loop.time()
        try:
            tail = self._reader.feed(data)
        except BadRequest as fault:
            log.debug("refused a request from %s: %s", self.peer.decode(), fault.message)
            self._fault(fault)
            return
        if tail is not None:
            self._upgraded(tail)

    def eof_received(self) -> bool:
        self._eof = True
        if self._lingering:
            return False
        if self._tunnel is not None:
            if self._tunnel.transport.can_write_eof():
                self._tunnel.transport.write_eof()
            return True
        if self._abandonable:
            return False  # the transport closes: connection_lost cancels the handler
        if self._reader.parsing is not None and self._reader.parsing.body is not None:
            # Half-closed before the body's end: the client's fault, and it can still read the answer.
            self._fault(BadRequest(400, "The client closed its side of the connection before the request body ended."))
        # Half-closed: still answer the requests already received, then close.
        return self.active is not None or bool(self._queue)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.door._forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._moved:
            return  # the other process serves it now
        gone = ConnectionResetError("The client closed the connection.")
        for req in (self.active, self._reader.parsing, *self._queue):
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
        req = self._reader.parsing
        if req is None or not req.upgrade:
            self._fault(BadRequest(400, "The request asked for a protocol upgrade the router could not follow."))
            return
        # The parser stops at an upgrade: from here on the connection's bytes belong to the tunnel.
        if tail:
            req.tail.append(tail)
        self._pause(_STOPPED, True)
        # Still read while it waits for its tunnel, so that a client that leaves meanwhile is seen (abandonable).
        self.transport.resume_reading()
        self._enqueue(req)

    def _fault(self, fault: BadRequest) -> None:
        """Stop parsing; answer ``fault`` after the requests already received, then close."""
        req, self._reader.parsing = self._reader.parsing, None
        self._pause(_STOPPED, True)
        if req is not None and not self._reader.in_head:
            # Its head was fine, so it is queued or served already, and its body is what broke. Not yet taken by
            # its handler: answered here, nothing was forwarded. Taken: its body fails, so it never ends whole.
            req.keep_alive = False
            if not req.taken:
                req.fault = fault
            elif req.body is not None:
                req.body.fail(fault)
            return
        self._reader.in_head = False
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
                req.taken = True
                try:
                    await self._serve(req)
                except ConnectionResetError:
                    # The client's side is gone (or closing): nothing more can be said on this connection, and
                    # one left open with its request still active would never serve another.
                    if not self._closed:
                        self.transport.abort()
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
        unread = req.body is not None and not req.body.done
        if req.fault is not None or unread:
            self._linger()
            return False
        if not req.keep_alive or self.door.draining:
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

    def _linger(self) -> None:
        """Close after an answer sent while the client may still be sending (a refused head, a body left unread):
        closing at once with unread bytes would reset the connection and could destroy the answer in flight, so
        end our side, then read and discard until the client ends its side or LINGER_SECS pass (nginx's
        lingering close)."""
        if self._eof or not self.transport.can_write_eof():
            self.transport.close()
            return
        self._lingering = True
        self.transport.write_eof()
        self._paused = 0
        self.transport.resume_reading()
        self.loop.call_later(LINGER_SECS, self.transport.close)

    def close_if_idle(self, first_request_grace: float = 0.0) -> None:
        """Close unless a request is in progress or arriving; a connection that has sent nothing yet is given
        ``first_request_grace`` seconds first (FIRST_REQUEST_GRACE_SECS)."""
        if self.active is not None or self._closed or self._reader.in_head:
            return
        if unread_bytes_waiting(self.transport.get_extra_info("socket")):  # closing would reset it: served first
            return
        if self.received == 0 and first_request_grace > 0:
            self.loop.call_later(first_request_grace, self.close_if_idle)
            return
        self.transport.close()

    def give_up(self, timeout: float) -> None:
        """The drain ran out of time. A request still without its response head (queued for an instance, or
        waiting for the instance's answer) is answered 503 and its handler stopped, which releases what it held:
        the client learns it may send it again. A response under way can only be cut."""
        req = self.active
        if req is None or self._responded or self._closed or self._tunnel is not None:
            self.transport.abort()
            return
        err = router_draining(
            f"The router stopped before this request was served (drain-timeout-secs: {timeout:g}); send it again."
        )
        req.keep_alive = False
        self.answer_error(req, err, req.special.get(b"x-cid") or new_cid_bytes())
        if self._task is not None:
            self._task.cancel()
        if req.body is not None and not req.body.done:
            self._linger()  # closing with its body unread would reset the connection, and the answer with it
        else:
            self.transport.close()

    # One timer per connection for both deadlines; it is re-armed when it fires, not per request.
    def _arm_timer(self) -> None:
        limits = self.limits
        if self.active is not None:
            due = self.loop.time() + limits.idle_timeout  # a request in progress has its own timeouts
        else:
            due = self._last_io + limits.idle_timeout
            if self._reader.in_head:
                due = min(due, self._reader.head_started + limits.head_timeout)
            else:
                due = min(due, self.loop.time() + limits.head_timeout)  # a head may start meanwhile
        self._timer = self.loop.call_at(due, self._check_time)

    def _check_time(self) -> None:
        self._timer = None
        if self._closed:
            return
        now, limits = self.loop.time(), self.limits
        if self.active is None and not self._paused & _STOPPED:
            if self._reader.in_head and now >= self._reader.head_started + limits.head_timeout:
                self._fault(
                    BadRequest(408, f"The request head was not received within {limits.head_timeout:g} seconds.")
                )
            elif not self._reader.in_head and now >= self._last_io + limits.idle_timeout:
                self.transport.close()
                return
        self._arm_timer()

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

    # what handlers write through

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def responded(self) -> bool:
        """The current request's response head is written."""
        return self._responded

    def abandonable(self, on: bool) -> None:
        """While ``on`` the handler waits before sending the request anywhere (for a slot): a client that ends its
        side of the connection meanwhile has given up on it (nginx's view, and Waiter's), so the connection closes
        and the handler is cancelled, which takes it out of the queue. Otherwise a half-closed client still gets
        its answers. Raises ConnectionResetError when the client has ended its side already."""
        self._abandonable = on
        if on and self._eof:
            self.transport.close()
            raise ConnectionResetError("The client closed the connection.")

    @property
    def draining(self) -> bool:
        return self.door.draining

    def movable(self) -> bool:
        """The connection may move to another process with its active request (waiter.handoff): it never moved
        before, nothing else was read from it (no pipelined request, no upgrade), and all written is sent."""
        req = self.active
        return (
            req is not None
            and not self._adopted
            and not self._queue
            and self._reader.parsing is None
            and not req.upgrade
            and not self._closed
            and self.transport.get_write_buffer_size() == 0
        )

    def fileno(self) -> int:
        return int(self.transport.get_extra_info("socket").fileno())

    def moved(self) -> None:
        """Another process took the connection (its descriptor went with a handoff): close this process's
        descriptor only, which neither ends nor resets the connection, and forget its request."""
        self._moved = self._closed = True
        self.active = None
        self.transport.abort()

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    def write(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionResetError("The client closed the connection.")
        self.sent += len(data)
        self.transport.write(data)

    def count_sent(self, size: int) -> None:
        """Bytes a tunnel wrote to this client's transport itself (an upgraded connection's)."""
        self.sent += size

    def write_head(self, data: bytes) -> None:
        """Write a response head (and maybe its body): from here on an error can only close the connection."""
        self.write(data)
        self._responded = True
        self._head = data  # a reference, read only when the access log needs a cut response's status

    @property
    def answered_status(self) -> int:
        """The status of the current request's response head, 101 once tunnelled, 0 before either."""
        if self._tunnel is not None:
            return 101
        return int(self._head[9:12]) if self._responded and self._head[9:12].isdigit() else 0

    def start_tunnel(self, tunnel: Tunnel) -> None:
        """From now on the client's bytes go to ``tunnel`` and back."""
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

    def answer_error(self, req: Request, err: WaiterError, cid: bytes) -> None:
        """Answer ``err`` as the whole response (rendered as the request's Accept asks)."""
        if self._closed:
            return
        if req.body is not None and not req.body.done:
            req.keep_alive = False  # the unread rest of the body would be taken for the next request
        keep_alive = req.keep_alive and not self.door.draining
        rendered = render_error_parts(ErrorView(req), err, cid.decode(ENC, ERRORS))
        self.write_head(error_response(rendered, keep_alive, req.method == b"HEAD"))

    # serving one request

    async def _serve(self, req: Request) -> None:
        if req.fault is not None:
            self.answer_error(req, WaiterError(req.fault.status, req.fault.message), new_cid_bytes())
            return
        try:
            await self.door.handler(self, req)
        except BadRequest as fault:
            # The request's body broke (a framing error, or the client half-closed early) on its way on.
            req.keep_alive = False
            if self._responded:
                return  # the response is cut short; the connection closes
            cid = req.special.get(b"x-cid") or new_cid_bytes()
            self.answer_error(req, WaiterError(fault.status, fault.message), cid)
        except WaiterError as err:
            self.answer_error(req, err, req.special.get(b"x-cid") or new_cid_bytes())
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception:
            if self._responded:
                raise
            cid = req.special.get(b"x-cid") or new_cid_bytes()
            text = printable(cid.decode(ENC, ERRORS))
            log.exception("internal error on %s %s (cid %s)", req.method_str(), printable(req.path), text)
            self.answer_error(req, internal_error(text), cid)
