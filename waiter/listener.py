"""Stopping a listening socket without resetting a connection that reached the kernel.

Closing a listening socket resets every connection in its accept queue and every handshake still in progress,
requests already sent on them included: their clients see a reset after sending, which no client may resend on its
own for a POST. Instead, on SIGTERM the router first makes the kernel drop new SYNs on the listening socket (a
classic BPF socket filter: a segment with SYN set and ACK clear is dropped, anything else passes), so no new
handshake begins; it keeps accepting until the handshakes already begun have completed (none is half-open any more
for the port), accepts what is queued, and only then closes. A client whose SYN was dropped retransmits it (after
about a second on Linux): by then the socket is closed and the client is refused, knowing nothing was sent, or a
restarted router or another ``--workers`` worker listens on the port and takes it.

Why a filter rather than accepting through the drain and answering ``Connection: close``: as long as the socket
listens, new handshakes keep arriving, so there is always a last one that the final close resets; the filter ends
them first, and the close comes when nothing is left between the kernel and the router.

Linux only (SO_ATTACH_FILTER, /proc/net/tcp); elsewhere the filter is not attached and the close resets what is in
flight at that instant, as before.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
from pathlib import Path

_SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
_SYN, _ACK = 0x02, 0x10
# A TCP socket filter sees the segment from its TCP header: byte 13 holds the flags.
_DROP_NEW_HANDSHAKES = (
    (0x30, 0, 0, 13),  # ldb [13]
    (0x54, 0, 0, _SYN | _ACK),  # and #(SYN|ACK)
    (0x15, 0, 1, _SYN),  # jeq #SYN: a new handshake, next; else skip one
    (0x06, 0, 0, 0),  # ret #0: drop
    (0x06, 0, 0, 0xFFFFFFFF),  # ret #-1: pass the whole segment
)
_SYN_RECV = "03"  # the state column of /proc/net/tcp for a handshake in progress


def refuse_new_handshakes(sock: socket.socket) -> bool:
    """Make the kernel drop new SYNs to the listening ``sock``; False where socket filters are not available."""
    program = b"".join(struct.pack("HBBI", *op) for op in _DROP_NEW_HANDSHAKES)
    code = ctypes.create_string_buffer(program)
    # struct sock_fprog {unsigned short len; struct sock_filter *filter;}, with C's alignment; the kernel copies
    # the program during setsockopt, so the buffer need not outlive the call.
    fprog = struct.pack("@HP", len(_DROP_NEW_HANDSHAKES), ctypes.addressof(code))
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
    except OSError:
        return False
    return True


def unread_bytes_waiting(sock: socket.socket | None) -> bool:
    """Bytes the peer sent that were not read yet: closing ``sock`` now would make the kernel send RST instead of
    FIN, and the peer would lose what it is still to be told."""
    if sock is None:
        return False
    try:
        with socket.socket(fileno=os.dup(sock.fileno())) as peek:
            return bool(peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:
        return False


def half_open(port: int) -> int | None:
    """Handshakes in progress to local ``port`` (the kernel's SYN_RECV entries); None when that cannot be read."""
    count, readable = 0, False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split(maxsplit=4)
            if len(fields) > 3 and fields[3] == _SYN_RECV and int(fields[1].rpartition(":")[2], 16) == port:
                count += 1
    return count if readable else None


__all__ = ["half_open", "refuse_new_handshakes", "unread_bytes_waiting"]
