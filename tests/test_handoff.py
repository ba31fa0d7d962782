"""What a router sends with a connection it hands to a sibling (waiter.handoff): the request as received, who
called, and the cid, read back exactly; the socket arrives with it; anything else is refused and closed, never fatal."""

from __future__ import annotations

import array
import socket
import struct
from pathlib import Path

import pytest

from tests.support import eventually
from waiter.auth.base import Caller
from waiter.auth.gate import Admission
from waiter.handoff import Handed, Handoff, decode, encode, socket_path

REQUEST = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\n\0\0\r\n"


@pytest.mark.parametrize(
    "handed",
    [
        pytest.param(Handed(Admission(None), b"cid-1", REQUEST), id="public"),
        pytest.param(
            Handed(
                Admission(
                    Caller("alice", "alice@EXAMPLE.COM", "kerberos"),
                    response_lines=b"set-cookie: x-waiter-auth=abc\r\nwww-authenticate: Negotiate xyz\r\n",
                    strip_authorization=True,
                ),
                b"cid-2",
                REQUEST,
            ),
            id="kerberos-caller",
        ),
        pytest.param(
            Handed(Admission(Caller("b\0b", "\udcff\u00e9\0", "jwt")), b"", b""), id="nul-and-undecodable-names"
        ),
    ],
)
def test_a_handed_request_reads_back_as_it_was_sent(handed: Handed) -> None:
    back = decode(encode(handed))
    assert back == handed
    assert back is not None and back.admission.principal_lines == handed.admission.principal_lines


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"GET / HTTP/1.1\r\n", id="shorter-than-its-lengths"),
        pytest.param(struct.pack("!7I", 1, 0, 5, 0, 0, 0, 0) + b"C", id="fields-past-its-end"),
    ],
)
def test_a_message_that_is_not_a_handed_request_is_refused(message: bytes) -> None:
    assert decode(message) is None


def test_socket_paths_fit_a_unix_socket_and_differ_per_router() -> None:
    directory = Path("/tmp/waiter-agent-abcdefgh")
    long_id = "router-" + "x" * 500 + "/../w0"
    paths = {socket_path(directory, rid) for rid in ("a-w0", "a-w1", long_id)}
    assert len(paths) == 3
    assert all(path.parent == directory and len(str(path).encode()) < 108 for path in paths)


async def test_a_sibling_receives_the_socket_with_its_request_and_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    # Real sockets: a connection (one end of a socket pair) handed over with a message, as offer() sends it.
    adopted: list[tuple[socket.socket, Handed]] = []
    inbox = Handoff(tmp_path, "w1")
    inbox.open()
    inbox.receive(lambda sock, handed: adopted.append((sock, handed)))
    ours, client = socket.socketpair()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.connect(str(socket_path(tmp_path, "w1")))
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [ours.fileno()]))]
            handed = Handed(Admission(None), b"cid-9", REQUEST)
            sender.sendmsg([encode(handed)], rights)
            sender.sendmsg([b"not a handed request"], rights)
            await eventually(lambda: inbox.received == 1, what="the handed connection", timeout=5)
        ours.close()  # as the first router does once the message is sent
        ((sock, got),) = adopted
        assert got == handed
        sock.sendall(b"answered by the sibling")
        assert client.recv(100) == b"answered by the sibling"
        sock.close()  # the refused copy is closed too: the client sees the end of the stream
        client.settimeout(5)
        assert client.recv(100) == b""
    finally:
        inbox.close()
        client.close()
    assert not socket_path(tmp_path, "w1").exists()
