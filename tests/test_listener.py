"""The listening socket of a stopping router: new handshakes dropped, established connections untouched."""

from __future__ import annotations

import socket
import sys

import pytest

from waiter.listener import half_open, refuse_new_handshakes

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="socket filters and /proc/net/tcp are Linux's")


@linux_only
def test_a_refusing_listener_drops_new_handshakes_and_keeps_the_others() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        before = socket.create_connection(("127.0.0.1", port))
        assert refuse_new_handshakes(listener)
        before.sendall(b"sent after the filter")
        accepted, _ = listener.accept()
        with before, accepted:
            assert accepted.recv(64) == b"sent after the filter"
            accepted.sendall(b"answer")
            assert before.recv(64) == b"answer"
        with socket.socket() as late:
            late.settimeout(0.5)
            with pytest.raises(TimeoutError):  # its SYN is dropped: no answer, no reset
                late.connect(("127.0.0.1", port))
        assert half_open(port) == 0

