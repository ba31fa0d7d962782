"""Handing a connection to a sibling router (waiter.handoff) over real sockets: the socket arrives with the request
as received; a message that did not arrive whole is refused and its socket closed, never fatal."""

from __future__ import annotations

import array
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import eventually
from waiter.handoff import MAX_MESSAGE, Handoff, socket_path

REQUEST = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\n\0\0\r\n"


def test_socket_paths_fit_a_unix_socket_and_differ_per_router() -> None:
    directory = Path("/tmp/waiter-agent-abcdefgh")
    long_id = "router-" + "x" * 500 + "/../w0"
    paths = {socket_path(directory, rid) for rid in ("a-w0", "a-w1", long_id)}
    assert len(paths) == 3
    assert all(path.parent == directory and len(str(path).encode()) < 108 for path in paths)


@pytest.fixture
def connection() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A client connection: the router's end (what is handed) and the client's."""
    ours, client = socket.socketpair()
    client.settimeout(5)
    yield ours, client
    ours.close()
    client.close()


def ended(client: socket.socket) -> bool:
    """Whether the other end closed, without waiting (the event loop must run meanwhile)."""
    timeout = client.gettimeout()
    client.setblocking(False)
    try:
        return client.recv(100) == b""
    except BlockingIOError:
        return False
    finally:
        client.settimeout(timeout)


def hand(directory: Path, router_id: str, message: bytes, conn: socket.socket) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.connect(str(socket_path(directory, router_id)))
        sender.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [conn.fileno()]))])


async def test_a_sibling_receives_the_socket_with_its_request(tmp_path: Path, connection) -> None:  # type: ignore[no-untyped-def]
    ours, client = connection
    adopted: list[tuple[socket.socket, bytes]] = []
    inbox = Handoff(tmp_path, "w1")
    inbox.open()
    try:
        inbox.receive(lambda sock, request: adopted.append((sock, request)))
        hand(tmp_path, "w1", REQUEST, ours)
        ours.close()  # as the first router does once it is sent
        await eventually(lambda: inbox.received == 1, what="the handed connection", timeout=5)
        ((sock, request),) = adopted
        assert request == REQUEST
        with sock:
            sock.sendall(b"answered by the sibling")
            assert client.recv(100) == b"answered by the sibling"
    finally:
        inbox.close()
    assert client.recv(100) == b""  # nothing else holds the connection
    assert not socket_path(tmp_path, "w1").exists()


async def test_a_request_that_did_not_arrive_whole_is_refused_and_its_connection_closed(
    tmp_path: Path, connection  # type: ignore[no-untyped-def]
) -> None:
    ours, client = connection
    adopted: list[bytes] = []
    inbox = Handoff(tmp_path, "w1")
    inbox.open()
    try:
        inbox.receive(lambda sock, request: adopted.append(request))
        hand(tmp_path, "w1", b"x" * (MAX_MESSAGE + 1), ours)  # longer than a sender ever sends: truncated
        ours.close()
        await eventually(lambda: ended(client), what="the receiver to close its copy, the last one", timeout=5)
        assert (adopted, inbox.received) == ([], 0)
    finally:
        inbox.close()


async def test_a_draining_router_serves_what_was_handed_and_refuses_the_rest(tmp_path: Path, connection) -> None:  # type: ignore[no-untyped-def]
    ours, _ = connection
    adopted: list[bytes] = []
    inbox = Handoff(tmp_path, "w1")
    inbox.open()
    inbox.receive(lambda sock, request: (adopted.append(request), sock.close()))
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [ours.fileno()]))]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sibling:  # connected before, as siblings keep theirs
        sibling.connect(str(socket_path(tmp_path, "w1")))
        sibling.sendmsg([REQUEST], rights)
        inbox.stop_receiving()  # before the loop read it: adopted now
        assert adopted == [REQUEST]
        with pytest.raises((BrokenPipeError, ConnectionRefusedError)):
            sibling.sendmsg([REQUEST], rights)  # fails at once: the sibling serves the request itself
    with pytest.raises(FileNotFoundError):
        hand(tmp_path, "w1", REQUEST, ours)  # and a new sibling finds nobody
    inbox.close()
