"""Reading one mapping of the YAML file into values, a problem per bad key (the key, the value, what is allowed)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any


class _Reader:
    """Reads one mapping of the YAML file, collecting a problem per bad key instead of stopping at the first."""

    def __init__(self, data: Mapping[str, Any], prefix: str, problems: list[str]) -> None:
        self.data = data
        self.prefix = prefix
        self.problems = problems
        self.seen: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def get(self, key: str) -> Any:
        self.seen.add(key)
        return self.data.get(key)

    def has(self, key: str) -> bool:
        return key in self.data

    def string(self, key: str, default: str) -> str:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            self.problems.append(f"{self._key(key)} is {value!r} but must be a non-empty string.")
            return default
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.problems.append(f"{self._key(key)} is {value!r} but must be an integer in the range [{low}, {high}].")
            return default
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            self.problems.append(f"{self._key(key)} is {value!r} but must be a number in the range [{low}, {high}].")
            return default
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.problems.append(f"{self._key(key)} is {value!r} but must be true or false.")
            return default
        return value

    def mapping(self, key: str) -> Mapping[str, Any]:
        value = self.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problems.append(f"{self._key(key)} is {value!r} but must be a mapping.")
            return {}
        return value

    def check_unknown(self) -> None:
        for key in self.data:
            if key not in self.seen:
                allowed = ", ".join(sorted(self.seen))
                self.problems.append(f"{self._key(str(key))} is not a known setting; allowed here: {allowed}.")



def _merge(into: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    """Overrides win key by key; nested mappings merge, so ``--marathon-url`` keeps the file's other marathon keys."""
    for key, value in overrides.items():
        if value is None:
            continue
        current = into.get(key)
        if isinstance(value, Mapping) and isinstance(current, dict):
            _merge(current, value)
        elif isinstance(value, Mapping):
            into[key] = {}
            _merge(into[key], value)
        else:
            into[key] = value



def _string_list(r: _Reader, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = r.get(key)
    if raw is None:
        return default
    if isinstance(raw, list) and all(isinstance(v, str) and v for v in raw):
        return tuple(raw)
    r.problems.append(f"{r._key(key)} is {raw!r} but must be a list of non-empty strings.")
    return default


def _cidrs(r: _Reader, key: str, default: tuple[str, ...], problems: list[str]) -> tuple[str, ...]:
    values = _string_list(r, key, default)
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            problems.append(
                f"{r._key(key)} holds {value!r}, which is not an IP network; use CIDR notation, e.g. 10.0.0.0/8."
            )
    return values
