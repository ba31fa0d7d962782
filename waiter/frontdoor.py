"""The router's public HTTP/1.1 server on asyncio.Protocol and httptools. It knows nothing of routing: it parses
requests and hands each to its handler (``handler(conn, request)``, as uvicorn's protocol calls its app), which
writes the response through the connection (waiter.exchange routes and forwards).

This module is the server: what a client may ask (``Limits``), the connections it has, their traffic, and drain.
Each connection is a ``waiter.client_connection.Connection``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from waiter.client_connection import FIRST_REQUEST_GRACE_SECS, Connection
from waiter.http1 import (
    Request,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """What one client may ask of the front door. Defaults: aiohttp's field size, Apache's header count
    (LimitRequestFields) and a head deadline between Apache's (20-40 s) and nginx's (60 s)."""

    max_url: int = 64 * 1024
    max_field: int = 64 * 1024  # one header, name and value
    max_head: int = 256 * 1024
    max_headers: int = 100
    head_timeout: float = 30.0  # from a request head's first byte to its end
    idle_timeout: float = 75.0  # keep-alive: between requests

    def __post_init__(self) -> None:
        for name in ("head_timeout", "idle_timeout"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}.")
        for name in ("max_url", "max_field", "max_head", "max_headers"):
            value = getattr(self, name)
            if not value >= 1:
                raise ValueError(f"{name} must be at least 1, got {value!r}.")


Handler = Callable[["Connection", Request], Awaitable[None]]


@dataclass
class ClientTraffic:
    """What the front door counts for /metrics: its connections, how many it accepted, the bytes of closed ones.

    Made before the front door and handed to it, so whoever reports it (the router's /metrics) can be built first.
    """

    connections: set[Connection] = field(default_factory=set)
    accepted: int = 0
    received_closed: int = 0
    sent_closed: int = 0

    def bytes(self) -> tuple[int, int]:
        """Bytes received from and sent to clients so far (requests, responses and upgraded connections' tunnels)."""
        received, sent = self.received_closed, self.sent_closed
        for conn in self.connections:
            received += conn.received
            sent += conn.sent
        return received, sent


class FrontDoor:
    """The server's shared state; called, it makes the protocol of a new connection.

    ``handler`` serves one request: it writes a whole response through the connection (``write_head``, ``write``,
    ``drain``, or ``answer_error``) or raises; WaiterError is answered with its status, BadRequest with 400 and a
    close, anything else with 500 (or, after the head went out, by closing the connection)."""

    def __init__(self, handler: Handler, limits: Limits | None = None, traffic: ClientTraffic | None = None) -> None:
        self.handler = handler
        self.limits = limits or Limits()
        self.counts = traffic or ClientTraffic()
        self.connections = self.counts.connections
        self.draining = False
        self._emptied: asyncio.Event | None = None
        self._adopting: set[asyncio.Task[object]] = set()  # handed connections being taken on (adopt)

    @property
    def accepted(self) -> int:
        return self.counts.accepted

    @accepted.setter
    def accepted(self, value: int) -> None:
        self.counts.accepted = value

    def __call__(self) -> Connection:
        return Connection(self)

    def adopt(self, sock: socket.socket, request: bytes) -> None:
        """Serve a connection another process accepted, with the request it read from it (waiter.handoff)."""
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.connect_accepted_socket(lambda: Connection(self, request), sock))
        self._adopting.add(task)
        task.add_done_callback(lambda done: self._adopted(done, sock))

    def _adopted(self, task: asyncio.Task[object], sock: socket.socket) -> None:
        self._adopting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not serve a connection handed to this router: %s", task.exception())
            sock.close()

    def busy(self) -> int:
        """How many connections have a request in progress."""
        return sum(1 for conn in self.connections if conn.active is not None)

    async def drain(self, timeout: float, listening: Awaitable[None] | None = None) -> None:
        """Close idle connections now and the others after their current response; what is left after
        ``timeout`` seconds is answered 503 if its response has not begun, else cut (Connection.give_up).
        ``listening``: the listener still accepting the handshakes begun before the drain (waiter.server), which
        the drain waits for too. A connection that has not sent a byte yet, accepted before the drain or during
        it, gets FIRST_REQUEST_GRACE_SECS to send its request (Connection.close_if_idle).
        """
        self.draining = True
        for conn in list(self.connections):
            conn.close_if_idle(FIRST_REQUEST_GRACE_SECS)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                if listening is not None:
                    await asyncio.shield(listening)
                while self.connections:
                    self._emptied = asyncio.Event()
                    await self._emptied.wait()
        for conn in list(self.connections):
            log.warning("a connection is still busy after the %g s drain timeout: answering 503 or cutting", timeout)
            conn.give_up(timeout)

    def _forget(self, conn: Connection) -> None:
        if conn in self.connections:
            self.counts.received_closed += conn.received
            self.counts.sent_closed += conn.sent
        self.connections.discard(conn)
        if not self.connections and self._emptied is not None:
            self._emptied.set()
