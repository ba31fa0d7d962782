"""Switching an emulator's real-server behaviours by name, as its control and its ``--behaviour`` flag do."""

from __future__ import annotations

from typing import Any


def switch(behaviours: Any, values: dict[str, Any]) -> dict[str, Any]:
    """Set attributes of the ``behaviours`` dataclass by dashed name (``core-dumps``), parsing "true"/"false" and
    numbers; every behaviour as it is now. ValueError names an unknown behaviour and the known ones."""
    known = vars(behaviours)
    for name, value in values.items():
        attribute = name.replace("-", "_")
        if attribute not in known:
            raise ValueError(f"behaviour {name!r} is unknown; known: {sorted(n.replace('_', '-') for n in known)}")
        current = known[attribute]
        if isinstance(current, bool):
            setattr(behaviours, attribute, str(value).lower() in ("true", "1", "yes", "on"))
        else:
            setattr(behaviours, attribute, type(current)(value))
    return {name.replace("_", "-"): value for name, value in vars(behaviours).items()}
