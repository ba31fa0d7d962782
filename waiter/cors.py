"""Per-token CORS (the token's ``cors-rules``) and ``https-redirect``: pure decisions over the token's metadata.

A rule is ``{origin-regex, target-path-regex?, methods?}``; the first rule whose regexes fully match the Origin and
the path, and whose methods (if any) hold the method, allows the request. No rule matches, no CORS header.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Protocol


class HeaderLookup(Protocol):
    def get(self, key: str, default: str, /) -> str: ...


Headers = tuple[tuple[str, str], ...]
PREFLIGHT_MAX_AGE_SECS = 3600


@lru_cache(maxsize=1024)
def _regex(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:
        return None


def _full(pattern: Any, text: str) -> bool:
    regex = _regex(pattern) if isinstance(pattern, str) else None
    return regex is not None and regex.fullmatch(text) is not None


def allowed(meta: Mapping[str, Any], origin: str, path: str, method: str) -> bool:
    rules = meta.get("cors-rules")
    if not origin or not isinstance(rules, list):
        return False
    for rule in rules:
        if not isinstance(rule, Mapping) or not _full(rule.get("origin-regex"), origin):
            continue
        target = rule.get("target-path-regex")
        if target is not None and not _full(target, path):
            continue
        methods = rule.get("methods")
        if isinstance(methods, list) and methods and method not in methods:
            continue
        return True
    return False


def preflight(meta: Mapping[str, Any], method: str, path: str, headers: HeaderLookup) -> Headers | None:
    """The router's answer headers to a CORS preflight a rule allows; None when it is not one, or none allows it."""
    if method != "OPTIONS":
        return None
    origin = headers.get("origin", "")
    wanted = headers.get("access-control-request-method", "")
    if not wanted or not allowed(meta, origin, path, wanted):
        return None
    answer: list[tuple[str, str]] = [
        ("access-control-allow-origin", origin),
        ("access-control-allow-methods", wanted),
        ("access-control-allow-credentials", "true"),
        ("access-control-max-age", str(PREFLIGHT_MAX_AGE_SECS)),
        ("vary", "Origin"),
    ]
    requested = headers.get("access-control-request-headers", "")
    if requested:
        answer.append(("access-control-allow-headers", requested))
    return tuple(answer)


def response_headers(meta: Mapping[str, Any], method: str, path: str, origin: str) -> Headers:
    """CORS headers for a response to a request from ``origin`` (empty when no rule allows it)."""
    if not allowed(meta, origin, path, method):
        return ()
    return (("access-control-allow-origin", origin), ("access-control-allow-credentials", "true"), ("vary", "Origin"))


def https_redirect(meta: Mapping[str, Any], method: str, host: str | None, url: str, secure: bool) -> Headers | None:
    """The redirect of a plain-HTTP request to a token with ``https-redirect``: (status, location) as headers."""
    if secure or meta.get("https-redirect") is not True or not host:
        return None
    return (("location", f"https://{host.rsplit(':', 1)[0] if not host.endswith(']') else host}{url}"),)
