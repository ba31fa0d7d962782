"""The rules of forwarding a request to a service's instance, shared by every path that forwards one: which headers
are hop-by-hop, which the router sets itself, the timeouts a request gets, the slot-and-retry loop, and how backend
failures become the router's 502 and 504. No HTTP server or client lives here (waiter.frontdoor, waiter.upstream).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from waiter.debug import DebugInfo, debug_headers
from waiter.descriptor import RequestOptions
from waiter.errors import WaiterError
from waiter.scheduler.base import Instance
from waiter.service import Service, Timeouts
from waiter.upstream import ConnectError, UpstreamClosed, UpstreamError, UpstreamTimeout

R = TypeVar("R")
log = logging.getLogger(__name__)

# Hop-by-hop headers (RFC 9110 §7.6.1) plus the framing headers each hop sets itself.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"expect",
    }
)
# Request headers not forwarded to a backend as received: hop-by-hop, and the two the router sets itself.
REQUEST_DROP = HOP_BY_HOP | {b"x-cid", b"x-forwarded-for"}
# Response headers not passed back as received: the router sets x-cid itself.
RESPONSE_DROP = HOP_BY_HOP | {b"x-cid"}
# An upgrade keeps the headers that make it one (Connection: Upgrade is written by the forwarding side), and so
# does the instance's 101 that accepts it.
UPGRADE_DROP = REQUEST_DROP - {b"upgrade"}
RESPONSE_DROP_101 = frozenset({b"x-cid"})

SMALL_BODY = 64 * 1024  # responses up to this size are read whole and written with their head in one piece
NO_BODY_STATUSES = frozenset({204, 304})
MAX_CONNECT_ATTEMPTS = 3

# Generated correlation ids keep Waiter's <hex-nanotime>-<hex-random> shape: the time and random part are drawn once
# per process and a counter makes each id unique, so a request costs no clock read and no urandom call.
_CID_PREFIX = f"{time.time_ns():x}-{os.urandom(4).hex()}"
_cid_counter = itertools.count(1)


def new_cid() -> str:
    return f"{_CID_PREFIX}{next(_cid_counter):08x}"


_CID_PREFIX_BYTES = _CID_PREFIX.encode()


def new_cid_bytes() -> bytes:
    """``new_cid()`` as bytes, made as such for the front door, which writes it into heads."""
    return b"%s%08x" % (_CID_PREFIX_BYTES, next(_cid_counter))


def timeouts(options: RequestOptions, defaults: Timeouts) -> Timeouts:
    """The request's headers override the token's timeouts (docs/api.md §3.1)."""
    if options.queue_timeout_ms is None and options.timeout_ms is None and options.streaming_timeout_ms is None:
        return defaults
    return Timeouts(
        queue_ms=options.queue_timeout_ms or defaults.queue_ms,
        socket_ms=options.timeout_ms or defaults.socket_ms,
        streaming_ms=options.streaming_timeout_ms or defaults.streaming_ms,
    )


def connection_tokens(value: bytes | None) -> frozenset[bytes]:
    """The header names a Connection header lists (hop-by-hop for this message only), lowercase."""
    return frozenset(t.strip().lower() for t in value.split(b",")) if value else frozenset()


class Timing:
    """When a proxied request started waiting for an instance and when it was sent to one (for debug headers)."""

    __slots__ = ("received_at", "sent_ns", "start_ns")

    def __init__(self) -> None:
        self.received_at = time.time()
        self.start_ns = self.sent_ns = time.perf_counter_ns()

    def sent(self) -> None:
        self.sent_ns = time.perf_counter_ns()

    def headers(
        self, router_id: str, cid: str, service: Service, limits: Timeouts, instance: Instance
    ) -> list[tuple[str, str]]:
        info = DebugInfo(
            router_id=router_id,
            cid=cid,
            received_at=self.received_at,
            service_id=service.id,
            limits=limits,
            instance=instance,
            get_instance_ns=self.sent_ns - self.start_ns,
            backend_response_ns=time.perf_counter_ns() - self.sent_ns,
        )
        return debug_headers(info)


def backend_timeout(service: Service, instance: Instance) -> WaiterError:
    return WaiterError(
        504,
        "Request to service backend timed out",
        error_class="waiter.BackendError",
        service_id=service.id,
        instance_id=instance.id,
    )


def backend_failure(service: Service, instance: Instance, exc: BaseException) -> WaiterError:
    """A 502 naming the instance that failed and how, in words of ours; what the exception said goes to the log."""
    where = f"{instance.host}:{instance.port}"
    log.warning("request to instance %s (%s) of service %s failed: %s", instance.id, where, service.id, exc)
    if isinstance(exc, ConnectError):
        how = "could not be connected to"
    elif isinstance(exc, UpstreamClosed):
        how = "closed the connection, or sent what is not HTTP/1.1, before its response was complete"
    else:
        how = "did not complete the exchange"
    return WaiterError(
        502,
        f"Request to service backend failed: the instance at {where} {how}.",
        error_class="waiter.BackendError",
        service_id=service.id,
        instance_id=instance.id,
    )


def backend_error(service: Service, instance: Instance, exc: UpstreamError) -> WaiterError:
    """A failure talking to the backend as the router's answer: 504 for a timeout, else 502."""
    if isinstance(exc, UpstreamTimeout):
        return backend_timeout(service, instance)
    return backend_failure(service, instance, exc)


async def open_upstream(
    service: Service,
    limits: Timeouts,
    send: Callable[[Instance], Awaitable[R]],
    waiting: Callable[[bool], None] = lambda _on: None,
) -> tuple[Instance, R, float]:
    """Take a slot and ``send`` the request to its instance, until the response head is in. ``waiting`` is told
    when the request starts and stops waiting in the queue (waiter.client_connection.Connection.abandonable).

    A refused connection (nothing sent) ejects the instance and tries another, up to MAX_CONNECT_ATTEMPTS; other
    failures talking to the backend become the router's 502/504. On success the caller owns the slot and the
    response: release both (the slot with ``Service.done`` and the returned ``time.monotonic()`` at which it was
    taken)."""
    attempt = 0
    while True:
        instance = service.take()
        if instance is None:
            waiting(True)
            try:
                instance = await service.wait(limits.queue_ms)
            finally:
                waiting(False)
        taken = time.monotonic()
        try:
            return instance, await send(instance), taken
        except ConnectError:
            service.release(instance.id)
            service.eject(instance.id)
            attempt += 1
            if attempt >= MAX_CONNECT_ATTEMPTS:
                raise WaiterError(
                    502,
                    "Request failed to connect to service backend",
                    error_class="waiter.BackendError",
                    service_id=service.id,
                    instance_id=instance.id,
                ) from None
        except UpstreamError as exc:
            service.release(instance.id)
            raise backend_error(service, instance, exc) from None
        except BaseException:
            service.release(instance.id)
            raise
