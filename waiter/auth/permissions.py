"""What a caller may do: the permission rules of tokens, services and proxied requests.

The rules are pure: each ``*_problem`` method returns the sentence to answer with 403, or None.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from waiter.settings import Settings

ANY_USER = "*"


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

    def update_problem(self, user: str, token: str, live: Mapping[str, Any], changed: Collection[str]) -> str | None:
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

    def service_problem(
        self, user: str, service_id: str, run_as: Any, token_owners: Iterable[str], what: str
    ) -> str | None:
        """Acting on a service (delete it, kill or expire its instances): its run-as-user, an owner of one of the
        tokens that reach it, or a token admin."""
        owners = sorted({o for o in token_owners if o})
        if user == run_as or user in owners or self.is_admin(user):
            return None
        who = [f"its run-as-user '{run_as}'"] if isinstance(run_as, str) else []
        if owners:
            who.append("the owner of one of its tokens (" + ", ".join(f"'{o}'" for o in owners) + ")")
        who.append("a token admin")
        return f"User '{user}' cannot {what} service {service_id}: only {', '.join(who[:-1])} or {who[-1]} may."

    def permitted_problem(self, user: str, service_id: str, permitted: Any) -> str | None:
        """A proxied request: the caller must be the service's permitted-user, unless that is '*'."""
        if not isinstance(permitted, str) or permitted in (ANY_USER, user):
            return None
        return (
            f"This user isn't allowed to invoke this service: authenticated user '{user}' is not the "
            f"permitted-user '{permitted}' of service {service_id}."
        )

    def admin_problem(self, user: str, what: str) -> str | None:
        if self.is_admin(user):
            return None
        admins = ", ".join(sorted(self.admins)) or "none configured"
        return f"User '{user}' cannot {what}: that needs a token admin (token-admins: {admins})."
