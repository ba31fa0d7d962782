"""Who is calling: the caller, the request view authenticators read, and the authenticator protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from waiter.errors import HeaderLookup, WaiterError


@dataclass(frozen=True, slots=True)
class Caller:
    user: str  # the user name permissions are checked against
    principal: str  # how the authenticator knows them (e.g. user@REALM)
    method: str  # which authenticator vouched for them (one-user, jwt, kerberos, trusted-header)


@dataclass(frozen=True, slots=True)
class Identity:
    """What an authenticator established: the caller, and headers for the response (e.g. Kerberos's mutual
    authentication token in WWW-Authenticate)."""

    caller: Caller
    reply: tuple[tuple[str, str], ...] = ()


def user_of(principal: str) -> str:
    """The user name of a principal: ``alice@EXAMPLE.COM`` and ``alice/admin@EXAMPLE.COM`` are ``alice``."""
    return principal.split("@", 1)[0].split("/", 1)[0]


class AuthRequest(Protocol):
    """What authenticators read from a request, whichever server parsed it."""

    @property
    def headers(self) -> HeaderLookup: ...

    @property
    def peer(self) -> str:
        """The address of the connection's other end (never a forwarded header)."""
        ...


def unauthenticated(message: str, challenges: tuple[str, ...] = ()) -> WaiterError:
    headers = {"www-authenticate": ", ".join(challenges)} if challenges else {}
    return WaiterError(401, message, error_class="waiter.Unauthorized", headers=headers)


class Authenticator(Protocol):
    name: str
    # Authorization schemes it reads (lowercase, e.g. "bearer"): those credentials are not forwarded to services.
    schemes: frozenset[str]
    # What a 401 offers the client (WWW-Authenticate challenges), e.g. "Negotiate".
    challenges: tuple[str, ...]

    async def authenticate(self, request: AuthRequest) -> Identity | None:
        """Who calls; None when the request carries nothing this authenticator recognises (the next one is
        asked); raises a 401 WaiterError when it recognises credentials that are not valid."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def authorization(request: AuthRequest) -> tuple[str, str]:
    """The Authorization header as (lowercase scheme, credentials); ("", "") when absent."""
    value = request.headers.get("authorization", "").strip()
    scheme, _, credentials = value.partition(" ")
    return scheme.lower(), credentials.strip()
