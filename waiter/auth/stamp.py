"""How the front door tells the aiohttp app behind it who calls.

The app listens on a private loopback port; anything on the machine can connect to it. It serves only requests
that carry this process's secret, which the front door adds after dropping every client-supplied copy of these
headers, so the caller it names is the one the front door authenticated.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import quote, unquote

from waiter.auth.base import Caller

SECRET_HEADER = "x-router-internal-secret"
CALLER_HEADER = "x-router-internal-caller"
INTERNAL_PREFIX = b"x-router-internal-"


class Stamp:
    def __init__(self) -> None:
        self.secret = secrets.token_urlsafe(32)

    def lines(self, caller: Caller | None) -> bytes:
        """Head lines for a request relayed to the app."""
        line = f"{SECRET_HEADER}: {self.secret}\r\n"
        if caller is not None:
            value = " ".join(quote(v, safe="@/") for v in (caller.user, caller.principal, caller.method))
            line += f"{CALLER_HEADER}: {value}\r\n"
        return line.encode()

    def genuine(self, secret: str | None) -> bool:
        return secret is not None and hmac.compare_digest(secret.encode(), self.secret.encode())


def read_caller(value: str | None) -> Caller | None:
    if not value:
        return None
    parts = value.split(" ")
    if len(parts) != 3:
        return None
    user, principal, method = (unquote(p) for p in parts)
    return Caller(user, principal, method)
