"""Service descriptions: x-waiter-* headers, token merging, the core description and service ids (API §2, §3).

Pure logic, no I/O. A request's *core* description holds only the parameters somebody gave (token or header),
so router defaults never change a service id; ``effective`` adds the defaults afterwards. Checking a description
or a token is ``waiter.validation``'s job; both raise ``DescriptorError``, each line naming the field, the value
and what is allowed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from waiter import jsonbounds
from waiter.params import (
    REQUIRED_PARAMS,
    SERVICE_PARAMS,
    SYSTEM_METADATA,
    TOKEN_PARAMS,
    Kind,
    Param,
    env_entry_problems,
    metadata_entry_problems,
    show,
    text_problems,
)

__all__ = [
    "REQUIRED_PARAMS",
    "SERVICE_HEADLINE",
    "SERVICE_PARAMS",
    "SYSTEM_METADATA",
    "TOKEN_PARAMS",
    "DescriptorError",
    "Param",
    "RequestOptions",
    "WaiterHeaders",
    "build_core",
    "effective",
    "merge_tokens",
    "parse_headers",
    "service_id",
    "split_token",
    "token_defaults",
]

SERVICE_HEADLINE = "Service description using waiter headers/token improperly configured"
_HEADER_PREFIX = "x-waiter-"
_MAP_PARAMS = ("env", "metadata")


class DescriptorError(Exception):
    """400-class problem with a service description, a token or x-waiter headers."""

    def __init__(self, headline: str, problems: Sequence[str] = (), *, status: int = 400) -> None:
        self.status = status
        self.headline = headline
        self.problems = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join([self.headline, *self.problems])


@dataclass(frozen=True)
class RequestOptions:
    """Per-request, non-service headers (§3.1)."""

    timeout_ms: int | None = None
    queue_timeout_ms: int | None = None
    streaming_timeout_ms: int | None = None
    fallback_period_secs: int | None = None
    async_check_interval_secs: int | None = None
    async_request_timeout_secs: int | None = None
    debug: bool = False


@dataclass(frozen=True)
class WaiterHeaders:
    tokens: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    param_env_keys: frozenset[str] = frozenset()
    options: RequestOptions = field(default_factory=RequestOptions)

    @property
    def on_the_fly(self) -> bool:
        """True iff any service param came from a header other than x-waiter-param-*."""
        env = self.params.get("env", {})
        return any(k != "env" for k in self.params) or any(k not in self.param_env_keys for k in env)


# -- header parsing ------------------------------------------------------------------------------------------

# header suffix -> (RequestOptions field, lowest, highest); async headers accepted with and without "-secs"
_OPTIONS: dict[str, tuple[str, int, int]] = {
    "timeout": ("timeout_ms", 1, 3_600_000),
    "queue-timeout": ("queue_timeout_ms", 1, 3_600_000),
    "streaming-timeout": ("streaming_timeout_ms", 1, 3_600_000),
    "fallback-period-secs": ("fallback_period_secs", 0, 86_400),
    "async-check-interval": ("async_check_interval_secs", 1, 14_400),
    "async-check-interval-secs": ("async_check_interval_secs", 1, 14_400),
    "async-request-timeout": ("async_request_timeout_secs", 1, 14_400),
    "async-request-timeout-secs": ("async_request_timeout_secs", 1, 14_400),
}
_INT_RE = re.compile(r"-?[0-9]+")


@dataclass
class _HeaderParse:
    tokens: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    param_env: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    unsupported: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    def result(self) -> WaiterHeaders:
        params = dict(self.params)
        if self.env or self.param_env:
            params["env"] = {**self.param_env, **self.env}
        if self.metadata:
            params["metadata"] = dict(self.metadata)
        return WaiterHeaders(self.tokens, params, frozenset(set(self.param_env) - set(self.env)),
                             RequestOptions(**self.options))


def parse_headers(headers: Iterable[tuple[str, str]]) -> WaiterHeaders:
    """Parse every x-waiter-* header (names case-insensitive, others ignored); report all bad ones at once."""
    state = _HeaderParse()
    for raw_name, value in headers:
        name = raw_name.lower()
        if not name.startswith(_HEADER_PREFIX):
            continue
        garbled = text_problems(value, name)
        if garbled:
            state.problems += garbled  # nothing a header says is used when its bytes are not text
        else:
            _parse_header(state, name, name[len(_HEADER_PREFIX):], value)
    problems = list(state.problems)
    if state.unsupported:
        problems.insert(0, "Unsupported waiter headers found: " + ", ".join(sorted(state.unsupported)))
    if problems:
        raise DescriptorError(SERVICE_HEADLINE, problems)
    return state.result()


def _parse_header(state: _HeaderParse, name: str, suffix: str, value: str) -> None:
    if suffix == "token":
        state.tokens = tuple(t.strip() for t in value.split(",") if t.strip())
    elif suffix == "debug":
        state.options["debug"] = value.strip().lower() == "true"
    elif suffix in _OPTIONS:
        _parse_option(state, name, suffix, value)
    elif suffix.startswith("env-"):
        _parse_env(state.env, state, name, suffix[len("env-"):].upper(), value)
    elif suffix.startswith("param-"):
        _parse_env(state.param_env, state, name, suffix[len("param-"):].upper(), value)
    elif suffix.startswith("metadata-"):
        key = suffix[len("metadata-"):]
        problems = metadata_entry_problems(key, value, name)
        state.problems += problems
        if not problems:
            state.metadata[key] = value
    elif suffix in SERVICE_PARAMS and suffix not in _MAP_PARAMS:
        _parse_param(state, SERVICE_PARAMS[suffix], name, value)
    else:
        state.unsupported.add(name)


def _parse_option(state: _HeaderParse, name: str, suffix: str, value: str) -> None:
    attr, lo, hi = _OPTIONS[suffix]
    text = value.strip()
    if _INT_RE.fullmatch(text) and lo <= int(text) <= hi:
        state.options[attr] = int(text)
    else:
        state.problems.append(f"{name} must be an integer in the range [{lo}, {hi}]. Got {show(value)}.")


def _parse_env(target: dict[str, str], state: _HeaderParse, name: str, key: str, value: str) -> None:
    problems = env_entry_problems(key, value, name, user=True)
    state.problems += problems
    if not problems:
        target[key] = value


def _parse_param(state: _HeaderParse, param: Param, name: str, value: str) -> None:
    parsed: Any
    if param.kind is Kind.STRING_LIST:
        parsed = [v.strip() for v in value.split(",") if v.strip()]
    elif param.header_is_string:
        parsed = value
    else:
        try:
            parsed = jsonbounds.loads(value, name)
        except jsonbounds.TooDeep as exc:
            state.problems.append(str(exc))
            return
        except jsonbounds.JsonError:
            state.problems.append(param.sentence(name, show(value)))
            return
    problems = param.problems(parsed, label=name, shown=show(value))
    if not problems and param.name == "idle-timeout-mins" and parsed == 0:
        # a never-idle service must be declared in a token, where somebody owns it
        problems = [f"{name} must be an integer in the range [1, 43200] (0 is only allowed in tokens). "
                    f"Got {show(value)}."]
    state.problems += problems
    if not problems:
        state.params[param.name] = parsed


# -- tokens --------------------------------------------------------------------------------------------------


def split_token(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a token record into (service params, token user metadata); system metadata, "token" dropped."""
    params = {k: v for k, v in data.items() if k in SERVICE_PARAMS}
    meta = {k: v for k, v in data.items() if k in TOKEN_PARAMS}
    return copy.deepcopy(params), copy.deepcopy(meta)


def merge_tokens(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge token records left to right (later wins; env and metadata deep-merged)."""
    merged: dict[str, Any] = {}
    for record in records:
        for key, value in record.items():
            earlier = merged.get(key)
            if key in _MAP_PARAMS and isinstance(value, Mapping) and isinstance(earlier, Mapping):
                merged[key] = {**earlier, **value}
            else:
                merged[key] = value
    return copy.deepcopy(merged)


def token_defaults(token_meta: Mapping[str, Any]) -> dict[str, Any]:
    """Token user metadata with the §2.2 defaults filled in."""
    defaults = {name: p.default for name, p in TOKEN_PARAMS.items() if p.default is not None}
    return copy.deepcopy({**defaults, **token_meta})


# -- building the core description ---------------------------------------------------------------------------


def build_core(token_params: Mapping[str, Any], headers: WaiterHeaders, requester: str,
               *, has_token: bool, host_token_needs_consent: bool = False) -> dict[str, Any]:
    """The core service description by the precedence of §3.3 (token, then headers, then param env).

    ``has_token`` says a token was found (x-waiter-token or Host); a missing or '*' run-as-user then becomes
    the requester. With ``host_token_needs_consent`` a token named only by the Host header leaves it missing
    instead, so the caller can ask for consent (§3.3 step 3).
    """
    if not (has_token or headers.tokens or headers.on_the_fly):
        raise DescriptorError("Unable to identify service using waiter headers/token")
    core = {k: v for k, v in token_params.items() if k in SERVICE_PARAMS}  # shared until the deep copy at the end
    header_env = headers.params.get("env", {})
    for key, value in headers.params.items():
        if key == "metadata":
            core["metadata"] = {**_as_dict(core.get("metadata")), **value}
        elif key != "env":
            core[key] = value
    fly_env = {k: v for k, v in header_env.items() if k not in headers.param_env_keys}
    param_env = {k: v for k, v in header_env.items() if k in headers.param_env_keys}
    if fly_env:
        core["env"] = {**_as_dict(core.get("env")), **fly_env}
    if param_env:
        _apply_param_env(core, param_env)
    if isinstance(core.get("allowed-params"), list | tuple | set | frozenset):
        # a set in meaning: one canonical order keeps the service id stable
        core["allowed-params"] = sorted(set(core["allowed-params"]), key=str)
    named = headers.on_the_fly or bool(headers.tokens)
    fill_requester = named or (has_token and not host_token_needs_consent)
    _resolve_users(core, headers, requester, fill_requester)
    return copy.deepcopy(core)


def _as_dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _apply_param_env(core: dict[str, Any], param_env: Mapping[str, str]) -> None:
    allowed_raw = core.get("allowed-params")
    allowed = set(allowed_raw) if isinstance(allowed_raw, list | tuple | set | frozenset) else set()
    refused = sorted(set(param_env) - allowed)
    if refused:
        listed = ", ".join(sorted(str(name) for name in allowed)) or "none"  # not validated yet: any JSON
        raise DescriptorError(f"Some params cannot be configured: {', '.join(refused)}",
                              [f"x-waiter-param-* may only set the allowed-params of the token ({listed})."])
    core["env"] = {**_as_dict(core.get("env")), **param_env}


def _resolve_users(core: dict[str, Any], headers: WaiterHeaders, requester: str,
                   fill_requester: bool) -> None:
    if headers.on_the_fly:
        core["run-as-user"] = headers.params.get("run-as-user", requester)
        core["permitted-user"] = headers.params.get("permitted-user", requester)
    if core.get("run-as-user") in (None, "*"):
        core.pop("run-as-user", None)
        if fill_requester:
            core["run-as-user"] = requester
            core["permitted-user"] = requester
    if core.get("namespace") == "*" and "run-as-user" in core:
        core["namespace"] = core["run-as-user"]


# -- effective description and service id --------------------------------------------------------------------


def effective(core: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """core + defaults (overrides: router defaults, applied before core); liveness-check-* copied over.

    Never changes the service id, which is computed from the core alone.
    """
    result = {name: p.default for name, p in SERVICE_PARAMS.items() if p.default is not None}
    result.update(overrides or {})
    if "max-instances" in core and _is_int(core["max-instances"]):
        # a small max-instances must not clash with a default min-instances above it (core's own min still wins)
        result["min-instances"] = min(result["min-instances"], max(core["max-instances"], 1))
    result.update(core)
    for name in SERVICE_PARAMS:
        if name.startswith("liveness-check-") and name not in result:
            source = name.replace("liveness-check-", "health-check-")
            if result.get(source) is not None:
                result[name] = result[source]
    return copy.deepcopy(result)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def service_id(core: Mapping[str, Any], prefix: str = "waiter-service-") -> str:
    """prefix + sanitised name + '-' (when named) + md5 of the canonical JSON of the core service params."""
    params = {k: _canonical(v) for k, v in core.items() if k in SERVICE_PARAMS}
    digest = hashlib.md5(json.dumps(params, sort_keys=True, separators=(",", ":")).encode(),
                         usedforsecurity=False).hexdigest()
    name = core.get("name")
    label = re.sub(r"[^a-z0-9]", "", name.lower()) if isinstance(name, str) else ""
    return f"{prefix}{label}-{digest}" if label else f"{prefix}{digest}"


def _canonical(value: Any) -> Any:
    """1.0 and 1 are the same cpus; sets hash in one order."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted((_canonical(v) for v in value), key=str)
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value
