"""The parameter tables: every service parameter (§2.1) and token-only user field (§2.2), with its checks.

Each ``Param`` knows its kind, default and range and renders the sentence users see when a value is wrong.
The structured values (env, metadata, allowed-params, maintenance, cors-rules) have their own checkers here
because their problems are per key rather than per value. Pure logic: nothing here touches I/O.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeGuard

from waiter.text import printable, text_problem


class Kind(enum.Enum):
    STRING = "string"
    INT = "int"
    NUMBER = "number"
    BOOL = "bool"
    ENUM = "enum"
    STRING_LIST = "string-list"
    ENV = "env"
    METADATA = "metadata"
    MAINTENANCE = "maintenance"
    CORS_RULES = "cors-rules"


@dataclass(frozen=True)
class Param:
    """One parameter: ``allowed`` is the phrase after "must be" in its error sentence."""

    name: str
    kind: Kind
    allowed: str
    default: Any = None
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] = ()
    nullable: bool = False
    pattern: re.Pattern[str] | None = None
    min_len: int = 1
    max_len: int | None = None

    @property
    def header_is_string(self) -> bool:
        """Header values of string-like params are kept verbatim instead of being parsed as JSON."""
        return self.kind in (Kind.STRING, Kind.ENUM)

    def sentence(self, label: str, shown: str) -> str:
        return f"{label} must be {self.allowed}. Got {shown}."

    def problems(self, value: Any, label: str | None = None, shown: str | None = None) -> list[str]:
        """Every problem with ``value`` ([] if valid); ``label`` and ``shown`` let headers name themselves."""
        label = label or self.name
        checker = _STRUCTURED.get(self.kind)
        if checker is not None:
            return checker(value, label)
        if self.accepts(value):
            return []
        return [self.sentence(label, show(value) if shown is None else shown)]

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if self.kind is Kind.BOOL:
            return isinstance(value, bool)
        if self.kind is Kind.ENUM:
            return value in self.choices
        if self.kind is Kind.STRING:
            return self._accepts_string(value)
        if self.kind is Kind.INT:
            return isinstance(value, int) and not isinstance(value, bool) and self._in_range(value)
        # the structured kinds are judged by their own checkers (``problems``), never here
        return self.kind is Kind.NUMBER and is_number(value) and self._in_range(value)

    def _accepts_string(self, value: Any) -> bool:
        if not isinstance(value, str) or len(value) < self.min_len:
            return False
        if self.max_len is not None and len(value) > self.max_len:
            return False
        return self.pattern is None or self.pattern.fullmatch(value) is not None

    def _in_range(self, value: float) -> bool:
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)


def is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def show(value: Any, limit: int = 80) -> str:
    """A value as users wrote it (JSON), cut short so a huge cmd does not flood the error."""
    text = json.dumps(value, default=repr, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def text_problems(value: Any, label: str = "") -> list[str]:
    """Every string in ``value`` (keys and nested values too) that is not UTF-8 or holds a NUL, by field.

    With no ``label``, ``value`` is a set of fields: each is named by its key (cmd, env.FOO, ...)."""
    if isinstance(value, str):
        why = text_problem(value)
        return [f"{label} must be UTF-8 text without NUL characters, but it {why}."] if why else []
    if isinstance(value, Mapping):
        problems: list[str] = []
        for key, item in value.items():
            name = printable(str(key))
            if isinstance(key, str) and (why := text_problem(key)):
                where = f" in {label}" if label else ""
                problems.append(f"The key {name}{where} must be UTF-8 text without NUL characters, but it {why}.")
            problems += text_problems(item, f"{label}.{name}" if label else name)
        return problems
    if isinstance(value, list | tuple):
        return [p for i, item in enumerate(value) for p in text_problems(item, f"{label}[{i}]")]
    return []


def fmt_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# -- constructors --------------------------------------------------------------------------------------------


def _str(name: str, default: str | None = None, allowed: str = "a non-empty string", **kw: Any) -> Param:
    return Param(name, Kind.STRING, allowed, default, **kw)


def _int(name: str, lo: int, hi: int | None, default: int | None, between: bool = False) -> Param:
    if hi is not None:
        allowed = (f"an integer between {lo} and {hi} (inclusive)" if between
                   else f"an integer in the range [{lo}, {hi}]")
    else:
        named = {0: "a non-negative integer", 1: "a positive integer"}
        allowed = named.get(lo, f"an integer of at least {lo}")
    return Param(name, Kind.INT, allowed, default, lo=lo, hi=hi)


def _num(name: str, lo: float, hi: float | None, default: float | None, *,
         lo_open: bool = False, hi_open: bool = False) -> Param:
    if hi is None:
        allowed = "a positive number" if lo == 0 and lo_open else f"a number greater than or equal to {lo}"
    else:
        allowed = (f"a number in the range {'(' if lo_open else '['}{fmt_number(lo)}, "
                   f"{fmt_number(hi)}{')' if hi_open else ']'}")
    return Param(name, Kind.NUMBER, allowed, default, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)


def _enum(name: str, choices: Sequence[str], default: str | None, nullable: bool = False) -> Param:
    listed = ", ".join(f"'{c}'" for c in choices)
    allowed = f"{'null or ' if nullable else ''}one of: {listed}"
    return Param(name, Kind.ENUM, allowed, default, choices=tuple(choices), nullable=nullable)


PROTOS = ("http", "https", "h2", "h2c")
ENV_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
METADATA_KEY_RE = re.compile(r"[a-z][a-z0-9-]*")
_METRIC_GROUP_RE = re.compile(r"[a-z][a-z0-9]*([_-][a-z0-9]+)*")
_RESERVED_ENV = frozenset({"HOME", "LOGNAME", "USER"})
_RESERVED_ENV_RE = re.compile(r"MARATHON_.*|MESOS_.*|PORT\d+|WAITER_(?!CONFIG_).*", re.DOTALL)
RESERVED_ENV_TEXT = ("HOME, LOGNAME, USER, MARATHON_*, MESOS_*, PORT<digits> and WAITER_* "
                     "(except WAITER_CONFIG_*) are set by Waiter")
MAX_MAP_ENTRIES = 99
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


def is_reserved_env(name: str) -> bool:
    return name in _RESERVED_ENV or _RESERVED_ENV_RE.fullmatch(name) is not None


def env_name_problems(key: Any, where: str, *, user: bool) -> list[str]:
    """Problems with one env var name; ``user`` also forbids the router-set WAITER_CONFIG_TOKEN."""
    if not isinstance(key, str) or ENV_NAME_RE.fullmatch(key) is None or len(key) > 512:
        return [f"Environment variable name {show(key)} in {where} is invalid: names must start with a "
                "letter, contain only letters, digits and underscores, and be at most 512 characters long."]
    if is_reserved_env(key):
        return [f"Environment variable name {show(key)} in {where} is reserved: {RESERVED_ENV_TEXT}."]
    if user and key == "WAITER_CONFIG_TOKEN":
        return [f"Environment variable name {show(key)} in {where} is reserved: Waiter sets it for "
                "service-mapping exclusive tokens."]
    return []


def env_value_problems(key: str, value: Any, where: str) -> list[str]:
    if isinstance(value, str) and 1 <= len(value) <= 512:
        return []
    return [f"Environment variable {key} in {where} must be a string of 1 to 512 characters. "
            f"Got {show(value)}."]


def metadata_key_problems(key: Any, where: str) -> list[str]:
    if isinstance(key, str) and METADATA_KEY_RE.fullmatch(key) is not None and len(key) <= 999:
        return []
    return [f"Metadata key {show(key)} in {where} is invalid: keys must start with a lower-case letter and "
            "contain only lower-case letters, digits and hyphens."]


def metadata_value_problems(key: str, value: Any, where: str) -> list[str]:
    if isinstance(value, str) and 1 <= len(value) <= 999:
        return []
    return [f"Metadata {key} in {where} must be a string of 1 to 999 characters. Got {show(value)}."]


def env_entry_problems(key: Any, value: Any, where: str, *, user: bool) -> list[str]:
    """Problems with one env var; the value of a bad name is not judged."""
    return env_name_problems(key, where, user=user) or env_value_problems(key, value, where)


def metadata_entry_problems(key: Any, value: Any, where: str) -> list[str]:
    """Problems with one metadata entry; the value of a bad key is not judged."""
    return metadata_key_problems(key, where) or metadata_value_problems(key, value, where)


def _map_problems(value: Any, label: str, what: str, entry_problems: Callable[[Any, Any], list[str]]) -> list[str]:
    if not isinstance(value, Mapping):
        return [f"{label} must be an object mapping {what} names to strings. Got {show(value)}."]
    problems: list[str] = []
    if len(value) > MAX_MAP_ENTRIES:
        problems.append(f"{label} may contain at most {MAX_MAP_ENTRIES} entries. Got {len(value)}.")
    for key, item in value.items():
        problems += entry_problems(key, item)
    return problems


def env_problems(value: Any, label: str = "env", *, user: bool = False) -> list[str]:
    return _map_problems(value, label, "environment variable",
                         lambda key, item: env_entry_problems(key, item, label, user=user))


def metadata_problems(value: Any, label: str) -> list[str]:
    return _map_problems(value, label, "metadata", lambda key, item: metadata_entry_problems(key, item, label))


def allowed_params_problems(value: Any, label: str) -> list[str]:
    if not isinstance(value, list | tuple | set | frozenset):
        return [f"{label} must be a list of environment variable names. Got {show(value)}."]
    return [p for name in sorted(value, key=str) for p in env_name_problems(name, label, user=True)]


def maintenance_problems(value: Any, label: str) -> list[str]:
    ok = (isinstance(value, Mapping) and set(value) == {"message"} and isinstance(value["message"], str)
          and 1 <= len(value["message"]) <= 512)
    if ok:
        return []
    return [f'{label} must be an object {{"message": "..."}} whose message is a string of 1 to 512 '
            f"characters. Got {show(value)}."]


def _regex_problems(value: Any, label: str) -> list[str]:
    if isinstance(value, str):
        try:
            re.compile(value)
            return []
        except re.error as err:  # its text ("missing ), unterminated subpattern") is the library's: only where
            where = f" (it breaks at position {err.pos})" if err.pos is not None else ""
            return [f"{label} must be a valid regular expression in Python's syntax{where}. Got {show(value)}."]
    return [f"{label} must be a regular expression string. Got {show(value)}."]


def _cors_rule_problems(rule: Any, label: str) -> list[str]:
    if not isinstance(rule, Mapping):
        return [f"{label} must be an object with origin-regex, target-path-regex and methods. "
                f"Got {show(rule)}."]
    problems: list[str] = []
    unknown = sorted(set(rule) - {"origin-regex", "target-path-regex", "methods"})
    if unknown:
        problems.append(f"{label} has unsupported key(s) {show(unknown)}: only origin-regex, "
                        "target-path-regex and methods are allowed.")
    if "origin-regex" not in rule:
        problems.append(f"{label}.origin-regex is required.")
    for key in ("origin-regex", "target-path-regex"):
        if key in rule:
            problems += _regex_problems(rule[key], f"{label}.{key}")
    methods = rule.get("methods", ["GET"])
    if (not isinstance(methods, list) or not methods
            or not all(isinstance(m, str) and m in _HTTP_METHODS for m in methods)):
        problems.append(f"{label}.methods must be a non-empty list of upper-case HTTP methods "
                        f"({', '.join(sorted(_HTTP_METHODS))}). Got {show(methods)}.")
    return problems


def cors_rules_problems(value: Any, label: str) -> list[str]:
    if not isinstance(value, list):
        return [f"{label} must be a list of rule objects. Got {show(value)}."]
    return [p for i, rule in enumerate(value) for p in _cors_rule_problems(rule, f"{label}[{i}]")]


_STRUCTURED = {
    Kind.ENV: env_problems,
    Kind.METADATA: metadata_problems,
    Kind.STRING_LIST: allowed_params_problems,
    Kind.MAINTENANCE: maintenance_problems,
    Kind.CORS_RULES: cors_rules_problems,
}

_HEALTH_CHECK = (
    _enum("health-check-authentication", ("disabled", "standard"), "disabled"),
    _int("health-check-interval-secs", 5, 600, 10),
    _int("health-check-max-consecutive-failures", 1, 36, 5),
    _int("health-check-port-index", 0, 9, 0),
    _enum("health-check-proto", PROTOS, None, nullable=True),
    _str("health-check-url", "/status"),
)


def _liveness(p: Param) -> Param:
    """liveness-check-X mirrors health-check-X but has no default of its own: effective() copies it over."""
    return replace(p, name=p.name.replace("health-check-", "liveness-check-"), default=None)


_SERVICE = (
    _str("cmd"),
    _num("cpus", 0, None, None, lo_open=True),
    _num("mem", 0, None, None, lo_open=True),
    _str("version"),
    _str("run-as-user"),
    _enum("cmd-type", ("shell", "docker"), None),
    Param("allowed-params", Kind.STRING_LIST, "a list of environment variable names", []),
    _enum("authentication", ("standard", "disabled"), "standard"),
    _enum("backend-proto", PROTOS, "http"),
    _int("concurrency-level", 1, 10000, 1),
    _enum("distribution-scheme", ("balanced", "simple"), "balanced"),
    Param("env", Kind.ENV, "an object mapping environment variable names to strings", {}),
    _num("expired-instance-restart-rate", 0, 1, 0.1, lo_open=True),
    _int("grace-period-secs", 0, 3600, 30),
    *_HEALTH_CHECK,
    *(_liveness(p) for p in _HEALTH_CHECK),
    _int("idle-timeout-mins", 0, 43200, 30),
    _str("image"),
    _int("instance-expiry-mins", 0, None, 7200),
    _int("interstitial-secs", 0, 3600, 0),
    _num("jitter-threshold", 0, 1, 0.5, hi_open=True),
    _enum("load-balancing", ("oldest", "youngest", "random"), "oldest"),
    _int("max-instances", 1, 2000, 500),
    _int("min-instances", 1, 2000, 1),
    _int("max-queue-length", 1, None, 1000000),
    Param("metadata", Kind.METADATA, "an object mapping metadata keys to strings", {}),
    _str("metric-group", "other", pattern=_METRIC_GROUP_RE, min_len=2, max_len=32,
         allowed="a string of 2 to 32 characters: lower-case letters and digits starting with a letter, "
                 "with single dashes or underscores between alphanumeric parts"),
    _str("name"),
    _str("namespace"),
    _str("permitted-user", "*"),
    _int("ports", 1, 10, 1),
    _str("profile"),
    _num("restart-backoff-factor", 1, None, 2),
    _enum("routing-mode",
          ("default", "waiter-router", "headless", "ingress-centralized", "ingress-distributed"), "default"),
    _num("scale-factor", 0, 2, 1, lo_open=True),
    _num("scale-up-factor", 0, 1, 0.1, lo_open=True, hi_open=True),
    _num("scale-down-factor", 0, 1, 0.001, lo_open=True, hi_open=True),
    _str("scheduler"),
    _int("termination-grace-period-secs", 0, 300, 0),
)

_TOKEN = (
    _str("owner"),
    _str("editor"),
    Param("cors-rules", Kind.CORS_RULES, "a list of rule objects"),
    _int("fallback-period-secs", 0, 86400, 300, between=True),
    Param("https-redirect", Kind.BOOL, "true or false", False),
    Param("maintenance", Kind.MAINTENANCE, 'an object {"message": "..."}'),
    _enum("service-mapping", ("default", "exclusive", "legacy"), "legacy"),
    _int("stale-timeout-mins", 0, 240, 15, between=True),
    _int("queue-timeout-ms", 0, 3600000, 300000, between=True),
    _int("socket-timeout-ms", 0, 3600000, 900000, between=True),
    _int("streaming-timeout-ms", 0, 3600000, 20000, between=True),
)

SERVICE_PARAMS: Mapping[str, Param] = {p.name: p for p in _SERVICE}
TOKEN_PARAMS: Mapping[str, Param] = {p.name: p for p in _TOKEN}
SYSTEM_METADATA: frozenset[str] = frozenset(
    {"cluster", "deleted", "last-update-time", "last-update-user", "previous", "root"})
REQUIRED_PARAMS: tuple[str, ...] = ("cmd", "cpus", "mem", "version")
