"""JSON from clients, parsed within bounds: a nesting depth limit, so a header or body of a thousand ``[`` is a
clear 400 instead of a RecursionError (the C decoder recurses once per level). Sizes are bounded where the text is
read (the front door's header limits, the API's body limit). Pure, no I/O.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 32  # token bodies nest at most ~12 levels (a history of 5 `previous` records, each with env/metadata)


class JsonError(ValueError):
    """Not JSON, or JSON outside the bounds; the message is a sentence for the client."""


class TooDeep(JsonError):
    """Valid JSON, perhaps, but nested deeper than the limit."""


class _Constant(ValueError):
    """NaN or Infinity: Python's decoder takes them, JSON has no such numbers."""


def _reject_constant(text: str) -> Any:
    raise _Constant(text)


# What the decoder's complaint is about, in our words: its message is matched, never quoted ("Expecting value:
# line 1 column 1 (char 0)" speaks of the decoder, not of the client's text). The first match wins.
_PROBLEMS = (
    ("Unterminated string", 'a string that never ends (a " is missing)'),
    ("control character", "a control character inside a string (JSON wants an escape such as \\n)"),
    ("escape", "a backslash escape JSON does not have"),
    ("Extra data", "more text after the JSON value"),
    ("property name", "an object key that is not a string in double quotes"),
    ("':'", "an object key without a : after it"),
)


def _problem(exc: json.JSONDecodeError) -> str:
    if exc.pos >= len(exc.doc):
        return f"the text ends before the value is complete (line {exc.lineno}, column {exc.colno})"
    what = next((words for key, words in _PROBLEMS if key in exc.msg), "an unexpected character")
    return f"{what} at line {exc.lineno}, column {exc.colno}"


def depth(value: Any) -> int:
    """How deeply ``value`` nests lists and objects (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        level += 1
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, level) for child in children)
    return deepest


def loads(text: str | bytes, what: str, *, max_depth: int = MAX_DEPTH) -> Any:
    """``text`` parsed as strict JSON (no NaN or Infinity); JsonError naming ``what`` and the limit otherwise."""
    too_deep = TooDeep(f"{what} is JSON nested deeper than the limit of {max_depth} levels.")
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise too_deep from None
    except json.JSONDecodeError as exc:
        raise JsonError(f"{what} is not valid JSON: {_problem(exc)}.") from exc  # the cause, for the log
    except _Constant as exc:
        raise JsonError(f"{what} is not valid JSON: {exc} is not a number JSON allows.") from None
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start]
        raise JsonError(f"{what} is not valid UTF-8 (byte 0x{byte:02x} at position {exc.start}).") from None
    if depth(value) > max_depth:
        raise too_deep
    return value
