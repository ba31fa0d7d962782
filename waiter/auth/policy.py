"""Who may call an endpoint of the router's own API: every handler declares it (``@access(...)``).

The route table refuses a handler without a policy when it is assembled, so a new endpoint cannot forget it; the
front door authenticates and authorizes by the policy before the handler runs.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, TypeVar


class Access(enum.Enum):
    PUBLIC = "public"  # anyone, unauthenticated (/status, /metrics, ...)
    AUTHENTICATED = "authenticated"  # any authenticated caller; the handler may check more (token owners)
    SERVICE_OWNER = "service-owner"  # the service named in the path: its run-as-user, a token owner, or an admin
    ADMIN = "admin"  # token admins only


F = TypeVar("F", bound=Callable[..., Any])
_ATTRIBUTE = "waiter_access"


def access(policy: Access) -> Callable[[F], F]:
    def mark(handler: F) -> F:
        setattr(handler, _ATTRIBUTE, policy)
        return handler

    return mark


def policy_of(handler: Callable[..., Any]) -> Access | None:
    policy = getattr(handler, _ATTRIBUTE, None)
    return policy if isinstance(policy, Access) else None
