"""Bearer JWTs verified against the issuer's JWKS (PyJWT with cryptography: no hand-written signature checks).

The key set comes from ``jwks-url`` (or ``jwks-file``): loaded at start, again every ``jwks-refresh-secs``, and when
a token names a ``kid`` the set does not hold (keys rotate) — at most once a second for unknown kids, so garbage
tokens cannot turn the router into a JWKS flooder. A failed refresh keeps the keys already known.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import aiohttp
import jwt

from waiter.auth.base import AuthRequest, Caller, Identity, authorization, unauthenticated, user_of
from waiter.errors import WaiterError
from waiter.settings import JwtConfig

log = logging.getLogger(__name__)

_FETCH_TIMEOUT_SECS = 5.0
_UNKNOWN_KID_REFRESH_SECS = 1.0
# A verified token is remembered this long (never past its exp): a signature check costs 100-170 us of CPU, the
# lookup nothing. A key removed from the JWKS stops working for cached tokens after this delay.
VERIFIED_TTL_SECS = 60.0
_VERIFIED_MAX = 10_000


def _refusal(error: jwt.InvalidTokenError, user_claim: str) -> str:
    """Why PyJWT refused a token, in our words (its messages name its own checks, not the caller's token)."""
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"it has no {error.claim} claim; required: exp, iss, aud and {user_claim}"
    if isinstance(error, jwt.InvalidSignatureError):
        return "its signature does not verify with the issuer's key"
    if isinstance(error, jwt.DecodeError):
        return "its payload is not base64url-encoded JSON, or a time claim (exp, nbf, iat) is not a number"
    if isinstance(error, jwt.InvalidIssuedAtError):
        return "its iat claim is not a number"
    return "it fails the checks of its signature and claims (exp, nbf, iat, iss, aud)"


class JwtAuthenticator:
    name = "jwt"
    schemes = frozenset({"bearer"})

    def __init__(self, config: JwtConfig, *, clock: Any = time.monotonic) -> None:
        self.config = config
        self.challenges: tuple[str, ...] = ('Bearer realm="waiter"',)
        self._clock = clock
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._loaded_at = float("-inf")
        self._unknown_kid_at = float("-inf")
        self._generation = 0
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self.last_error: str | None = None
        # token -> (identity, monotonic time it may be used until, its exp in epoch seconds)
        self._verified: dict[str, tuple[Identity, float, float]] = {}

    async def start(self) -> None:
        if self.config.jwks_url:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_FETCH_TIMEOUT_SECS))
        await self._refresh(self._generation)
        if self.last_error:
            log.warning("JWT authenticator: %s; tokens are refused until the key set loads", self.last_error)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _fail(self, message: str) -> WaiterError:
        return unauthenticated(message, self.challenges)

    async def authenticate(self, request: AuthRequest) -> Identity | None:
        scheme, token = authorization(request)
        if scheme != "bearer":
            return None
        known = self._verified.get(token)
        if known is not None:
            identity, until, expires = known
            if self._clock() < until and time.time() < expires + self.config.leeway_secs:
                return identity
            del self._verified[token]
        identity, expires = await self._verify(token)
        if len(self._verified) >= _VERIFIED_MAX:
            self._verified.clear()
        self._verified[token] = (identity, self._clock() + VERIFIED_TTL_SECS, expires)
        return identity

    async def _verify(self, token: str) -> tuple[Identity, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            log.debug("bearer token refused: %s", exc)
            parts = token.count(".") + 1
            shape = f"it has {parts} parts" if parts != 3 else "its parts are not base64url, or its header is not JSON"
            raise self._fail(
                f"The bearer token is not a valid JWT: {shape}; a JWT is three base64url parts joined by dots."
            ) from None
        alg = header.get("alg")
        if alg not in self.config.algorithms:
            raise self._fail(
                f"The bearer token is signed with alg {alg!r}, which this router does not accept; "
                f"allowed: {', '.join(self.config.algorithms)}."
            )
        kid = header.get("kid")
        key = await self._key(kid if isinstance(kid, str) else None)
        if key is None:
            raise self._fail(f"The bearer token's key id {kid!r} is not in the issuer's key set (JWKS).")
        if key.algorithm_name and key.algorithm_name != alg:
            raise self._fail(f"The bearer token's alg {alg!r} does not match its key's alg {key.algorithm_name!r}.")
        claim = self.config.user_claim
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=self.config.audience,
                issuer=self.config.issuer,
                leeway=self.config.leeway_secs,
                options={"require": ["exp", "iss", "aud", claim]},
            )
        except jwt.ExpiredSignatureError:
            raise self._fail("The bearer token has expired (exp is in the past).") from None
        except jwt.ImmatureSignatureError:
            raise self._fail("The bearer token is not valid yet (nbf or iat is in the future).") from None
        except jwt.InvalidIssuerError:
            raise self._fail(f"The bearer token's issuer (iss) is not {self.config.issuer!r}.") from None
        except jwt.InvalidAudienceError:
            raise self._fail(f"The bearer token's audience (aud) does not include {self.config.audience!r}.") from None
        except jwt.InvalidTokenError as exc:
            log.debug("bearer token refused: %s", exc)
            raise self._fail(f"The bearer token is not valid: {_refusal(exc, claim)}.") from None
        principal = claims.get(claim)
        if not isinstance(principal, str) or not principal:
            raise self._fail(f"The bearer token's {claim} claim must name the caller (a non-empty string).")
        return Identity(Caller(user_of(principal), principal, self.name)), float(claims["exp"])

    async def _key(self, kid: str | None) -> jwt.PyJWK | None:
        now = self._clock()
        generation = self._generation
        if now - self._loaded_at >= self.config.jwks_refresh_secs:
            await self._refresh(generation)
        elif self._find(kid) is None and now - self._unknown_kid_at >= _UNKNOWN_KID_REFRESH_SECS:
            self._unknown_kid_at = now
            await self._refresh(generation)
        return self._find(kid)

    def _find(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    async def _refresh(self, seen_generation: int) -> None:
        """Load the key set, once for every caller that saw ``seen_generation``."""
        async with self._lock:
            if self._generation != seen_generation:
                return  # another request refreshed it while this one waited
            try:
                data = await self._fetch()
                keys = {k.key_id: k for k in jwt.PyJWKSet.from_dict(data).keys}
            except (OSError, aiohttp.ClientError, TimeoutError, ValueError, jwt.PyJWKSetError) as exc:
                source = self.config.jwks_url or self.config.jwks_file
                self.last_error = f"cannot load the JWKS from {source}: {exc or type(exc).__name__}"
                log.warning("JWT authenticator: %s", self.last_error)
            else:
                self._keys, self.last_error = keys, None
            self._loaded_at = self._clock()
            self._generation += 1

    async def _fetch(self) -> dict[str, Any]:
        if self.config.jwks_file is not None:
            data = json.loads(await asyncio.to_thread(self.config.jwks_file.read_text))
        else:
            assert self._session is not None, "start() opens the session"
            async with self._session.get(self.config.jwks_url) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                data = await resp.json(content_type=None)
        if not isinstance(data, dict):
            raise ValueError("the JWKS is not a JSON object")
        return data
