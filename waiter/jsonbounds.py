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


def _reject_constant(text: str) -> Any:
    raise ValueError(f"{text} is not a number")


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
    except ValueError as exc:
        raise JsonError(f"{what} is not valid JSON ({exc}).") from None
    if depth(value) > max_depth:
        raise too_deep
    return value
