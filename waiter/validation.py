"""Checking service descriptions and token bodies: every problem reported at once (API §2, §3).

Pure logic, no I/O. ``validate_service`` checks a core description before it is run; ``validate_token`` checks a
token body as POST /token receives it (a partial template). Each raises one ``DescriptorError`` whose lines name
the field, the value and what is allowed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from waiter.descriptor import SERVICE_HEADLINE, DescriptorError, split_token
from waiter.params import (
    REQUIRED_PARAMS,
    SERVICE_PARAMS,
    SYSTEM_METADATA,
    TOKEN_PARAMS,
    Kind,
    env_problems,
    fmt_number,
    is_number,
    show,
    text_problems,
)

__all__ = ["TOKEN_HEADLINE", "validate_service", "validate_token"]

TOKEN_HEADLINE = "Validation failed for token:"
_STRING_LIMITS = {"cmd": 1200}
_RUN_AS_REQUIRED = (*REQUIRED_PARAMS, "run-as-user")


def validate_token(data: Mapping[str, Any], *, max_cpus: float = 32, max_mem: float = 131072) -> None:
    """Validate a token body as POST /token would (a partial template: required params may be missing).

    Unknown keys, service-param problems and user-metadata problems are all reported in one error; its
    headline is the one of the only kind of problem found, or the service headline when kinds are mixed.
    """
    garbled = text_problems(data)
    if garbled:
        raise DescriptorError(SERVICE_HEADLINE, garbled)
    known = SERVICE_PARAMS.keys() | TOKEN_PARAMS.keys() | SYSTEM_METADATA | {"token"}
    unknown = sorted(set(data) - known)
    unknown_line = [f"Unsupported key(s) in token: {json.dumps(unknown)}"] if unknown else []
    params, meta = split_token(data)
    service = _service_problems(params, partial=True, user=True, max_cpus=max_cpus, max_mem=max_mem)
    service += _token_rule_problems(params)
    user = [p for name, value in meta.items() for p in TOKEN_PARAMS[name].problems(value)]
    kinds = [k for k in (unknown_line, service, user) if k]
    if not kinds:
        return
    if len(kinds) > 1:
        raise DescriptorError(SERVICE_HEADLINE, [*unknown_line, *service, *user])
    if unknown_line:
        raise DescriptorError(unknown_line[0])
    raise DescriptorError(SERVICE_HEADLINE if service else TOKEN_HEADLINE, kinds[0])


def _token_rule_problems(params: Mapping[str, Any]) -> list[str]:
    """Rules only a token has: it may serve requests without a caller-specific run-as-user being filled in."""
    problems: list[str] = []
    missing = [k for k in _RUN_AS_REQUIRED if k not in params]
    if params.get("authentication") == "disabled":
        if params.get("permitted-user") != "*":
            problems.append("permitted-user must be '*' when authentication is 'disabled'. "
                            f"Got {show(params.get('permitted-user'))}.")
        if missing:
            problems.append("Tokens with authentication 'disabled' must specify all required parameters; "
                            f"missing: {', '.join(missing)}.")
    interstitial = params.get("interstitial-secs")
    if isinstance(interstitial, int) and interstitial > 0 and missing:
        problems.append(f"interstitial-secs ({interstitial}) needs all required parameters; "
                        f"missing: {', '.join(missing)}.")
    return problems



def validate_service(core: Mapping[str, Any], *, max_cpus: float = 32, max_mem: float = 131072) -> None:
    """Full validation of a core description; every problem is reported, one line per bad field."""
    problems = text_problems(core) or _service_problems(
        core, partial=False, user=False, max_cpus=max_cpus, max_mem=max_mem
    )
    if problems:
        raise DescriptorError(SERVICE_HEADLINE, problems)


def _service_problems(params: Mapping[str, Any], *, partial: bool, user: bool,
                      max_cpus: float, max_mem: float) -> list[str]:
    problems: list[str] = []
    if not partial:
        missing = [k for k in _RUN_AS_REQUIRED if params.get(k) is None]
        if missing:
            problems.append(f"Missing required parameter(s): {', '.join(missing)}")
        unknown = sorted(set(params) - SERVICE_PARAMS.keys())
        if unknown:
            problems.append(f"Unsupported key(s) in service description: {json.dumps(unknown)}")
    for name, param in SERVICE_PARAMS.items():
        if name not in params or (not partial and params[name] is None and name in _RUN_AS_REQUIRED):
            continue
        if param.kind is Kind.ENV:
            problems += env_problems(params[name], user=user)
        else:
            problems += param.problems(params[name])
    problems += _limit_problems(params, {"cpus": max_cpus, "mem": max_mem})
    problems += _cross_field_problems(params, partial=partial)
    return problems


def _limit_problems(params: Mapping[str, Any], maxima: Mapping[str, float]) -> list[str]:
    over: list[str] = []
    for name in sorted({*maxima, *_STRING_LIMITS}):
        value = params.get(name)
        if name in _STRING_LIMITS and isinstance(value, str) and len(value) > _STRING_LIMITS[name]:
            over.append(f"{name} must be at most {_STRING_LIMITS[name]} characters")
        elif name in maxima and is_number(value) and value > maxima[name]:
            over.append(f"{name} is {fmt_number(value)} but the max allowed is {fmt_number(maxima[name])}")
    return ["The following fields exceed their allowed limits: " + ", ".join(over)] if over else []


def _valid(params: Mapping[str, Any], name: str) -> Any:
    """The given value if it passed its own check, else the code default (None when there is none)."""
    value = params.get(name)
    param = SERVICE_PARAMS[name]
    return value if name in params and param.accepts(value) else param.default


def _cross_field_problems(params: Mapping[str, Any], *, partial: bool) -> list[str]:
    problems: list[str] = []
    lo, hi = _valid(params, "min-instances"), _valid(params, "max-instances")
    if lo > hi:  # the defaults (1 and 500) never clash: only a given value can
        problems.append(f"min-instances ({lo}) must be less than or equal to max-instances ({hi}).")
    for prefix in ("health-check-", "liveness-check-"):
        problems += _check_rules(params, prefix)
    problems += _namespace_problems(params, partial=partial)
    return problems


def _check_rules(params: Mapping[str, Any], prefix: str) -> list[str]:
    problems: list[str] = []
    auth = f"{prefix}authentication"
    if _valid(params, "authentication") == "disabled" and params.get(auth) == "standard":
        problems.append(f"{auth} must be 'disabled' when authentication is 'disabled'. Got \"standard\".")
    index_key, proto_key = f"{prefix}port-index", f"{prefix}proto"
    if index_key not in params and proto_key not in params:
        # the defaults never clash; liveness checks copy the health-check values, which are checked already
        return problems
    index = _valid(params, index_key if index_key in params else "health-check-port-index")
    proto = _valid(params, proto_key if proto_key in params else "health-check-proto")
    ports, backend = _valid(params, "ports"), _valid(params, "backend-proto")
    if index_key in params and index is not None and index >= ports:
        problems.append(f"{index_key} ({index}) must be smaller than ports ({ports}).")
    if proto is not None and index == 0 and proto != backend:
        problems.append(f"{proto_key} ({proto}) must equal backend-proto ({backend}) when {index_key} is 0.")
    return problems


def _namespace_problems(params: Mapping[str, Any], *, partial: bool) -> list[str]:
    namespace, user = params.get("namespace"), params.get("run-as-user")
    if namespace is None or (partial and (namespace == "*" or user is None)):
        return []
    if user == "*":
        return [f"namespace ({namespace}) cannot be set when run-as-user is '*'; omit it or use '*'."]
    if namespace != user:
        return [f"namespace ({namespace}) must either be omitted or match run-as-user ({user})."]
    return []
