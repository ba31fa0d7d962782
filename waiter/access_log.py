"""The access log: one JSON line per request on stdout when ``access-log: json`` (off by default).

A line, keys in this order (absent values are null)::

    {"time": "2026-11-28T19:30:00.123Z", "router-id": "r1", "cid": "...", "method": "GET", "path": "/hello",
     "token": "hello", "service-id": "waiter-service-...", "instance-id": "...", "status": 200, "bytes": 245,
     "queue-wait-ms": 0.1, "backend-ms": 10.4, "total-ms": 11.0}

``path`` leaves the query string out (it may hold secrets); ``bytes`` counts what went to the client, head
included; ``queue-wait-ms`` is from the request's arrival to its slot, ``backend-ms`` while it held the slot.
``status`` is 499 for a request whose client left before its response head (waiter.exchange.CLIENT_CLOSED).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

from waiter.service import Service

_LOGGER = "waiter.access"


class AccessLog:
    def __init__(self, router_id: str, stream: TextIO | None = None) -> None:
        self.router_id = router_id
        self.log = logging.getLogger(_LOGGER)
        self.log.propagate = False  # its lines are data, not the router's diagnostics
        self.log.setLevel(logging.INFO)
        for old in list(self.log.handlers):  # one router per process; a new one (tests) writes where it is told
            self.log.removeHandler(old)
        handler = logging.StreamHandler(stream or sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        self.log.addHandler(handler)

    def line(
        self,
        *,
        cid: str,
        method: str,
        path: str,
        service: Service | None,
        instance_id: str | None,
        status: int,
        sent: int,
        arrived: float,
        taken: float | None,
        held: float | None,
    ) -> dict[str, Any]:
        """The record of one request (times from ``time.monotonic()``)."""
        now = time.monotonic()
        wall = time.time()
        tokens = ",".join(name for name, _ in service.resolved.source_tokens) if service is not None else ""
        return {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{int(wall % 1 * 1000):03d}Z",
            "router-id": self.router_id,
            "cid": cid,
            "method": method,
            "path": path.split("?", 1)[0],
            "token": tokens or None,
            "service-id": service.id if service is not None else None,
            "instance-id": instance_id,
            "status": status,
            "bytes": sent,
            "queue-wait-ms": None if taken is None else round((taken - arrived) * 1000, 3),
            "backend-ms": None if held is None else round(held * 1000, 3),
            "total-ms": round((now - arrived) * 1000, 3),
        }

    def write(self, record: dict[str, Any]) -> None:
        self.log.info(json.dumps(record, separators=(",", ":")))
