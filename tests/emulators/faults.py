"""Faults the emulators inject on request (``POST /emulator/faults``): the next ``count`` API requests that match
``method`` and a ``path`` prefix wait ``delay-ms`` and then, if ``status`` is set, fail with it, each emulator in its
API's error format (a slow or failing API server)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web


@dataclass
class Fault:
    status: int | None
    count: int
    delay_ms: int
    method: str | None = None
    path: str | None = None
    message: str | None = None  # the error body's message and details, where the API's errors have them
    details: Any = None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Fault:
        return cls(
            status=int(body["status"]) if body.get("status") else None,
            count=int(body.get("count", 1)),
            delay_ms=int(body.get("delay-ms", 0)),
            method=body.get("method"),
            path=body.get("path"),
            message=body.get("message"),
            details=body.get("details"),
        )

    def matches(self, request: web.Request) -> bool:
        return (self.method is None or self.method.upper() == request.method) and (
            self.path is None or request.path.startswith(self.path)
        )


def take_fault(faults: list[Fault], request: web.Request) -> Fault | None:
    """The first pending fault that matches the request, counted down (and gone once used up)."""
    for fault in faults:
        if fault.matches(request):
            fault.count -= 1
            if fault.count <= 0:
                faults.remove(fault)
            return fault
    return None
