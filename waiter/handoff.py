"""Client connections handed between the routers of one machine (``--workers``), with the request they carry.

Routers that share a scheduler agent share its private directory (mode 0700), and each receives connections on a
Unix datagram socket there named for its router id. A router that receives a request for a service of which it
holds no slot, while a sibling was last given that service's slots (the handover's ``gave`` messages say who),
passes the client's socket to the sibling (SCM_RIGHTS) with the request as received, before doing anything else
for it; the sibling serves that request (authentication included) and the connection's later ones as if it had
accepted the connection itself. That costs a request about 0.15 ms (two processes wake instead of one) where
moving the slot takes three exchanges with Redis (waiter.handover), so a sequential client whose connections the
kernel spreads over the workers is served nearly as by one router, and its requests never wait on two routers at
once (which the autoscaler would count as two).

A connection moves at most once, between its requests: nothing read from it is left behind but the request handed
along, and nothing written to it is unsent. A sibling that is gone, draining or behind (its queue of handed
connections full), a request whose body is still arriving or larger than MAX_MESSAGE, a protocol upgrade, a
service that depends on who calls: served here, as without a sibling, and the slot moves instead.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import hashlib
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from waiter.client_connection import Connection
    from waiter.http1 import Request

log = logging.getLogger(__name__)

MAX_MESSAGE = 64 * 1024  # what goes with a connection (its request's head and body); a larger one stays


def socket_path(directory: Path, router_id: str) -> Path:
    """Where a router receives connections: named by a digest, as router ids may be long or hold any character
    (a Unix socket's path has at most 107 bytes)."""
    return directory / f"handoff-{hashlib.sha256(router_id.encode()).hexdigest()[:16]}.sock"


Adopt = Callable[[socket.socket, bytes], None]


class Handoff:
    """This router's side: hands connections to siblings (``offer``) and receives theirs (``receive``)."""

    def __init__(self, directory: Path, router_id: str) -> None:
        self.directory = directory
        self.router_id = router_id
        self.path = socket_path(directory, router_id)
        self.holders: dict[str, str] = {}  # service id -> the sibling router last given its slots
        self.sent = self.received = self.declined = 0  # connections handed, taken in, kept for want of a sibling
        self._inbox: socket.socket | None = None
        self._adopt: Adopt | None = None
        self._peers: dict[str, socket.socket] = {}  # sibling router id -> a socket connected to its inbox

    def open(self) -> None:
        """Bind this router's socket; receiving starts with ``receive``."""
        self.path.unlink(missing_ok=True)  # a killed router's, which nobody reads any more
        inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            inbox.bind(str(self.path))
            inbox.setblocking(False)
        except OSError:
            inbox.close()
            raise
        self._inbox = inbox

    def receive(self, adopt: Adopt) -> None:
        """Serve what siblings hand here: ``adopt`` takes each connection's socket and its request."""
        if self._inbox is not None:
            self._adopt = adopt
            asyncio.get_running_loop().add_reader(self._inbox.fileno(), self._read, self._inbox, adopt)

    def stop_receiving(self) -> None:
        """No sibling hands anything here from now on (this router drains); what they handed already is adopted."""
        inbox, self._inbox = self._inbox, None
        if inbox is None:
            return
        self.path.unlink(missing_ok=True)
        # A sibling's send fails at once from here on (EPIPE), and what was sent before stays to be read: nothing
        # handed is lost between the last read and the close.
        with contextlib.suppress(OSError):
            inbox.shutdown(socket.SHUT_RD)
        if self._adopt is not None:
            asyncio.get_running_loop().remove_reader(inbox.fileno())
            self._read(inbox, self._adopt)
        inbox.close()

    def close(self) -> None:
        self.stop_receiving()
        for peer in self._peers.values():
            peer.close()
        self._peers.clear()

    # -- who holds what -------------------------------------------------------------------------------------------

    def gave(self, service_id: str, to: str) -> None:
        """The handover said a router gave slots of a service to ``to`` ("" anyone): a sibling there is where its
        requests go while this router holds none."""
        if to and to != self.router_id and socket_path(self.directory, to).exists():
            self.holders[service_id] = to
        else:
            self.holders.pop(service_id, None)

    # -- handing over ---------------------------------------------------------------------------------------------

    def offer(self, conn: Connection, req: Request, service_id: str, held: int) -> bool:
        """Hand ``conn`` with ``req`` to the sibling holding the service's slots when this router holds none
        (``held``); True when it went (``conn`` is then closed here, silently, and the sibling answers)."""
        to = self.holders.get(service_id)
        if to is None or held or not conn.movable():
            return False
        message = req.as_received(MAX_MESSAGE)
        if message is None:
            return False
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [conn.fileno()]))]
        try:
            self._peer(to).sendmsg([message], rights)
        except OSError as exc:
            self.declined += 1
            if not isinstance(exc, BlockingIOError):  # gone or draining, not just behind: ask it no more
                self.holders.pop(service_id, None)
                with contextlib.suppress(KeyError):
                    self._peers.pop(to).close()
            log.debug("could not hand a connection to %s: %s", to, exc)
            return False
        self.sent += 1
        conn.moved()
        return True

    def _peer(self, router_id: str) -> socket.socket:
        peer = self._peers.get(router_id)
        if peer is None:
            peer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            peer.setblocking(False)  # a sibling whose queue is full is not waited for: the request stays here
            try:
                peer.connect(str(socket_path(self.directory, router_id)))
            except OSError:
                peer.close()
                raise
            self._peers[router_id] = peer
        return peer

    def _read(self, inbox: socket.socket, adopt: Adopt) -> None:
        while True:
            try:
                message, fds, flags, _address = socket.recv_fds(inbox, MAX_MESSAGE, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("receiving a handed connection failed: %s", exc)
                return
            if not fds:
                continue
            sock = socket.socket(fileno=fds[0])
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                log.warning("closing a handed connection whose request did not arrive whole")
                sock.close()
                continue
            self.received += 1
            adopt(sock, message)
