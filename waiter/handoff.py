"""Client connections handed between the routers of one machine (``--workers``), with the request they carry.

Routers that share a scheduler agent share its private directory (mode 0700), and each receives connections on a
Unix datagram socket there named for its router id. A router that receives a request for a service of which it
holds no slot, while a sibling was last given that service's slots (the handover's ``gave`` messages say who),
passes the client's socket to the sibling (SCM_RIGHTS) with the request as received and what its front door
established (who calls, the request's cid); the sibling serves that request, and the connection's later ones, as
if it had accepted the connection itself. That takes tens of microseconds where moving the slot takes three
exchanges with Redis (waiter.handover), so a sequential client whose connections the kernel spreads over the
workers is served as by one router, and its requests never queue on two routers at once (which the autoscaler
would count as two).

A connection moves at most once, between its requests: nothing read from it is left behind but the request handed
along, and nothing written to it is unsent. A sibling that is gone, draining or behind (its queue of handed
connections full), a request with a body still arriving or larger than MAX_MESSAGE, a protocol upgrade: served
here, as without a sibling, and the slot moves instead.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import hashlib
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from waiter.auth.base import Caller
from waiter.auth.gate import Admission

if TYPE_CHECKING:
    from waiter.client_connection import Connection
    from waiter.http1 import Request
    from waiter.service import Service

log = logging.getLogger(__name__)

MAX_MESSAGE = 64 * 1024  # what goes with a connection (its request's head and body); a larger one stays
_UTF8 = ("utf-8", "surrogateescape")  # names as the gate encodes them (waiter.auth.gate)
_LENGTHS = struct.Struct("!7I")  # a message's fields' lengths (encode), then the fields, then the request


@dataclass(frozen=True, slots=True)
class Handed:
    """What arrives with a handed connection: the request as received, and what the first router's front door
    established for it (authentication is not repeated: a Kerberos token would be a replay)."""

    admission: Admission
    cid: bytes
    data: bytes


def encode(handed: Handed) -> bytes:
    caller = handed.admission.caller
    who = (caller.user, caller.principal, caller.method) if caller is not None else ("", "", "")
    fields = [
        b"C" if caller is not None else b"",
        b"S" if handed.admission.strip_authorization else b"",
        handed.cid,
        *(text.encode(*_UTF8) for text in who),
        handed.admission.response_lines,
    ]
    return _LENGTHS.pack(*map(len, fields)) + b"".join(fields) + handed.data


def decode(message: bytes) -> Handed | None:
    """The handed request, or None for a message that is not one (never fatal)."""
    if len(message) < _LENGTHS.size:
        return None
    fields, at = [], _LENGTHS.size
    for length in _LENGTHS.unpack_from(message):
        fields.append(message[at : at + length])
        at += length
    if at > len(message):
        return None
    called, strip, cid, user, principal, method, lines = fields
    caller = Caller(user.decode(*_UTF8), principal.decode(*_UTF8), method.decode(*_UTF8)) if called else None
    return Handed(Admission(caller, response_lines=lines, strip_authorization=bool(strip)), cid, message[at:])


def socket_path(directory: Path, router_id: str) -> Path:
    """Where a router receives connections: named by a digest, as router ids may be long or hold any character
    (a Unix socket's path has at most 107 bytes)."""
    return directory / f"handoff-{hashlib.sha256(router_id.encode()).hexdigest()[:16]}.sock"


Adopt = Callable[[socket.socket, Handed], None]


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
        self.path.unlink(missing_ok=True)  # a sibling's send fails at once from here on
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

    def offer(self, conn: Connection, req: Request, service: Service, admission: Admission, cid: bytes) -> bool:
        """Hand ``conn`` with ``req`` to the sibling holding ``service``'s slots when this router holds none;
        True when it went (``conn`` is then closed here, silently, and the sibling answers)."""
        to = self.holders.get(service.id)
        if to is None or service.reservations.capacity or not conn.movable():
            return False
        data = req.as_received(MAX_MESSAGE)
        message = encode(Handed(admission, cid, data)) if data is not None else b""
        if not message or len(message) > MAX_MESSAGE:
            return False
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [conn.fileno()]))]
        try:
            self._peer(to).sendmsg([message], rights)
        except OSError as exc:
            self.declined += 1
            if not isinstance(exc, BlockingIOError):  # gone or draining, not just behind: ask it no more
                self.holders.pop(service.id, None)
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
            handed = None if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) else decode(message)
            if handed is None:
                log.warning("closing a handed connection whose request could not be read")
                sock.close()
                continue
            self.received += 1
            adopt(sock, handed)
