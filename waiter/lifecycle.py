"""Pure lifecycle decisions (docs/api.md §6): deployment errors, idle, stale and broken services, expiry.

Each function takes what it needs and the time; the loops in ``waiter.reaper`` and ``waiter.service`` apply them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from waiter.messages import MESSAGES
from waiter.scheduler.base import Instance, InstanceFlag

MIN_FAILURES_FOR_ERROR = 2  # one failure can be bad luck; two of the same kind are a pattern (Waiter: 2)



def deployment_error(failed: Sequence[Instance], since: float) -> str | None:
    """Why the service cannot start, judged from the instances that failed after ``since`` (the last time one was
    healthy, or when the service was created); None when there is no clear pattern yet.

    In Waiter's order: all over their memory -> not enough memory; all exited with one non-zero code -> invalid
    startup command; none ever accepted a connection -> cannot connect; none answered and all timed out -> health
    check timed out; all answered but never passed -> invalid health-check response.
    """
    recent = [i for i in failed if i.started_at >= since]
    if len(recent) == 1 and _never_listened(recent[0]):
        # A whole grace period without even a connection is no bad luck: the command does not listen on its port.
        # Saying so after one grace period, not two, is what the user waiting for it needs.
        return MESSAGES["cannot-connect"]
    if len(recent) < MIN_FAILURES_FOR_ERROR:
        return None
    flags = [i.flags for i in recent]
    if all(InstanceFlag.MEMORY_LIMIT_EXCEEDED in f for f in flags):
        return MESSAGES["not-enough-memory"]
    codes = {i.exit_code for i in recent}
    health_flags = {InstanceFlag.NEVER_PASSED_HEALTH_CHECKS, InstanceFlag.HEALTH_CHECKS_FAILED}
    probed = [f for f in flags if f & health_flags]
    if len(codes) == 1 and None not in codes and codes != {0} and not probed:
        code = next(iter(codes))
        return f"{MESSAGES['bad-startup-command']} (every instance exited with code {code})"
    if len(probed) < len(recent):
        return None  # some simply exited (with different codes): no single reason yet
    if not any(InstanceFlag.HAS_CONNECTED in f for f in flags):
        return MESSAGES["cannot-connect"]
    if not any(InstanceFlag.HAS_RESPONDED in f for f in flags):
        if all(InstanceFlag.HEALTH_CHECK_TIMED_OUT in f for f in flags):
            return MESSAGES["health-check-timed-out"]
        return None
    if all(InstanceFlag.NEVER_PASSED_HEALTH_CHECKS in f for f in flags):
        return MESSAGES["invalid-health-check-response"]
    return None


def _never_listened(instance: Instance) -> bool:
    flags = instance.flags
    return InstanceFlag.NEVER_PASSED_HEALTH_CHECKS in flags and not flags & {
        InstanceFlag.HAS_CONNECTED,
        InstanceFlag.HAS_RESPONDED,
        InstanceFlag.MEMORY_LIMIT_EXCEEDED,
    }


@dataclass(frozen=True, slots=True)
class ServiceActivity:
    service_id: str
    outstanding: int  # summed over routers
    last_activity: float  # the last request, or when the service was registered if it never had one
    idle_timeout_mins: int  # 0 = never idle
    stale_since: float | None = None  # when it stopped being current for every token that reaches it
    stale_timeout_mins: int = 15
    fallback_period_secs: int = 300
    broken_since: float | None = None  # when its current deployment error began


def reap_reason(
    service: ServiceActivity, now: float, broken_timeout_secs: float, minute_secs: float = 60.0
) -> str | None:
    """Why the service should be deleted now, or None. Never while requests are outstanding.

    ``minute_secs`` is the length of the minutes of the *-mins parameters (60; tests shorten it)."""
    if service.outstanding > 0:
        return None
    if service.idle_timeout_mins > 0 and now - service.last_activity > service.idle_timeout_mins * minute_secs:
        return f"idle for more than {service.idle_timeout_mins} minute(s)"
    if service.stale_since is not None:
        deadline = service.stale_since + service.fallback_period_secs + service.stale_timeout_mins * minute_secs
        if now >= deadline:
            return f"replaced by a newer version more than {service.stale_timeout_mins} minute(s) ago"
    if service.broken_since is not None and now - service.broken_since > broken_timeout_secs:
        return f"unable to start for more than {broken_timeout_secs:g} seconds"
    return None


def is_expired(instance: Instance, expiry_mins: int, flagged: bool, now: float, minute_secs: float = 60.0) -> bool:
    """Expired instances are replaced, then killed: flagged through the API, or older than instance-expiry-mins."""
    return flagged or (expiry_mins > 0 and now - instance.started_at > expiry_mins * minute_secs)


def in_fallback(token_updated_at: float | None, fallback_period_secs: int, now: float) -> bool:
    """Whether requests may still go to an earlier version while the newest one starts."""
    return token_updated_at is not None and fallback_period_secs > 0 and now < token_updated_at + fallback_period_secs
