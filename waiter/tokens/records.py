"""Pure rules of token records: history, system metadata, no-op detection and how records are shown.

No I/O and no clock: the time is always a parameter. Times are stored as epoch milliseconds and shown as ISO-8601
strings (docs/api.md §0).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from waiter.errors import iso_millis
from waiter.params import SERVICE_PARAMS, TOKEN_PARAMS
from waiter.tokens.store import HISTORY_LIMIT, token_etag

TOKEN_NAME_RE = re.compile(r"[a-zA-Z][a-zA-Z0-9\-_$.]+")
_NAME_CHAR_RE = re.compile(r"[a-zA-Z0-9\-_$.]")
EDITABLE = frozenset(SERVICE_PARAMS) | frozenset(TOKEN_PARAMS)  # what a user may write (plus ``cluster``)


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a token name (docs/api.md §2.5), or None."""
    bad = next((c for c in name if not _NAME_CHAR_RE.fullmatch(c)), None)
    if bad is not None:
        return f'Token contains invalid character: "{bad}"'
    if TOKEN_NAME_RE.fullmatch(name) is None:
        return (
            f"Token must match pattern {TOKEN_NAME_RE.pattern}: a letter followed by at least one letter, "
            f"digit or one of - _ $ . (got {name!r})"
        )
    return None


def service_params(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: copy.deepcopy(v) for k, v in data.items() if k in SERVICE_PARAMS}


def editable(data: Mapping[str, Any]) -> dict[str, Any]:
    """The fields a user edits, plus ``cluster``: what no-op detection compares (docs/api.md §1.3 step 5)."""
    return {k: v for k, v in data.items() if k in EDITABLE or k == "cluster"}


def normalise(body: Mapping[str, Any]) -> dict[str, Any]:
    """A posted body as stored: ``allowed-params`` is a set in meaning, kept as a sorted list."""
    data = copy.deepcopy(dict(body))
    if isinstance(data.get("allowed-params"), list):
        data["allowed-params"] = sorted(set(data["allowed-params"]), key=str)
    return data


def cap_history(data: Mapping[str, Any], levels: int = HISTORY_LIMIT) -> dict[str, Any]:
    """``data`` with at most ``levels`` nested ``previous`` records."""
    result = dict(data)
    previous = result.get("previous")
    if not isinstance(previous, Mapping):
        result.pop("previous", None)
    elif levels <= 0:
        del result["previous"]
    else:
        result["previous"] = cap_history(previous, levels - 1)
    return result


def new_record(
    body: Mapping[str, Any],
    *,
    owner: str,
    user: str,
    now_ms: int,
    cluster: str,
    existing: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """A POSTed body as the record to store: system metadata filled, the stored record pushed into history.

    Fields the body gives win (update-mode=admin may set system metadata); the existing record becomes
    ``previous`` unless the body brought its own.
    """
    data: dict[str, Any] = {
        "cluster": cluster,
        "last-update-time": now_ms,
        "last-update-user": user,
        "owner": owner,
        "root": (existing or {}).get("root") or cluster,
    }
    data.update(normalise(body))
    if "previous" not in data and existing is not None:
        data["previous"] = copy.deepcopy(dict(existing))
    return cap_history(data)


def soft_deleted(existing: Mapping[str, Any], *, user: str, now_ms: int) -> dict[str, Any]:
    """The record of a soft delete: the same data marked deleted, the live one kept as history."""
    data = {k: copy.deepcopy(v) for k, v in existing.items() if k != "previous"}
    data.update({"deleted": True, "last-update-time": now_ms, "last-update-user": user})
    data["previous"] = copy.deepcopy(dict(existing))
    return cap_history(data)


def parse_time(value: Any) -> int:
    """Epoch millis from an int or an ISO-8601 string (update-mode=admin); ValueError names what is allowed."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if parsed.tzinfo is not None:
                return int(parsed.timestamp() * 1000)
    raise ValueError(
        f"last-update-time is {value!r} but must be epoch milliseconds or an ISO-8601 time with a zone, "
        "e.g. 2023-03-22T16:56:20.123Z"
    )


def shown(data: Mapping[str, Any], *, metadata: bool, cluster: str) -> dict[str, Any]:
    """The GET /token body: service parameters and user metadata; with ``metadata`` the system metadata too.

    ``owner`` is always present (legacy records report their run-as-user); times are ISO strings, in
    ``previous`` records as well (docs/api.md §1.2).
    """
    body = {k: copy.deepcopy(v) for k, v in data.items() if k in EDITABLE}
    owner = data.get("owner") or data.get("run-as-user")
    if owner is not None:
        body["owner"] = owner
    if not metadata:
        return body
    body["cluster"] = data.get("cluster") or cluster
    body["root"] = data.get("root") or cluster
    for key in ("last-update-user", "deleted"):
        if key in data:
            body[key] = data[key]
    body["last-update-time"] = _iso(data.get("last-update-time"))
    previous = data.get("previous")
    body["previous"] = _times_as_iso(previous) if isinstance(previous, Mapping) else {}
    return body


def history(data: Mapping[str, Any], *, cluster: str) -> list[dict[str, Any]]:
    """GET /token-history: every version kept, newest first, each as GET /token?include=metadata shows it (without
    its nested ``previous``) with its ``etag``."""
    versions: list[dict[str, Any]] = []
    level: Any = data
    while isinstance(level, Mapping) and level:
        version = shown(level, metadata=True, cluster=cluster)
        del version["previous"]
        version["etag"] = token_etag(level)
        versions.append(version)
        level = level.get("previous")
    return versions


def _iso(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return iso_millis(value / 1000)
    return value


def _times_as_iso(data: Mapping[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(dict(data))
    if "last-update-time" in result:
        result["last-update-time"] = _iso(result["last-update-time"])
    if isinstance(result.get("previous"), Mapping):
        result["previous"] = _times_as_iso(result["previous"])
    return result
