"""Waiter's ``x-waiter-auth`` cookie: who was authenticated and until when, sealed with AES-GCM.

Every router of a cluster shares the secret (``auth-cookie.secret``, or one kept in Redis), so a cookie one router
issued is accepted by all of them. A cookie that does not open (tampered, another cluster's, garbage) or has
expired is ignored: the authenticators run as if it were absent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from waiter.auth.base import Caller

AUTH_COOKIE = "x-waiter-auth"
EXPIRES_COOKIE = "x-auth-expires-at"
_AAD = b"x-waiter-auth/1"
_NONCE = 12
# Seconds a cookie may claim to be created in the future (routers' clocks differ a little).
_SKEW_SECS = 60
# The one-user authenticator vouches for every request: reuse its sealed cookie for this long, not seal per request.
_REUSE_SECS = 60


@dataclass(frozen=True, slots=True)
class Issued:
    """The Set-Cookie header values for an authenticated response, and the expiry they announce."""

    set_cookies: tuple[str, str]
    expires_at: int
    lines: bytes  # the same as response head lines

    @classmethod
    def of(cls, set_cookies: tuple[str, str], expires_at: int) -> Issued:
        return cls(set_cookies, expires_at, "".join(f"set-cookie: {c}\r\n" for c in set_cookies).encode())


class CookieJar:
    def __init__(
        self,
        secret: bytes,
        *,
        max_age_secs: int,
        same_site: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._aead = AESGCM(hashlib.sha256(b"waiter auth cookie key\0" + secret).digest())
        self.max_age = max_age_secs
        self.same_site = same_site
        self._clock = clock
        self._recent: dict[Caller, tuple[float, Issued]] = {}

    def seal(self, caller: Caller, created: int) -> str:
        plain = json.dumps([caller.user, caller.principal, caller.method, created, created + self.max_age])
        nonce = os.urandom(_NONCE)
        sealed = nonce + self._aead.encrypt(nonce, plain.encode(), _AAD)
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()

    def open(self, value: str) -> Caller | None:
        """The caller a cookie vouches for; None unless it was sealed with this secret and is still valid."""
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            plain = self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], _AAD)
            user, principal, method, created, expires = json.loads(plain)
        except (ValueError, binascii.Error, InvalidTag, TypeError):
            return None
        now = self._clock()
        if not (isinstance(created, int) and isinstance(expires, int)) or not created - _SKEW_SECS <= now < expires:
            return None
        if not all(isinstance(v, str) and v for v in (user, principal, method)):
            return None
        return Caller(user, principal, method)

    def from_header(self, cookie_header: str) -> Caller | None:
        """The caller of the request's x-waiter-auth cookie (from its Cookie header), if valid."""
        for part in cookie_header.split(";") if AUTH_COOKIE in cookie_header else ():
            name, _, value = part.strip().partition("=")
            if name == AUTH_COOKIE:
                return self.open(value.strip('"'))
        return None

    def issue(self, caller: Caller) -> Issued:
        now = self._clock()
        recent = self._recent.get(caller)
        if recent is not None and now - recent[0] < _REUSE_SECS:
            return recent[1]
        created = int(now)
        expires = created + self.max_age
        attributes = f"Max-Age={self.max_age}; Path=/; SameSite={self.same_site}"
        if self.same_site == "None":
            attributes += "; Secure"  # browsers drop SameSite=None cookies without it
        issued = Issued.of(
            (
                f"{AUTH_COOKIE}={self.seal(caller, created)}; {attributes}; HttpOnly",
                f"{EXPIRES_COOKIE}={expires}; {attributes}",
            ),
            expires,
        )
        if len(self._recent) > 1000:
            self._recent.clear()
        self._recent[caller] = (now, issued)
        return issued


def strip_auth_cookie(cookie_header: bytes) -> bytes:
    """The Cookie header without the router's own cookies (they are not the service's business)."""
    kept = [
        part
        for part in cookie_header.split(b";")
        if part.strip().split(b"=", 1)[0] not in (AUTH_COOKIE.encode(), EXPIRES_COOKIE.encode())
    ]
    return b";".join(kept).strip()
