"""How cluster API clients retry a call that met a transient failure: capped exponential backoff."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # tries in all, the first included
    backoff_secs: float = 0.1  # before the first retry; doubles after each
    max_backoff_secs: float = 5.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failed try (1-based)."""
        return float(min(self.backoff_secs * 2 ** max(failures - 1, 0), self.max_backoff_secs))


__all__ = ["RetryPolicy"]
