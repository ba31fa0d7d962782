"""Who is calling, and what they may do with tokens (docs/api.md §0 Auth, §2.5, §3.3).

Authentication is pluggable: an ``Authenticator`` turns a request into a ``Caller`` or raises a 401
``WaiterError``. The default is Waiter's "one user" authenticator, as in its local setup: every caller is the
configured ``run-as-user``. Other authenticators (JWT, ...) register in ``AUTHENTICATORS``.

The permission rules are pure: each ``*_problem`` method returns the sentence to answer with 403, or None.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from waiter.settings import Settings

ANY_USER = "*"


@dataclass(frozen=True, slots=True)
class Caller:
    user: str  # the user name permissions are checked against
    principal: str  # how the authenticator knows them (e.g. user@REALM)
    method: str  # which authenticator vouched for them


class Authenticator(Protocol):
    name: str

    async def authenticate(self, request: web.BaseRequest) -> Caller:
        """The caller of ``request``; raises WaiterError(401) when they cannot be authenticated."""
        ...


class OneUserAuthenticator:
    """Every caller is the same configured user (Waiter's one-user authenticator)."""

    name = "one-user"

    def __init__(self, user: str) -> None:
        self.user = user

    async def authenticate(self, request: web.BaseRequest) -> Caller:
        return Caller(self.user, self.user, self.name)


AUTHENTICATORS: dict[str, Callable[[Settings], Authenticator]] = {
    "one-user": lambda settings: OneUserAuthenticator(settings.run_as_user),
}


def create_authenticator(settings: Settings, kind: str = "one-user") -> Authenticator:
    factory = AUTHENTICATORS.get(kind)
    if factory is None:
        raise ValueError(f"authenticator is {kind!r} but must be one of: {', '.join(sorted(AUTHENTICATORS))}")
    return factory(settings)


def _owner(data: Mapping[str, Any]) -> str | None:
    owner = data.get("owner") or data.get("run-as-user")
    return owner if isinstance(owner, str) else None


@dataclass(frozen=True)
class Permissions:
    """Token permissions: owners manage their tokens, editors edit them, token admins may do anything."""

    admins: frozenset[str]

    @classmethod
    def of(cls, settings: Settings) -> Permissions:
        return cls(frozenset(settings.token_admins))

    def is_admin(self, user: str) -> bool:
        return user in self.admins

    def can_run_as(self, user: str, run_as: str) -> bool:
        """Only as oneself: Waiter's simple entitlement rule; ``*`` means "whoever calls"."""
        return run_as in (ANY_USER, user)

    def run_as_problem(self, user: str, run_as: Any) -> str | None:
        if not isinstance(run_as, str) or self.can_run_as(user, run_as):
            return None
        return f"Authenticated user '{user}' cannot run as user '{run_as}'"

    def create_problem(self, user: str, token: str, owner: str) -> str | None:
        if owner == user or self.is_admin(user):
            return None
        return (
            f"Authenticated user '{user}' cannot create token {token} owned by '{owner}': "
            "you may only create tokens you own, unless you are a token admin."
        )

    def manage_problem(self, user: str, token: str, data: Mapping[str, Any], action: str) -> str | None:
        """Whether ``user`` may ``action`` (delete, ...) the token: its owner or a token admin."""
        owner = _owner(data)
        if user == owner or self.is_admin(user):
            return None
        return f"User '{user}' cannot {action} token {token}: only its owner '{owner}' or a token admin may."

    def update_problem(
        self, user: str, token: str, live: Mapping[str, Any], changed: Collection[str]
    ) -> str | None:
        """Updating a live token: owner and admins freely; its editor except ``owner``, ``editor``, ``run-as-user``."""
        if self.manage_problem(user, token, live, "update") is None:
            return None
        if live.get("editor") != user:
            return (
                f"User '{user}' cannot update token {token}: only its owner '{_owner(live)}', its editor or a "
                "token admin may."
            )
        reserved = sorted(set(changed) & {"owner", "editor", "run-as-user"})
        if reserved:
            return (
                f"User '{user}' is the editor of token {token} and cannot change its {', '.join(reserved)}; "
                f"ask its owner '{_owner(live)}'."
            )
        return None

    def admin_problem(self, user: str, what: str) -> str | None:
        if self.is_admin(user):
            return None
        admins = ", ".join(sorted(self.admins)) or "none configured"
        return f"User '{user}' cannot {what}: that needs a token admin (token-admins: {admins})."
