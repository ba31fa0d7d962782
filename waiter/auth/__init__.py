"""Identity and access: who calls (authenticators, the x-waiter-auth cookie) and what they may do (policies,
permission rules).

``Gate`` is the one place requests are authenticated; ``Access`` is each endpoint's declared policy; ``Permissions``
holds the pure rules that answer 403 with a sentence naming who may.
"""

from waiter.auth.base import Authenticator, AuthRequest, Caller, Identity, user_of
from waiter.auth.gate import PUBLIC, Admission, Gate
from waiter.auth.permissions import ANY_USER, Permissions
from waiter.auth.policy import Access, access, policy_of

__all__ = [
    "ANY_USER",
    "PUBLIC",
    "Access",
    "Admission",
    "AuthRequest",
    "Authenticator",
    "Caller",
    "Gate",
    "Identity",
    "Permissions",
    "access",
    "policy_of",
    "user_of",
]
