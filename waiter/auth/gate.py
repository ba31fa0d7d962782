"""Authentication in one place: a valid x-waiter-auth cookie, else the configured authenticators in order.

The front door calls ``Gate.authenticate`` for every request that is not public, before anything else happens to
it; what it learns travels with the request (the caller, the cookies to set, whether the Authorization header was
the router's and must not reach a service).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field

from waiter.auth.authenticators import Authenticators, create_authenticators
from waiter.auth.base import AuthRequest, Caller, Identity, authorization
from waiter.auth.cookie import CookieJar, Issued
from waiter.settings import Settings

log = logging.getLogger(__name__)

COOKIE_SECRET_KEY = "waiter:auth-cookie-secret"


@dataclass(frozen=True, slots=True)
class Admission:
    caller: Caller | None  # None: a public endpoint, or a token with authentication disabled
    # Head lines every response to the request gets: the auth cookies (after an authenticator vouched), Kerberos's
    # mutual-authentication token, CORS headers.
    response_lines: bytes = b""
    strip_authorization: bool = False  # the Authorization header carried the router's credentials
    # Answer this at once instead of serving the request (a CORS preflight, an https redirect).
    answer: tuple[int, tuple[tuple[str, str], ...]] | None = None
    # The request head lines that tell a service who calls, made once per admission (not per forwarded request).
    principal_lines: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        caller = self.caller
        lines = b""
        if caller is not None:
            text = f"x-waiter-auth-principal: {caller.user}\r\nx-waiter-authenticated-principal: {caller.principal}\r\n"
            lines = text.encode("utf-8", "surrogateescape")
        object.__setattr__(self, "principal_lines", lines)


PUBLIC = Admission(None)


def header_lines(headers: tuple[tuple[str, str], ...]) -> bytes:
    """Headers as lines of a response head."""
    return "".join(f"{name}: {value}\r\n" for name, value in headers).encode()


class Gate:
    def __init__(self, settings: Settings, authenticators: Authenticators | None = None) -> None:
        self.settings = settings
        self.authenticators = authenticators or create_authenticators(settings)
        self.cookies: CookieJar | None = None
        self._last: tuple[Issued, Identity, bool, Admission] | None = None  # see _admitted

    async def start(self) -> None:
        secret = self.settings.auth.cookie_secret.encode() or await self._shared_secret()
        auth = self.settings.auth
        self.cookies = CookieJar(secret, max_age_secs=auth.cookie_max_age_secs, same_site=auth.cookie_same_site)
        await self.authenticators.start()

    async def close(self) -> None:
        await self.authenticators.close()

    async def _shared_secret(self) -> bytes:
        """The cluster's cookie secret kept in Redis (the first router to start makes it); random without Redis."""
        fresh = secrets.token_hex(32)
        if not self.settings.redis:
            return fresh.encode()
        # the one way to reach Redis, Sentinel URLs included (waiter.redis_client)
        from waiter.redis_client import RedisConnection

        connection = RedisConnection(self.settings.redis, timeout=5.0, health_check_interval=0, decode_responses=False)
        try:
            await connection.client.set(COOKIE_SECRET_KEY, fresh, nx=True)
            stored = await connection.client.get(COOKIE_SECRET_KEY)
        except Exception as exc:
            log.warning("cannot share the auth cookie secret through Redis (%s); cookies work on this router only", exc)
            return fresh.encode()
        finally:
            await connection.aclose()
        if isinstance(stored, str):
            return stored.encode()
        return stored if isinstance(stored, bytes) else fresh.encode()

    async def authenticate(self, request: AuthRequest) -> Admission:
        """Who calls; raises a 401 WaiterError (with the authenticators' challenges) when nobody vouches."""
        admission = self.authenticate_now(request)
        if admission is not None:
            return admission
        identity = await self.authenticators.authenticate(request)
        return self._admitted(identity, self._strip(request))

    def authenticate_now(self, request: AuthRequest) -> Admission | None:
        """``authenticate`` when it needs no I/O (a valid auth cookie, the one-user authenticator); else None."""
        strip = self._strip(request)
        cookies = self.cookies
        if cookies is not None and not self.authenticators.vouches_for_all:
            caller = cookies.from_header(request.headers.get("cookie", ""))
            if caller is not None:
                return Admission(caller, strip_authorization=strip)
        identity = self.authenticators.identity_now()
        return None if identity is None else self._admitted(identity, strip)

    def _strip(self, request: AuthRequest) -> bool:
        schemes = self.authenticators.schemes
        return bool(schemes) and authorization(request)[0] in schemes

    def _admitted(self, identity: Identity, strip: bool) -> Admission:
        cookies = self.cookies
        if cookies is None:
            return Admission(identity.caller, header_lines(identity.reply), strip)
        issued = cookies.issue(identity.caller)
        # The one-user authenticator's every request gets the same answer while its cookie is reused.
        last = self._last
        if last is not None and last[0] is issued and last[1] is identity and last[2] == strip:
            return last[3]
        admission = Admission(identity.caller, issued.lines + header_lines(identity.reply), strip)
        self._last = (issued, identity, strip, admission)
        return admission
