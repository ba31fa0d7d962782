"""The filter rule of /apps and /tokens (docs/api.md §1.10): equal, ``*`` for any non-empty value, or a regular
expression that matches the whole value.

Expressions run on RE2 (google-re2), whose matching time is linear in the value: Python's backtracking ``re`` takes
exponential time on patterns such as ``(.|.)*X``, and a filter runs on the event loop that serves every request.
RE2 has no backreferences or lookaround; a pattern it cannot compile is a 400 naming the filter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import re2

from waiter.errors import WaiterError
from waiter.text import printable

MAX_PATTERN = 1024  # characters: compiling is linear too, but nobody filters with a longer expression
_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a client's bad pattern is answered, not printed to stderr
_OPTIONS.never_capture = True
_OPTIONS.max_mem = 8 << 20  # bytes of compiled program: a pathological repetition is refused, not built


@dataclass(frozen=True)
class Filter:
    name: str
    pattern: str
    regex: Any  # the compiled re2 pattern; None for "*"

    @classmethod
    def of(cls, name: str, pattern: str) -> Filter:
        """The filter ``name=pattern`` of a query; WaiterError 400 when RE2 cannot use the pattern."""
        if pattern == "*":
            return cls(name, pattern, None)
        if len(pattern) > MAX_PATTERN:
            raise WaiterError(
                400, f"The filter {printable(name)} is {len(pattern)} characters long; the limit is {MAX_PATTERN}."
            )
        try:
            regex = re2.compile(pattern, _OPTIONS)
        except (re2.error, UnicodeEncodeError) as exc:
            reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else exc
            raise WaiterError(
                400,
                f"The filter {printable(name)} is not a regular expression RE2 accepts ({reason}): "
                f"{printable(pattern)!r}. Backreferences and lookaround are not supported.",
            ) from None
        return cls(name, pattern, regex)

    def matches(self, value: Any) -> bool:
        if value is None or value == "" or value == {} or value == []:
            return self.pattern == ""
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if self.regex is None or text == self.pattern:
            return True
        try:
            return self.regex.fullmatch(text) is not None
        except UnicodeEncodeError:  # a value that is not text (stored before the edge checked it) matches nothing
            return False


def lookup(description: Mapping[str, Any], dotted: str) -> Any:
    """The value a filter names: a top-level field, or a nested one by a dotted path (``metadata.team``)."""
    value: Any = description
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value
