"""The x-waiter-debug response headers (docs/api.md §4), on proxied answers and on the router's own errors alike.

Clients (and Waiter's integration tests) read them to learn which router, service and instance served a request and
how long each stage took; a router-made error for a resolved service carries all that is known at that point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from waiter.errors import WaiterError, iso_millis
from waiter.scheduler.base import Instance
from waiter.service import Timeouts


def log_path(service_id: str, instance_id: str, host: str, directory: str | None = None) -> str:
    """The router path that lists an instance's sandbox (or one of its directories)."""
    query = {"instance-id": instance_id, "host": host}
    if directory:
        query["directory"] = directory
    return f"/apps/{service_id}/logs?{urlencode(query)}"


def wants_debug(waiter_headers: Sequence[tuple[str, str]]) -> bool:
    """Whether the request asked for debug headers (``x-waiter-debug: true``, case-insensitive)."""
    return any(name == "x-waiter-debug" and value.strip().lower() == "true" for name, value in waiter_headers)


@dataclass(frozen=True, slots=True)
class DebugInfo:
    """What one request learned on its way; None where it never got that far."""

    router_id: str
    cid: str
    received_at: float  # epoch seconds
    client_protocol: str = "HTTP/1.1"
    service_id: str | None = None
    limits: Timeouts | None = None
    instance: Instance | None = None
    instance_id: str | None = None  # when only the id is known (an error naming the instance)
    get_instance_ns: int | None = None
    backend_response_ns: int | None = None


def debug_headers(info: DebugInfo) -> list[tuple[str, str]]:
    headers = [
        ("x-waiter-router-id", info.router_id),
        ("x-waiter-request-id", info.cid),
        ("x-waiter-request-date", iso_millis(info.received_at) or ""),
        ("x-waiter-client-protocol", info.client_protocol),
        ("x-waiter-internal-protocol", "HTTP/1.1"),
    ]
    if info.service_id is not None:
        headers.append(("x-waiter-service-id", info.service_id))
    if info.limits is not None:
        headers += [
            ("x-waiter-queue-timeout-ms", str(info.limits.queue_ms)),
            ("x-waiter-socket-timeout-ms", str(info.limits.socket_ms)),
            ("x-waiter-streaming-timeout-ms", str(info.limits.streaming_ms)),
        ]
    instance = info.instance
    if instance is not None:
        headers += [
            ("x-waiter-backend-id", instance.id),
            ("x-waiter-backend-host", instance.host),
            ("x-waiter-backend-port", str(instance.port)),
            ("x-waiter-backend-proto", "http"),
        ]
        if instance.log_directory:
            headers.append(("x-waiter-backend-directory", instance.log_directory))
            # On this router (the one that answered): GET it for the sandbox's files.
            log_url = log_path(instance.service_id, instance.id, instance.host)
            headers.append(("x-waiter-backend-log-url", log_url))
    elif info.instance_id is not None:
        headers.append(("x-waiter-backend-id", info.instance_id))
    if info.get_instance_ns is not None:
        headers.append(("x-waiter-get-available-instance-ns", str(info.get_instance_ns)))
    if info.backend_response_ns is not None:
        headers.append(("x-waiter-backend-response-ns", str(info.backend_response_ns)))
    return headers


def add_to_error(err: WaiterError, info: DebugInfo) -> None:
    """Give a router-made error the debug headers a proxied answer would carry (as far as the request got)."""
    found = DebugInfo(
        router_id=info.router_id,
        cid=info.cid,
        received_at=info.received_at,
        client_protocol=info.client_protocol,
        service_id=info.service_id or err.service_id,
        limits=info.limits,
        instance_id=err.instance_id,
    )
    for name, value in debug_headers(found):
        err.headers.setdefault(name, value)
