"""The filter rule of /apps and /tokens (docs/api.md §1.10): equal, ``*`` for any non-empty value, or a regular
expression that matches the whole value.

Expressions run on RE2 (google-re2), whose matching time is linear in the value: Python's backtracking ``re`` takes
exponential time on patterns such as ``(.|.)*X``, and a filter runs on the event loop that serves every request.
RE2 has no backreferences or lookaround; a pattern it cannot compile is a 400 naming the filter.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import re2

from waiter.errors import WaiterError
from waiter.text import printable

log = logging.getLogger(__name__)

MAX_PATTERN = 1024  # characters: compiling is linear too, but nobody filters with a longer expression
_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a client's bad pattern is answered, not printed to stderr
_OPTIONS.never_capture = True
_OPTIONS.max_mem = 8 << 20  # bytes of compiled program: a pathological repetition is refused, not built


# What RE2 found wrong, in our words: its message ("missing ): (ab") is matched by its first words, never quoted.
_REASONS = (
    ("missing )", "a ( that is never closed"),
    ("unexpected )", "a ) that closes nothing"),
    ("missing ]", "a [ that is never closed"),
    ("trailing \\", "a \\ at the end with nothing to escape"),
    ("invalid escape", "a backslash escape RE2 does not know (backreferences such as \\1 included)"),
    ("invalid perl operator", "a (? group RE2 does not know (lookaround included)"),
    ("invalid named capture", "a named group whose name RE2 does not accept"),
    ("character class", "a character class RE2 does not know or a range whose ends are out of order"),
    ("repetition size", "a repetition count over 1000 or with its bounds out of order"),
    ("repetition operator", "a repetition operator (*, +, ? or {}) with nothing to repeat"),
    ("too large", f"a pattern larger than the {_OPTIONS.max_mem >> 20} MiB RE2 may compile it to"),
)


def _reason(error: Exception) -> str:
    if isinstance(error, UnicodeEncodeError):
        return "text that is not valid UTF-8"
    raw = error.args[0] if error.args else b""
    message = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return next((words for key, words in _REASONS if key in message), "a construct RE2 does not support")


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
            log.debug("filter %s=%r refused by RE2: %s", printable(name), printable(pattern), exc)
            raise WaiterError(
                400,
                f"The filter {printable(name)} is not a regular expression RE2 accepts: {_reason(exc)} in "
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
