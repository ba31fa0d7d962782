"""A backend's response as an exchange returns it once its head is parsed; the body is read through it."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

from waiter.upstream.errors import UpstreamError

if TYPE_CHECKING:
    from waiter.upstream.connection import Connection

_ENC, _ERRORS = "utf-8", "surrogateescape"
Chunk = bytes | memoryview  # a piece of a response body


class UpstreamResponse:
    """A backend's response, returned as soon as its head is parsed; the body is read with ``read_chunk``.

    ``content_length`` echoes the header even for responses that have no body (HEAD, 204, 304); their body is empty.
    ``idle_timeout`` starts as the request's and may be changed before reading the body.
    """

    __slots__ = (
        "_conn",
        "chunked",
        "content_length",
        "idle_timeout",
        "keep_alive",
        "raw_headers",
        "raw_reason",
        "status",
    )

    def __init__(self, conn: Connection) -> None:
        self._conn: Connection | None = conn
        ex = conn.ex
        self.status: int = ex.status
        self.raw_reason: bytes = ex.reason
        self.raw_headers: list[tuple[bytes, bytes]] = ex.headers  # as received, for writing on unchanged
        self.content_length: int | None = None if ex.chunked else ex.clen
        self.chunked: bool = ex.chunked
        self.keep_alive: bool = ex.keep_alive
        self.idle_timeout: float = ex.idle_timeout

    @property
    def reason(self) -> str:
        return self.raw_reason.decode(_ENC, _ERRORS)

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [(name.decode(_ENC, _ERRORS), value.decode(_ENC, _ERRORS)) for name, value in self.raw_headers]

    def __repr__(self) -> str:
        return f"<UpstreamResponse {self.status} {self.reason!r} content_length={self.content_length}>"

    async def read_chunk(self) -> bytes:
        """The next piece of the body as it arrives; ``b""`` at its end."""
        parts = await self.read_parts()
        return parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else b"".join(parts)

    async def read_parts(self) -> list[Chunk]:
        """The next pieces of the body as they arrived (bytes, or views of what the socket gave), not joined;
        ``[]`` at its end. A proxy writes them on as they are."""
        conn = self._conn
        if conn is None:
            raise UpstreamError("The body was read after release(); it is gone.")
        ex = conn.ex
        while True:
            if ex.chunks:
                return conn.take()
            if ex.done:
                return []
            if ex.exc is not None:
                raise ex.exc
            fut = conn._wait_start(self.idle_timeout, "sent no more of the response body", False)
            try:
                await fut
            finally:
                conn._wait_end(False)

    def complete_body(self) -> list[Chunk] | None:
        """The whole body if it has arrived already (no await needed), else None: read it with read_parts."""
        conn = self._conn
        if conn is None or not conn.ex.done or conn.ex.exc is not None:
            return None
        return conn.take()

    async def read_all(self, limit: int) -> bytes:
        """The whole body, for small ones; raises UpstreamError past ``limit`` bytes. Still call release()."""
        parts: list[bytes] = []
        size = 0
        while chunk := await self.read_chunk():
            size += len(chunk)
            if size > limit:
                raise UpstreamError(f"The response body is larger than the limit of {limit} bytes.")
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        """Pool the connection if the body was read to its end and the backend keeps it alive, else close it.

        Must always be called; calling it again does nothing."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finish()

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
