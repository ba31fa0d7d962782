"""Watches (docs/api.md §1.5, §1.10): ``?watch=true`` turns a listing into a stream of newline-delimited JSON, the
whole listing first (``{"type": "INITIAL", "objects": [...]}``), then what changed
(``{"type": "EVENTS", "objects": [{"type": "UPDATE"|"DELETE", "id": ..., "object": {...}}]}``), until
``streaming-timeout`` (ms) passes, or the router stops (a watch never holds up its drain).

Changes made through another router reach this one through the shared state (tokens within milliseconds, services
within a coordinator tick), and the stream looks every POLL_SECS, so a watcher sees them within a second.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any

from aiohttp import web

from waiter.api.common import request_cid
from waiter.errors import WaiterError
from waiter.version import SERVER_HEADER

POLL_SECS = 0.1
DEFAULT_TIMEOUT_MS = 600_000
MAX_TIMEOUT_MS = 3_600_000

Snapshot = Callable[[], Awaitable[Mapping[str, Any]]]


def streaming_timeout(request: web.BaseRequest) -> float:
    """The watch's duration in seconds, from ``streaming-timeout`` (ms); 400 naming the value when it is bad."""
    raw = request.query.get("streaming-timeout")
    if raw is None:
        return DEFAULT_TIMEOUT_MS / 1000
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 0 < value <= MAX_TIMEOUT_MS:
        raise WaiterError(
            400, f"streaming-timeout is {raw!r} but must be a number of milliseconds in [1, {MAX_TIMEOUT_MS}]."
        )
    return value / 1000


def events(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What changed between two listings keyed by id (pure)."""
    changed = [{"type": "UPDATE", "id": key, "object": obj} for key, obj in after.items() if before.get(key) != obj]
    gone = [{"type": "DELETE", "id": key, "object": obj} for key, obj in before.items() if key not in after]
    return changed + gone


async def stream(
    request: web.BaseRequest,
    snapshot: Snapshot,
    draining: Callable[[], bool],
    version: Callable[[], Hashable] | None = None,
) -> web.StreamResponse:
    """Serve the watch: ``snapshot`` lists the objects by id; it is taken again whenever ``version()`` changes
    (every POLL_SECS when there is no version to compare). It ends early once ``draining()``."""
    timeout = streaming_timeout(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    response = web.StreamResponse(
        headers={
            "content-type": "application/x-ndjson",
            "server": SERVER_HEADER,
            "x-cid": request_cid(request),
            "cache-control": "no-store",
        }
    )
    mark = version() if version is not None else None
    current = await snapshot()
    await response.prepare(request)
    try:
        await _send(response, {"type": "INITIAL", "objects": list(current.values())})
        while (left := deadline - loop.time()) > 0 and not draining():
            await asyncio.sleep(min(POLL_SECS, left))
            if version is not None:
                now = version()
                if now == mark:
                    continue
                mark = now
            latest = await snapshot()
            found = events(current, latest)
            current = latest
            if found:
                await _send(response, {"type": "EVENTS", "objects": found})
        await response.write_eof()
    except ConnectionResetError:
        pass  # the watcher left
    return response


async def _send(response: web.StreamResponse, body: dict[str, Any]) -> None:
    await response.write(json.dumps(body).encode() + b"\n")
