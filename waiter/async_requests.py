"""Async requests (docs/api.md §4 "Async"): a backend that answers ``202 Accepted`` with a relative ``Location``
goes on working after the response. The router rewrites that Location to
``/waiter-async/status/<request-id>/<router-id>/<service-id>/<host>/<port><location>`` and keeps the request's slot
(the instance is busy) until the backend's status URL stops answering 200, the client calls
``/waiter-async/complete/...``, or ``async-request-timeout`` passes. Any router serves the ``/waiter-async/...``
paths: they name the instance, which must be a live instance of the named service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from posixpath import normpath
from urllib.parse import quote, unquote, urljoin

from waiter.aio import stop

log = logging.getLogger(__name__)

PREFIX = "/waiter-async/"
KINDS = ("status", "result", "complete")
DEFAULT_CHECK_INTERVAL_SECS = 3
DEFAULT_TIMEOUT_SECS = 60
MAX_TIMEOUT_SECS = 4 * 3600


@dataclass(frozen=True, slots=True)
class AsyncPath:
    kind: str
    request_id: str
    router_id: str
    service_id: str
    host: str
    port: int
    location: str  # the backend's path (and query) on the instance

    def with_kind(self, kind: str, location: str | None = None) -> str:
        parts = (self.request_id, self.router_id, self.service_id, self.host, str(self.port))
        return f"{PREFIX}{kind}/" + "/".join(quote(p, safe="") for p in parts) + (location or self.location)


def status_path(request_id: str, router_id: str, service_id: str, host: str, port: int, location: str) -> str:
    return AsyncPath("status", request_id, router_id, service_id, host, port, location).with_kind("status")


def parse(raw_path: str) -> AsyncPath | None:
    """The parts of a /waiter-async/... path (raw, query included); None when it is not one."""
    if not raw_path.startswith(PREFIX):
        return None
    parts = raw_path[len(PREFIX) :].split("/", 6)
    if len(parts) != 7 or parts[0] not in KINDS or not parts[5].isdigit():
        return None
    kind, request_id, router_id, service_id, host, port, rest = parts
    return AsyncPath(
        kind, unquote(request_id), unquote(router_id), unquote(service_id), unquote(host), int(port), "/" + rest
    )


def backend_location(location: str, request_path: str) -> str | None:
    """A relative Location of a 202 as a path on the instance; None for an absolute URL (left as it is)."""
    if not location or "://" in location.split("?", 1)[0] or location.startswith("//"):
        return None
    joined = urljoin(request_path, location)
    path, sep, query = joined.partition("?")
    return normpath(path) + sep + query if path else None


Check = Callable[[str], Awaitable[int]]  # GET a path on the instance; its status (0 when it could not answer)


class AsyncHolds:
    """Slots kept for async requests in progress on this router, each watched by a task until it ends."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def hold(
        self,
        request_id: str,
        location: str,
        check: Check,
        release: Callable[[], object],
        *,
        interval: float,
        timeout: float,
    ) -> None:
        """Keep the slot (``release`` frees it) until ``location`` stops answering 200 or ``timeout`` passes."""
        task = asyncio.create_task(self._watch(location, check, release, interval, timeout), name=f"async {request_id}")
        self._tasks[request_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(request_id, None))

    def complete(self, request_id: str) -> bool:
        """The client says the request is over: free its slot now. False when this router holds no such request."""
        task = self._tasks.get(request_id)
        if task is None:
            return False
        task.cancel()
        return True

    async def close(self) -> None:
        await stop(list(self._tasks.values()))

    @staticmethod
    async def _watch(
        location: str, check: Check, release: Callable[[], object], interval: float, timeout: float
    ) -> None:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await asyncio.sleep(interval)
                    status = await check(location)
                    if status != 200:  # done (303 to the result), gone (404/410) or broken: the instance is free
                        return
        except TimeoutError:
            log.info("async request at %s still running after %g s; its slot is released", location, timeout)
        finally:
            with contextlib.suppress(Exception):
                release()
