"""How cluster API clients retry a call that met a transient failure (capped exponential backoff), and how they
word a call that got no answer."""

from __future__ import annotations

from dataclasses import dataclass

from waiter.text import failure_reason


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # tries in all, the first included
    backoff_secs: float = 0.1  # before the first retry; doubles after each
    max_backoff_secs: float = 5.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failed try (1-based)."""
        return float(min(self.backoff_secs * 2 ** max(failures - 1, 0), self.max_backoff_secs))


def no_answer(
    cluster: str, url: str, timeout_secs: float, method: str, path: str, what: str, error: BaseException, attempt: int
) -> str:
    """``<cluster> could not <what>: <method> <path> <why>``, for a call that timed out or never reached ``url``."""
    tried = f" (tried {attempt} times)" if attempt > 1 else ""
    if isinstance(error, TimeoutError):
        reason = f"got no answer within {timeout_secs:g} s"
    else:
        reason = f"failed to reach {url}: {failure_reason(error)}"
    return f"{cluster} could not {what}: {method} {path} {reason}{tried}."


__all__ = ["RetryPolicy", "no_answer"]
