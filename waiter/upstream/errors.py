"""What can go wrong talking to a backend (see waiter.upstream)."""

from __future__ import annotations

from collections.abc import AsyncIterator

Body = bytes | AsyncIterator[bytes] | None


class UpstreamError(Exception):
    """Base of every failure talking to a backend."""


class ConnectError(UpstreamError):
    """Could not connect (refused, unreachable, connect timeout). Nothing was sent: retry elsewhere."""


class UpstreamTimeout(UpstreamError):
    """No byte from the backend for idle_timeout seconds (waiting for the head, between body chunks, or to drain)."""


class UpstreamClosed(UpstreamError):
    """The backend closed or broke the connection before the response was complete."""
