"""How a task ended, read from the words of Mesos's command executor (what Mesos and Marathon both report).

The executor writes WSTRINGIFY's text: "Command exited with status 3", "Command terminated with signal Killed",
and " (core dumped)" after the signal's name when the process left a core.
"""

from __future__ import annotations

import re
import signal

_EXITED = re.compile(r"exited with status (-?\d+)")
_SIGNALLED = re.compile(r"terminated with signal (.+?)(?:\s*\(core dumped\))?\s*$", re.MULTILINE)
# The command executor names a signal the way strsignal(3) does ("Killed", "Terminated").
_SIGNALS = {signal.strsignal(number): number for number in signal.Signals if signal.strsignal(number)}


def exit_code_of(message: str | None) -> int | None:
    """The exit code a command executor message states: ``exited with status N``, or ``-signal`` when killed."""
    if not message:
        return None
    exited = _EXITED.search(message)
    if exited:
        return int(exited.group(1))
    signalled = _SIGNALLED.search(message)
    if signalled:
        name = signalled.group(1)
        if name in _SIGNALS:
            return -int(_SIGNALS[name])
        return -int(name) if name.isdigit() else None
    return None


__all__ = ["exit_code_of"]
