"""The simple authenticators (one-user, trusted-header) and the configured list of them (Waiter's composite)."""

from __future__ import annotations

import ipaddress
import logging

from waiter.auth.base import Authenticator, AuthRequest, Caller, Identity, authorization, unauthenticated, user_of
from waiter.settings import Settings, TrustedHeaderConfig

log = logging.getLogger(__name__)


class OneUserAuthenticator:
    """Every caller is the same configured user (Waiter's one-user authenticator)."""

    name = "one-user"
    schemes: frozenset[str] = frozenset()
    challenges: tuple[str, ...] = ()

    def __init__(self, user: str) -> None:
        self.identity = Identity(Caller(user, user, self.name))

    async def authenticate(self, request: AuthRequest) -> Identity | None:
        return self.identity

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


class TrustedHeaderAuthenticator:
    """Behind an authenticating proxy: the proxy names the caller in a header, believed only from its networks."""

    name = "trusted-header"
    schemes: frozenset[str] = frozenset()
    challenges: tuple[str, ...] = ()

    def __init__(self, config: TrustedHeaderConfig) -> None:
        self.header = config.header
        self.networks = tuple(ipaddress.ip_network(c, strict=False) for c in config.trusted_cidrs)

    def trusted(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    async def authenticate(self, request: AuthRequest) -> Identity | None:
        principal = request.headers.get(self.header, "").strip()
        if not principal:
            return None
        if not self.trusted(request.peer):
            raise unauthenticated(
                f"The {self.header} header is believed only from the trusted-cidrs of the trusted-header "
                f"authenticator, and {request.peer or 'this peer'} is not in them."
            )
        return Identity(Caller(user_of(principal), principal, self.name))

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


class Authenticators:
    """The configured authenticators, tried in order: the first that recognises the request decides."""

    def __init__(self, members: list[Authenticator]) -> None:
        self.members = members
        self.schemes = frozenset(s for m in members for s in m.schemes)
        self.challenges = tuple(c for m in members for c in m.challenges)
        self.names = ", ".join(m.name for m in members)
        # one-user first: every request is its user, so a cookie could only name the same caller (not worth parsing)
        first = members[0] if members else None
        self._everyone = first.identity if isinstance(first, OneUserAuthenticator) else None
        self.vouches_for_all = self._everyone is not None

    def identity_now(self) -> Identity | None:
        """The caller when it is known without looking at the request (the one-user authenticator first)."""
        return self._everyone

    async def authenticate(self, request: AuthRequest) -> Identity:
        for member in self.members:
            identity = await member.authenticate(request)
            if identity is not None:
                return identity
        scheme, _ = authorization(request)
        offered = f" (the {scheme} credentials sent are not accepted here)" if scheme else ""
        raise unauthenticated(
            f"Authentication required: this router authenticates callers with {self.names}{offered}.",
            self.challenges,
        )

    async def start(self) -> None:
        for member in self.members:
            await member.start()

    async def close(self) -> None:
        for member in self.members:
            await member.close()


def create_authenticators(settings: Settings) -> Authenticators:
    members: list[Authenticator] = []
    for kind in settings.auth.kinds:
        if kind == "one-user":
            members.append(OneUserAuthenticator(settings.auth.one_user or settings.run_as_user))
        elif kind == "trusted-header":
            members.append(TrustedHeaderAuthenticator(settings.auth.trusted_header))
        elif kind == "jwt":
            from waiter.auth.jwt import JwtAuthenticator

            members.append(JwtAuthenticator(settings.auth.jwt))
        elif kind == "kerberos":
            from waiter.auth.kerberos import KerberosAuthenticator

            members.append(KerberosAuthenticator(settings.auth.kerberos))
        else:  # settings validation allows only the kinds above
            raise ValueError(f"authenticator kind {kind!r} is not known")
    return Authenticators(members)
