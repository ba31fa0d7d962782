"""A lean asyncio HTTP/1.1 client for forwarding requests to backend instances, cut as httpcore cuts its own:
``errors`` (what can go wrong), ``connection`` (one keep-alive connection carrying one exchange at a time, its
per-exchange state in one object, and the response it returns), ``pool`` (connections reused per endpoint).

aiohttp's ClientSession spends 95-140 µs of CPU on a request, mostly on what a reverse proxy does not need (cookies,
redirects, URL objects, multidicts). This client speaks HTTP/1.1 on ``asyncio.Protocol`` with ``httptools`` parsing,
keeps a LIFO pool of keep-alive connections per (host, port), and streams both bodies with flow control. It runs on
the default loop and on uvloop. A response is used as ``async with response:`` (or released with ``release()``),
which returns its connection to the pool when its body was read to the end. Exceptions::

    UpstreamError
    ├── ConnectError      could not connect; nothing was sent, another instance may be tried
    ├── UpstreamTimeout   the backend sent (or accepted) nothing for idle_timeout seconds
    └── UpstreamClosed    the connection ended or broke before the response was complete

Header names and values are ``str`` encoded and decoded as UTF-8 with ``surrogateescape``, aiohttp's own convention,
so the bytes a client sent reach the backend unchanged. Protocol upgrades are not this client's: the front door
tunnels them itself (waiter.http1.Tunnel).
"""

from waiter.upstream.errors import ConnectError, UpstreamClosed, UpstreamError, UpstreamTimeout
from waiter.upstream.pool import UpstreamPool
from waiter.upstream.response import Chunk, UpstreamResponse

__all__ = [
    "Chunk",
    "ConnectError",
    "UpstreamClosed",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamResponse",
    "UpstreamTimeout",
]
