"""Whether the shared state works, with hysteresis (pure: the time is a parameter).

Down at the first failed exchange; up again only after exchanges have succeeded for ``recover_secs`` with no
failure in between. Without it /status flipped about ten times a second during an outage: the coordinator's
small lease-only exchanges (which may need no Redis call at all) succeeded between its failing full ticks.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Availability:
    recover_secs: float = 1.0
    available: bool = True
    error: str | None = None
    _ok_since: float | None = None  # start of the current run of successes while down

    def failed(self, now: float, error: str) -> bool:
        """A failed exchange; True when this makes the state unavailable."""
        self._ok_since = None
        self.error = error
        changed, self.available = self.available, False
        return changed

    def succeeded(self, now: float) -> bool:
        """A successful full exchange; True when this makes the state available again."""
        if self.available:
            return False
        if self._ok_since is None:
            self._ok_since = now
        if now - self._ok_since < self.recover_secs:
            return False
        self.available, self.error, self._ok_since = True, None, None
        return True
