"""Port reservation for instances run on this machine.

Waiter's shell scheduler hands each instance the first free ports of a fixed range and prefers not to reuse a
released port for a while, so a late request aimed at a dead instance does not reach a newer instance that
happens to reuse its port. That hold is a preference, not a reservation: when the range has no other free port,
released ports are reused at once, the longest released first, rather than failing a launch with ports idle. A
port is free when no instance of ours holds it and the host lets us bind it.

With ``lock_dir``, live ports are also locked machine-wide (an flock on ``<lock_dir>/<port>``, held from allocation
to release): several routers running instances on one machine then never hand out the same live port, even in the
moment between choosing a port and the instance binding it, when the bind check alone cannot see the other one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from waiter.scheduler.base import SchedulerError

Clock = Callable[[], float]
Probe = Callable[[int], bool]

_WILDCARD = "0.0.0.0"


def port_is_bindable(host: str, port: int) -> bool:
    """True iff ``port`` can be bound on ``host`` and on the wildcard address right now.

    SO_REUSEADDR stays off, so a port still in TIME_WAIT or bound by anyone on any address counts as taken.
    """
    for address in dict.fromkeys((host, _WILDCARD)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((address, port))
            except OSError as error:
                # An address this machine lacks says nothing about the port; any other error means "taken".
                if error.errno == errno.EADDRNOTAVAIL:
                    continue
                return False
    return True


class PortAllocator:
    """Hands out ports of ``port_range`` (inclusive), preferring ports not released in the last ``hold_secs``.

    ``clock`` (monotonic seconds) and ``probe`` (is this port bindable?) are injectable for tests; by default
    the probe binds the port on ``host`` and on 0.0.0.0.
    """

    def __init__(
        self,
        port_range: tuple[int, int],
        hold_secs: float,
        host: str = "127.0.0.1",
        clock: Clock = time.monotonic,
        *,
        probe: Probe | None = None,
        lock_dir: Path | None = None,
    ) -> None:
        low, high = port_range
        if not 0 < low <= high <= 65535:
            raise ValueError(f"port-range must be two ports with 0 < low <= high <= 65535, got [{low}, {high}].")
        if hold_secs < 0:
            raise ValueError(f"port-hold-secs must be zero or more, got {hold_secs}.")
        self.port_range = (low, high)
        self.hold_secs = hold_secs
        self.host = host
        self._clock = clock
        self._probe: Probe = probe if probe is not None else (lambda port: port_is_bindable(host, port))
        self._in_use: set[int] = set()
        self._held_until: dict[int, float] = {}
        self._lock_dir = lock_dir
        self._locks: dict[int, int] = {}  # port -> fd of its lock file
        if lock_dir is not None:
            lock_dir.mkdir(parents=True, exist_ok=True)

    def allocate(self, count: int) -> tuple[int, ...]:
        """Reserve the ``count`` lowest free ports not on hold, topped up with held ones (the longest released
        first) when too few are; or raise ``SchedulerError`` without reserving any."""
        if count < 1:
            raise SchedulerError(f"An instance needs at least one port, but {count} were asked for.")
        self._forget_expired_holds()
        low, high = self.port_range
        fresh = (port for port in range(low, high + 1) if port not in self._held_until)
        held = sorted(self._held_until, key=lambda port: (self._held_until[port], port))
        chosen: list[int] = []
        for port in (*fresh, *held):
            if port in self._in_use or not self._probe(port) or not self._lock(port):
                continue
            chosen.append(port)
            if len(chosen) == count:
                self._in_use.update(chosen)
                for taken in chosen:
                    self._held_until.pop(taken, None)
                return tuple(sorted(chosen))
        for port in chosen:
            self._unlock(port)
        raise SchedulerError(
            f"Not enough free ports in port-range [{low}, {high}]: an instance needs {count}, "
            f"only {len(chosen)} are free (the others are used by instances or bound by other programs)."
        )

    def release(self, ports: Iterable[int], *, hold: bool = True) -> None:
        """Give ports back (and their machine-wide locks); with ``hold`` they are reused last for ``hold_secs``."""
        until = self._clock() + self.hold_secs
        for port in ports:
            self._in_use.discard(port)
            self._unlock(port)
            if hold and self.hold_secs > 0:
                self._held_until[port] = until

    def reserved(self) -> frozenset[int]:
        """Ports that ``allocate`` hands out only when no other port is free: in use or released recently."""
        self._forget_expired_holds()
        return frozenset(self._in_use | self._held_until.keys())

    def _forget_expired_holds(self) -> None:
        now = self._clock()
        for port in [port for port, until in self._held_until.items() if until <= now]:
            del self._held_until[port]

    def close(self) -> None:
        """Drop every machine-wide lock (the scheduler is shutting down)."""
        for port in list(self._locks):
            self._unlock(port)

    def _lock(self, port: int) -> bool:
        if self._lock_dir is None:
            return True
        fd = os.open(self._lock_dir / str(port), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False  # another router on this machine has it
        self._locks[port] = fd
        return True

    def _unlock(self, port: int) -> None:
        fd = self._locks.pop(port, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the descriptor releases the flock
