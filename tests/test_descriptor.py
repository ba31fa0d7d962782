"""Table tests for waiter.descriptor and waiter.validation: parameters, headers, tokens, precedence, service ids,
defaults."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from waiter.descriptor import (
    REQUIRED_PARAMS,
    SERVICE_PARAMS,
    SYSTEM_METADATA,
    TOKEN_PARAMS,
    DescriptorError,
    RequestOptions,
    WaiterHeaders,
    build_core,
    effective,
    merge_tokens,
    parse_headers,
    service_id,
    split_token,
    token_defaults,
)
from waiter.validation import validate_service, validate_token

SERVICE_HEADLINE = "Service description using waiter headers/token improperly configured"
BASE: dict[str, Any] = {"cmd": "run", "cpus": 1, "mem": 128, "version": "v1", "run-as-user": "alice"}


def _errors(fn: Any, *args: Any, **kwargs: Any) -> DescriptorError:
    with pytest.raises(DescriptorError) as info:
        fn(*args, **kwargs)
    return info.value


def _many(prefix: str, count: int) -> dict[str, str]:
    return {f"{prefix}{i}": "v" for i in range(count)}


# -- the tables themselves -----------------------------------------------------------------------------------

def test_service_params_are_exactly_those_of_the_contract() -> None:
    documented = {
        "cmd", "cpus", "mem", "version", "run-as-user", "cmd-type", "allowed-params", "authentication",
        "backend-proto", "concurrency-level", "distribution-scheme", "env", "expired-instance-restart-rate",
        "grace-period-secs", "health-check-authentication", "health-check-interval-secs",
        "health-check-max-consecutive-failures", "health-check-port-index", "health-check-proto",
        "health-check-url", "idle-timeout-mins", "image", "instance-expiry-mins", "interstitial-secs",
        "jitter-threshold", "load-balancing", "max-instances", "min-instances", "max-queue-length",
        "metadata", "metric-group", "name", "namespace", "permitted-user", "ports", "profile",
        "restart-backoff-factor", "routing-mode", "scale-factor", "scale-up-factor", "scale-down-factor",
        "scheduler",
        "termination-grace-period-secs", "liveness-check-authentication", "liveness-check-interval-secs",
        "liveness-check-max-consecutive-failures", "liveness-check-port-index", "liveness-check-proto",
        "liveness-check-url",
    }
    assert set(SERVICE_PARAMS) == documented
    assert set(TOKEN_PARAMS) == {
        "owner", "editor", "cors-rules", "fallback-period-secs", "https-redirect", "maintenance",
        "service-mapping", "stale-timeout-mins", "queue-timeout-ms", "socket-timeout-ms",
        "streaming-timeout-ms"}
    assert frozenset({"cluster", "deleted", "last-update-time", "last-update-user", "previous", "root"}) \
        == SYSTEM_METADATA
    assert REQUIRED_PARAMS == ("cmd", "cpus", "mem", "version")
    assert not set(SERVICE_PARAMS) & set(TOKEN_PARAMS)


def test_liveness_params_mirror_health_check_params() -> None:
    for name, param in SERVICE_PARAMS.items():
        if name.startswith("liveness-check-"):
            twin = SERVICE_PARAMS[name.replace("liveness-check-", "health-check-")]
            assert (param.kind, param.lo, param.hi, param.choices, param.default) == \
                (twin.kind, twin.lo, twin.hi, twin.choices, None)


# -- every service parameter: valid and invalid values -------------------------------------------------------

# (param, value, valid?, extra params the case needs)
SERVICE_CASES: list[tuple[str, Any, bool, dict[str, Any]]] = [
    ("cmd", "x", True, {}), ("cmd", "a" * 1200, True, {}), ("cmd", "", False, {}),
    ("cmd", 5, False, {}), ("cmd", "a" * 1201, False, {}),
    ("cpus", 0.1, True, {}), ("cpus", 32, True, {}), ("cpus", 0, False, {}), ("cpus", -1, False, {}),
    ("cpus", "1", False, {}), ("cpus", True, False, {}), ("cpus", 32.5, False, {}),
    ("mem", 1, True, {}), ("mem", 131072, True, {}), ("mem", 0, False, {}), ("mem", 131073, False, {}),
    ("version", "v", True, {}), ("version", "", False, {}), ("version", 1, False, {}),
    ("run-as-user", "bob", True, {}), ("run-as-user", "", False, {}),
    ("cmd-type", "shell", True, {}), ("cmd-type", "docker", True, {}), ("cmd-type", "bash", False, {}),
    ("allowed-params", [], True, {}), ("allowed-params", ["FOO", "BAR_1", "WAITER_CONFIG_X"], True, {}),
    ("allowed-params", "FOO", False, {}), ("allowed-params", ["1X"], False, {}),
    ("allowed-params", ["HOME"], False, {}), ("allowed-params", ["PORT0"], False, {}),
    ("authentication", "standard", True, {}), ("authentication", "disabled", True, {}),
    ("authentication", "kerberos", False, {}),
    ("backend-proto", "h2c", True, {}), ("backend-proto", "grpc", False, {}),
    ("concurrency-level", 1, True, {}), ("concurrency-level", 10000, True, {}),
    ("concurrency-level", 0, False, {}), ("concurrency-level", 10001, False, {}),
    ("concurrency-level", 1.5, False, {}), ("concurrency-level", "2", False, {}),
    ("distribution-scheme", "simple", True, {}), ("distribution-scheme", "random", False, {}),
    ("env", {"FOO": "bar"}, True, {}), ("env", {"WAITER_CONFIG_TOKEN": "t"}, True, {}),
    ("env", {"PORT": "x", "PORTAL": "y", "MY_HOME": "z"}, True, {}),
    ("env", {"A" * 512: "x"}, True, {}), ("env", {"A": "x" * 512}, True, {}),
    ("env", _many("V", 99), True, {}),
    ("env", {"HOME": "x"}, False, {}), ("env", {"MESOS_X": "x"}, False, {}),
    ("env", {"MARATHON_X": "x"}, False, {}),
    ("env", {"PORT1": "x"}, False, {}), ("env", {"WAITER_X": "x"}, False, {}),
    ("env", {"1A": "x"}, False, {}),
    ("env", {"A": ""}, False, {}), ("env", {"A": "x" * 513}, False, {}), ("env", {"A" * 513: "x"}, False, {}),
    ("env", {"A": 5}, False, {}), ("env", _many("V", 100), False, {}), ("env", "FOO=bar", False, {}),
    ("expired-instance-restart-rate", 1, True, {}), ("expired-instance-restart-rate", 0.01, True, {}),
    ("expired-instance-restart-rate", 0, False, {}), ("expired-instance-restart-rate", 1.1, False, {}),
    ("grace-period-secs", 0, True, {}), ("grace-period-secs", 3600, True, {}),
    ("grace-period-secs", -1, False, {}), ("grace-period-secs", 3601, False, {}),
    ("health-check-authentication", "standard", True, {}),
    ("health-check-authentication", "basic", False, {}),
    ("health-check-interval-secs", 5, True, {}), ("health-check-interval-secs", 600, True, {}),
    ("health-check-interval-secs", 4, False, {}), ("health-check-interval-secs", 601, False, {}),
    ("health-check-max-consecutive-failures", 1, True, {}),
    ("health-check-max-consecutive-failures", 36, True, {}),
    ("health-check-max-consecutive-failures", 0, False, {}),
    ("health-check-max-consecutive-failures", 37, False, {}),
    ("health-check-port-index", 0, True, {}), ("health-check-port-index", 9, True, {"ports": 10}),
    ("health-check-port-index", -1, False, {}), ("health-check-port-index", 10, False, {"ports": 10}),
    ("health-check-proto", None, True, {}), ("health-check-proto", "http", True, {}),
    ("health-check-proto", "ftp", False, {}),
    ("health-check-url", "/x", True, {}), ("health-check-url", "", False, {}),
    ("liveness-check-authentication", "standard", True, {}),
    ("liveness-check-authentication", "x", False, {}),
    ("liveness-check-interval-secs", 600, True, {}), ("liveness-check-interval-secs", 4, False, {}),
    ("liveness-check-max-consecutive-failures", 36, True, {}),
    ("liveness-check-max-consecutive-failures", 37, False, {}),
    ("liveness-check-port-index", 1, True, {"ports": 2}), ("liveness-check-port-index", 10, False, {}),
    ("liveness-check-proto", None, True, {}), ("liveness-check-proto", "udp", False, {}),
    ("liveness-check-url", "/live", True, {}), ("liveness-check-url", "", False, {}),
    ("idle-timeout-mins", 0, True, {}), ("idle-timeout-mins", 43200, True, {}),
    ("idle-timeout-mins", -1, False, {}), ("idle-timeout-mins", 43201, False, {}),
    ("image", "img:1", True, {}), ("image", "", False, {}),
    ("instance-expiry-mins", 0, True, {}), ("instance-expiry-mins", 10**6, True, {}),
    ("instance-expiry-mins", -1, False, {}),
    ("interstitial-secs", 0, True, {}), ("interstitial-secs", 3600, True, {}),
    ("interstitial-secs", 3601, False, {}),
    ("jitter-threshold", 0, True, {}), ("jitter-threshold", 0.99, True, {}),
    ("jitter-threshold", 1, False, {}),
    ("jitter-threshold", -0.1, False, {}),
    ("load-balancing", "random", True, {}), ("load-balancing", "newest", False, {}),
    ("max-instances", 1, True, {}), ("max-instances", 2000, True, {}), ("max-instances", 0, False, {}),
    ("max-instances", 2001, False, {}),
    ("min-instances", 1, True, {}), ("min-instances", 2000, True, {"max-instances": 2000}),
    ("min-instances", 0, False, {}), ("min-instances", 2001, False, {"max-instances": 2000}),
    ("max-queue-length", 1, True, {}), ("max-queue-length", 10**9, True, {}),
    ("max-queue-length", 0, False, {}),
    ("metadata", {"a-b1": "x"}, True, {}), ("metadata", {"a": "x" * 999}, True, {}),
    ("metadata", _many("k", 99), True, {}),
    ("metadata", {"A": "x"}, False, {}), ("metadata", {"a_b": "x"}, False, {}),
    ("metadata", {"a": ""}, False, {}),
    ("metadata", {"a": 1}, False, {}), ("metadata", {"a": "x" * 1000}, False, {}),
    ("metadata", _many("k", 100), False, {}), ("metadata", ["a"], False, {}),
    ("metric-group", "ab", True, {}), ("metric-group", "a_b-c1", True, {}),
    ("metric-group", "a" * 32, True, {}),
    ("metric-group", "a", False, {}), ("metric-group", "a" * 33, False, {}),
    ("metric-group", "Ab", False, {}),
    ("metric-group", "a__b", False, {}), ("metric-group", "1a", False, {}),
    ("name", "n", True, {}), ("name", "", False, {}),
    ("namespace", "alice", True, {}), ("namespace", "bob", False, {}),
    ("permitted-user", "*", True, {}), ("permitted-user", "", False, {}),
    ("ports", 1, True, {}), ("ports", 10, True, {}), ("ports", 0, False, {}), ("ports", 11, False, {}),
    ("profile", "p", True, {}), ("profile", "", False, {}),
    ("restart-backoff-factor", 1, True, {}), ("restart-backoff-factor", 2.5, True, {}),
    ("restart-backoff-factor", 0.9, False, {}),
    *[("routing-mode", mode, True, {}) for mode in
      ("default", "waiter-router", "headless", "ingress-centralized", "ingress-distributed")],
    ("routing-mode", "mesh", False, {}),
    ("scale-factor", 2, True, {}), ("scale-factor", 0.01, True, {}), ("scale-factor", 0, False, {}),
    ("scale-factor", 2.01, False, {}),
    ("scale-up-factor", 0.5, True, {}), ("scale-up-factor", 0, False, {}), ("scale-up-factor", 1, False, {}),
    ("scale-down-factor", 0.001, True, {}), ("scale-down-factor", 0, False, {}),
    ("scale-down-factor", 1, False, {}),
    ("scheduler", "shell", True, {}), ("scheduler", "", False, {}),
    ("termination-grace-period-secs", 0, True, {}), ("termination-grace-period-secs", 300, True, {}),
    ("termination-grace-period-secs", 301, False, {}),
]


def _case_id(name: str, value: Any, ok: bool) -> str:
    shown = repr(value) if len(repr(value)) <= 20 else f"{type(value).__name__}[{len(value)}]"
    return f"{name}={shown}-{'ok' if ok else 'bad'}"


@pytest.mark.parametrize(("name", "value", "ok", "extra"), SERVICE_CASES,
                         ids=[_case_id(n, v, ok) for n, v, ok, _ in SERVICE_CASES])
def test_service_param_values(name: str, value: Any, ok: bool, extra: dict[str, Any]) -> None:
    core = {**BASE, **extra, name: value}
    if ok:
        validate_service(core)
        return
    err = _errors(validate_service, core)
    assert err.headline == SERVICE_HEADLINE and err.status == 400
    assert len(err.problems) == 1
    assert name in err.problems[0]


def test_every_service_param_has_valid_and_invalid_cases() -> None:
    valid = {n for n, _, ok, _ in SERVICE_CASES if ok}
    invalid = {n for n, _, ok, _ in SERVICE_CASES if not ok}
    assert valid == invalid == set(SERVICE_PARAMS)


@pytest.mark.parametrize(("core", "expected"), [
    ({**BASE, "cpus": 0}, "cpus must be a positive number. Got 0."),
    ({**BASE, "concurrency-level": 0},
     "concurrency-level must be an integer in the range [1, 10000]. Got 0."),
    ({**BASE, "cmd": ""}, 'cmd must be a non-empty string. Got "".'),
    ({**BASE, "cpus": 64},
     "The following fields exceed their allowed limits: cpus is 64 but the max allowed is 32"),
    ({**BASE, "cpus": 64, "mem": 200000.5},
     "The following fields exceed their allowed limits: cpus is 64 but the max allowed is 32, "
     "mem is 200000.5 but the max allowed is 131072"),
    ({**BASE, "cmd": "x" * 1201},
     "The following fields exceed their allowed limits: cmd must be at most 1200"),
    ({"cpus": 1, "mem": 1, "run-as-user": "a"}, "Missing required parameter(s): cmd, version"),
    ({}, "Missing required parameter(s): cmd, cpus, mem, version, run-as-user"),
    ({**BASE, "backend-proto": "ftp"},
     "backend-proto must be one of: 'http', 'https', 'h2', 'h2c'. Got \"ftp\"."),
    ({**BASE, "surprise": 1}, 'Unsupported key(s) in service description: ["surprise"]'),
    ({**BASE, "env": {"HOME": "/x"}}, 'Environment variable name "HOME" in env is reserved'),
], ids=["positive-number", "range", "non-empty", "limit-cpus", "limit-both", "limit-cmd", "missing-some",
        "missing-all", "enum", "unknown-key", "reserved-env"])
def test_validate_service_wording(core: dict[str, Any], expected: str) -> None:
    err = _errors(validate_service, core)
    assert any(p.startswith(expected) for p in err.problems), err.problems
    assert str(err).startswith(SERVICE_HEADLINE + "\n")


NUL_IN_CMD = "cmd must be UTF-8 text without NUL characters, but it contains a NUL character at position 1."


@pytest.mark.parametrize(("validate", "data", "headline", "problems"), [
    (validate_service, {**BASE, "cmd": None}, SERVICE_HEADLINE, ["Missing required parameter(s): cmd"]),
    (validate_service, {**BASE, "image": None}, SERVICE_HEADLINE, ["image must be a non-empty string. Got null."]),
    (validate_service, {**BASE, "cmd": "a\x00"}, SERVICE_HEADLINE, [NUL_IN_CMD]),
    (validate_token, {"cmd": None}, SERVICE_HEADLINE, ["cmd must be a non-empty string. Got null."]),
    (validate_token, {"cmd": "a\x00", "bogus": 1}, SERVICE_HEADLINE, [NUL_IN_CMD]),
    (validate_token, {"mem": 131073}, SERVICE_HEADLINE,
     ["The following fields exceed their allowed limits: mem is 131073 but the max allowed is 131072"]),
    (validate_token, {"bogus": 1, "cpus": 0}, SERVICE_HEADLINE,
     ['Unsupported key(s) in token: ["bogus"]', "cpus must be a positive number. Got 0."]),
    (validate_token, {"authentication": "disabled", "permitted-user": "bob", "cmd": "x"}, SERVICE_HEADLINE,
     ["permitted-user must be '*' when authentication is 'disabled'. Got \"bob\".",
      "Tokens with authentication 'disabled' must specify all required parameters; missing: cpus, mem, version, "
      "run-as-user."]),
    (validate_token, {"interstitial-secs": 1, "cmd": "x", "cpus": 1}, SERVICE_HEADLINE,
     ["interstitial-secs (1) needs all required parameters; missing: mem, version, run-as-user."]),
], ids=["missing-required-once", "null-optional", "garbled-service", "null-in-token", "garbled-token-only",
        "default-mem-limit", "two-kinds", "auth-disabled-sentences", "interstitial-one"])
def test_validation_sentences(validate: Any, data: dict[str, Any], headline: str, problems: list[str]) -> None:
    err = _errors(validate, data)
    assert (err.headline, err.problems) == (headline, problems)


def test_validate_service_reports_every_problem_at_once() -> None:
    core = {"cmd": "", "cpus": 64, "mem": 0, "version": "v", "run-as-user": "a", "ports": 0,
            "env": {"1": "x"}, "min-instances": 5, "max-instances": 3}
    err = _errors(validate_service, core)
    for field in ("cmd", "mem", "ports", "env", "cpus is 64", "min-instances (5)"):
        assert any(field in p for p in err.problems), (field, err.problems)
    assert len(err.problems) == 6


@pytest.mark.parametrize(("max_cpus", "max_mem", "ok"), [(64, 131072, True), (32, 131072, False),
                                                          (64, 1024, False)],
                         ids=["raised-cpus", "default-cpus", "lowered-mem"])
def test_configurable_limits(max_cpus: float, max_mem: float, ok: bool) -> None:
    core = {**BASE, "cpus": 64, "mem": 2048}
    if ok:
        validate_service(core, max_cpus=max_cpus, max_mem=max_mem)
    else:
        _errors(validate_service, core, max_cpus=max_cpus, max_mem=max_mem)


# -- cross-field rules ---------------------------------------------------------------------------------------

CROSS_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("min-over-max", {"min-instances": 5, "max-instances": 3},
     "min-instances (5) must be less than or equal"),
    ("min-over-default-max", {"min-instances": 600}, "max-instances (500)"),
    ("min-equals-max", {"min-instances": 3, "max-instances": 3}, None),
    ("auth-disabled-hc-standard", {"authentication": "disabled", "health-check-authentication": "standard"},
     "health-check-authentication must be 'disabled'"),
    ("auth-disabled-liveness-standard",
     {"authentication": "disabled", "liveness-check-authentication": "standard"},
     "liveness-check-authentication must be 'disabled'"),
    ("auth-standard-hc-standard", {"health-check-authentication": "standard"}, None),
    ("port-index-needs-ports", {"health-check-port-index": 1}, "health-check-port-index (1) must be smaller"),
    ("port-index-within-ports", {"health-check-port-index": 1, "ports": 2}, None),
    ("liveness-port-index", {"liveness-check-port-index": 3, "ports": 2}, "liveness-check-port-index (3)"),
    ("proto-differs-on-port-0", {"health-check-proto": "https"}, "health-check-proto (https) must equal"),
    ("proto-equals-backend", {"health-check-proto": "https", "backend-proto": "https"}, None),
    ("proto-differs-other-port", {"health-check-proto": "h2c", "health-check-port-index": 1, "ports": 2},
     None),
    ("liveness-proto-differs", {"liveness-check-proto": "h2"}, "liveness-check-proto (h2) must equal"),
    ("liveness-inherits-proto",
     {"health-check-proto": "h2c", "health-check-port-index": 1, "ports": 2, "liveness-check-port-index": 0},
     "liveness-check-proto (h2c) must equal backend-proto (http) when liveness-check-port-index is 0."),
    ("namespace-mismatch", {"namespace": "bob"}, "namespace (bob) must either be omitted or match"),
    ("namespace-star-user", {"namespace": "alice", "run-as-user": "*"}, "namespace (alice) cannot be set"),
    ("namespace-match", {"namespace": "alice"}, None),
]


@pytest.mark.parametrize(("extra", "expected"), [c[1:] for c in CROSS_CASES], ids=[c[0] for c in CROSS_CASES])
def test_cross_field_rules(extra: dict[str, Any], expected: str | None) -> None:
    core = {**BASE, **extra}
    if expected is None:
        validate_service(core)
        validate_token(core)
        return
    for validate in (validate_service, validate_token):
        err = _errors(validate, core)
        assert any(expected in p for p in err.problems), err.problems


@pytest.mark.parametrize("extra", [{"health-check-proto": "https"}, {"health-check-port-index": 1}],
                         ids=["proto", "port-index"])
def test_health_check_problem_is_not_repeated_for_liveness(extra: dict[str, Any]) -> None:
    assert len(_errors(validate_service, {**BASE, **extra}).problems) == 1


# -- token-only user fields ----------------------------------------------------------------------------------

TOKEN_CASES: list[tuple[str, Any, bool]] = [
    ("owner", "bob", True), ("owner", "", False), ("owner", 1, False),
    ("editor", "carol", True), ("editor", "", False),
    ("cors-rules", [], True), ("cors-rules", [{"origin-regex": ".*"}], True),
    ("cors-rules", [{"origin-regex": r"https://a\.com", "target-path-regex": "/api/.*",
                     "methods": ["GET", "POST"]}], True),
    ("cors-rules", [{}], False), ("cors-rules", [{"origin-regex": "("}], False),
    ("cors-rules", [{"origin-regex": ".*", "target-path-regex": 5}], False),
    ("cors-rules", [{"origin-regex": ".*", "methods": ["get"]}], False),
    ("cors-rules", [{"origin-regex": ".*", "methods": []}], False),
    ("cors-rules", [{"origin-regex": ".*", "x": 1}], False),
    ("cors-rules", {"origin-regex": ".*"}, False), ("cors-rules", ["x"], False),
    ("fallback-period-secs", 0, True), ("fallback-period-secs", 86400, True),
    ("fallback-period-secs", -1, False), ("fallback-period-secs", 86401, False),
    ("fallback-period-secs", "1", False),
    ("https-redirect", True, True), ("https-redirect", False, True), ("https-redirect", "true", False),
    ("https-redirect", 1, False),
    ("maintenance", {"message": "down"}, True), ("maintenance", {"message": "x" * 512}, True),
    ("maintenance", {"message": ""}, False), ("maintenance", {"message": "x" * 513}, False),
    ("maintenance", {}, False), ("maintenance", "down", False),
    ("maintenance", {"message": "m", "x": 1}, False),
    ("service-mapping", "default", True), ("service-mapping", "exclusive", True),
    ("service-mapping", "legacy", True),
    ("service-mapping", "other", False),
    ("stale-timeout-mins", 0, True), ("stale-timeout-mins", 240, True), ("stale-timeout-mins", 241, False),
    *[(name, value, ok) for name in ("queue-timeout-ms", "socket-timeout-ms", "streaming-timeout-ms")
      for value, ok in ((0, True), (3600000, True), (-1, False), (3600001, False))],
]


@pytest.mark.parametrize(("name", "value", "ok"), TOKEN_CASES,
                         ids=[_case_id(n, v, ok) for n, v, ok in TOKEN_CASES])
def test_token_user_fields(name: str, value: Any, ok: bool) -> None:
    if ok:
        validate_token({name: value})
        return
    err = _errors(validate_token, {name: value})
    assert err.headline == "Validation failed for token:"
    assert err.problems and all(name in p for p in err.problems)


def test_every_token_field_has_valid_and_invalid_cases() -> None:
    valid = {n for n, _, ok in TOKEN_CASES if ok}
    assert valid == {n for n, _, ok in TOKEN_CASES if not ok} == set(TOKEN_PARAMS)


def test_token_metadata_sentence_names_field_value_and_range() -> None:
    err = _errors(validate_token, {"fallback-period-secs": 90000})
    assert str(err) == ("Validation failed for token:\n"
                        "fallback-period-secs must be an integer between 0 and 86400 (inclusive). Got 90000.")


# -- token validation ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "headline", "needles"), [
    ({"cmd": "x", "zeta": 1, "alpha": 2}, 'Unsupported key(s) in token: ["alpha", "zeta"]', []),
    ({"cpus": 0}, SERVICE_HEADLINE, ["cpus must be a positive number"]),
    ({"allowed-params": "A,B"}, SERVICE_HEADLINE, ["allowed-params must be a list"]),
    ({"env": {"WAITER_CONFIG_TOKEN": "t"}}, SERVICE_HEADLINE, ['"WAITER_CONFIG_TOKEN" in env is reserved']),
    ({"cpus": 64}, SERVICE_HEADLINE, ["cpus is 64 but the max allowed is 32"]),
    ({"bogus": 1, "cpus": 0, "stale-timeout-mins": 999}, SERVICE_HEADLINE,
     ['Unsupported key(s) in token: ["bogus"]', "cpus must be", "stale-timeout-mins must be"]),
    ({"authentication": "disabled", "cmd": "x"}, SERVICE_HEADLINE,
     ["permitted-user must be '*'", "missing: cpus, mem, version, run-as-user"]),
    ({"interstitial-secs": 10, "cmd": "x"}, SERVICE_HEADLINE, ["interstitial-secs (10) needs all required"]),
], ids=["unknown-keys", "service-param", "allowed-params-not-list", "waiter-config-token", "limits",
        "all-kinds-together", "auth-disabled-rules", "interstitial-needs-required"])
def test_validate_token_errors(data: dict[str, Any], headline: str, needles: list[str]) -> None:
    err = _errors(validate_token, data)
    assert err.headline == headline
    for needle in needles:
        assert any(needle in p for p in err.problems), (needle, err.problems)


@pytest.mark.parametrize("data", [
    {"cmd": "x"},
    {"cmd": "x", "token": "t", "owner": "o", "cluster": "c", "root": "c", "last-update-time": 1,
     "last-update-user": "u", "previous": {}, "deleted": False},
    {**BASE, "authentication": "disabled", "permitted-user": "*"},
    {**BASE, "interstitial-secs": 10},
    {"interstitial-secs": 0},
    {"namespace": "bob"},
    {"namespace": "*", "run-as-user": "alice"},
    {"cpus": 64},
], ids=["partial", "system-metadata-accepted", "auth-disabled-complete", "interstitial-complete",
        "interstitial-zero", "namespace-without-user", "namespace-star", "raised-limit"])
def test_validate_token_accepts(data: dict[str, Any]) -> None:
    validate_token(data, max_cpus=64)


@pytest.mark.parametrize(("name", "reserved"), [
    ("HOME", True), ("LOGNAME", True), ("USER", True), ("MARATHON_APP_ID", True), ("MESOS_SANDBOX", True),
    ("PORT0", True), ("PORT12", True), ("WAITER_CPUS", True), ("WAITER_CONFIG_TOKEN", True),
    ("WAITER_CONFIG_X", False), ("PORT", False), ("PORTAL", False), ("MY_HOME", False), ("USERNAME", False),
], ids=lambda v: str(v))
def test_reserved_env_names_in_tokens(name: str, reserved: bool) -> None:
    for data in ({"env": {name: "v"}}, {"allowed-params": [name]}):
        if reserved:
            assert "reserved" in str(_errors(validate_token, data))
        else:
            validate_token(data)


# -- header parsing ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("headers", "params"), [
    ([("x-waiter-cpus", "1")], {"cpus": 1}),
    ([("x-waiter-cpus", "0.5")], {"cpus": 0.5}),
    ([("X-Waiter-Mem", "256")], {"mem": 256}),
    ([("x-waiter-cmd", "echo 1 && run")], {"cmd": "echo 1 && run"}),
    ([("x-waiter-version", "123")], {"version": "123"}),
    ([("x-waiter-name", "true")], {"name": "true"}),
    ([("x-waiter-run-as-user", "*")], {"run-as-user": "*"}),
    ([("x-waiter-backend-proto", "h2c")], {"backend-proto": "h2c"}),
    ([("x-waiter-concurrency-level", "4")], {"concurrency-level": 4}),
    ([("x-waiter-scale-factor", "0.5")], {"scale-factor": 0.5}),
    ([("x-waiter-allowed-params", "A, B,,")], {"allowed-params": ["A", "B"]}),
    ([("x-waiter-allowed-params", "")], {"allowed-params": []}),
    ([("x-waiter-env-foo_bar", "1")], {"env": {"FOO_BAR": "1"}}),
    ([("x-waiter-metadata-Team", "Core")], {"metadata": {"team": "Core"}}),
    ([("x-waiter-param-x", "y")], {"env": {"X": "y"}}),
    ([("x-waiter-env-a", "1"), ("x-waiter-param-b", "2")], {"env": {"A": "1", "B": "2"}}),
    ([("x-waiter-liveness-check-url", "/live")], {"liveness-check-url": "/live"}),
    ([("content-type", "text/plain"), ("x-cid", "abc")], {}),
    ([("content-type", "text/plain"), ("x-waiter-cpus", "2")], {"cpus": 2}),
], ids=["int", "float", "case-insensitive-name", "string-verbatim", "version-stays-string",
        "name-stays-string", "run-as-star", "enum-verbatim", "int-param", "number-param", "allowed-list",
        "allowed-empty", "env", "metadata-lowercased-key", "param", "env-and-param", "liveness",
        "non-waiter-ignored", "non-waiter-then-waiter"])
def test_header_params(headers: list[tuple[str, str]], params: dict[str, Any]) -> None:
    parsed = parse_headers(headers)
    assert parsed.params == params
    assert all(type(parsed.params[k]) is type(v) for k, v in params.items())


@pytest.mark.parametrize(("headers", "expected"), [
    ([], ()), ([("x-waiter-token", "a")], ("a",)), ([("X-Waiter-Token", " a, b ,c ")], ("a", "b", "c")),
    ([("x-waiter-token", "")], ()), ([("x-waiter-token", "^SERVICE-ID#waiter-service-abc")],
                                      ("^SERVICE-ID#waiter-service-abc",)),
], ids=["absent", "one", "several-stripped", "blank", "service-id-pseudo-token"])
def test_header_tokens(headers: list[tuple[str, str]], expected: tuple[str, ...]) -> None:
    assert parse_headers(headers).tokens == expected


@pytest.mark.parametrize(("headers", "options"), [
    ([], RequestOptions()),
    ([("x-waiter-timeout", "100")], RequestOptions(timeout_ms=100)),
    ([("x-waiter-queue-timeout", "3600000")], RequestOptions(queue_timeout_ms=3600000)),
    ([("x-waiter-streaming-timeout", "1")], RequestOptions(streaming_timeout_ms=1)),
    ([("x-waiter-fallback-period-secs", "0")], RequestOptions(fallback_period_secs=0)),
    ([("x-waiter-async-check-interval", "3")], RequestOptions(async_check_interval_secs=3)),
    ([("x-waiter-async-request-timeout-secs", "60")], RequestOptions(async_request_timeout_secs=60)),
    ([("x-waiter-debug", "TRUE")], RequestOptions(debug=True)),
    ([("x-waiter-debug", "true")], RequestOptions(debug=True)),
    ([("x-waiter-debug", "yes")], RequestOptions(debug=False)),
], ids=["none", "timeout", "queue-timeout-max", "streaming-min", "fallback-zero", "async-check",
        "async-timeout-secs-spelling", "debug-upper", "debug-lower", "debug-other"])
def test_header_options(headers: list[tuple[str, str]], options: RequestOptions) -> None:
    parsed = parse_headers(headers)
    assert parsed.options == options
    assert not parsed.on_the_fly and parsed.params == {}


@pytest.mark.parametrize(("name", "value", "needle"), [
    ("x-waiter-timeout", "0", "x-waiter-timeout must be an integer in the range [1, 3600000]"),
    ("x-waiter-timeout", "3600001", "x-waiter-timeout must be"),
    ("x-waiter-timeout", "1.5", "x-waiter-timeout must be"),
    ("x-waiter-queue-timeout", "abc", "x-waiter-queue-timeout must be"),
    ("x-waiter-streaming-timeout", "-5", "x-waiter-streaming-timeout must be"),
    ("x-waiter-fallback-period-secs", "86401", "x-waiter-fallback-period-secs must be"),
    ("x-waiter-cpus", "abc", "x-waiter-cpus must be a positive number"),
    ("x-waiter-cpus", "0", "x-waiter-cpus must be a positive number"),
    ("x-waiter-cpus", "NaN", "x-waiter-cpus must be a positive number"),
    ("x-waiter-concurrency-level", "1.5", "x-waiter-concurrency-level must be an integer"),
    ("x-waiter-idle-timeout-mins", "0",
     "x-waiter-idle-timeout-mins must be an integer in the range [1, 43200]"),
    ("x-waiter-backend-proto", "ftp", "x-waiter-backend-proto must be one of"),
    ("x-waiter-cmd", "", "x-waiter-cmd must be a non-empty string"),
    ("x-waiter-allowed-params", "A,1B", '"1B" in x-waiter-allowed-params is invalid'),
    ("x-waiter-env-home", "x", '"HOME" in x-waiter-env-home is reserved'),
    ("x-waiter-env-waiter_x", "x", '"WAITER_X" in x-waiter-env-waiter_x is reserved'),
    ("x-waiter-env-port0", "x", '"PORT0" in x-waiter-env-port0 is reserved'),
    ("x-waiter-env-waiter_config_token", "x", "reserved"),
    ("x-waiter-param-mesos_x", "x", '"MESOS_X" in x-waiter-param-mesos_x is reserved'),
    ("x-waiter-env-foo-bar", "x", '"FOO-BAR" in x-waiter-env-foo-bar is invalid'),
    ("x-waiter-env-foo", "", "Environment variable FOO in x-waiter-env-foo must be a string of 1 to 512"),
    ("x-waiter-metadata-a_b", "x", '"a_b" in x-waiter-metadata-a_b is invalid'),
    ("x-waiter-metadata-a", "", "Metadata a in x-waiter-metadata-a must be a string"),
], ids=lambda v: str(v)[:40])
def test_bad_header_values(name: str, value: str, needle: str) -> None:
    err = _errors(parse_headers, [(name, value)])
    assert len(err.problems) == 1
    assert needle in err.problems[0]
    assert name in err.problems[0]


@pytest.mark.parametrize(("headers", "problems"), [
    ([("x-waiter-timeout", " 0")], ['x-waiter-timeout must be an integer in the range [1, 3600000]. Got " 0".']),
    ([("x-waiter-cpus", "[1")], ['x-waiter-cpus must be a positive number. Got "[1".']),
    ([("x-waiter-cpus", "0.0")], ['x-waiter-cpus must be a positive number. Got "0.0".']),
    ([("x-waiter-cpus", "[" * 40 + "]" * 40)],
     ["x-waiter-cpus is JSON nested deeper than the limit of 32 levels."]),
    ([("x-waiter-idle-timeout-mins", "0")],
     ['x-waiter-idle-timeout-mins must be an integer in the range [1, 43200] (0 is only allowed in tokens). '
      'Got "0".']),
    ([("x-waiter-cmd", "a\x00b"), ("x-waiter-cpus", "1"), ("x-waiter-name", "\udcff")],
     ["x-waiter-cmd must be UTF-8 text without NUL characters, but it contains a NUL character at position 1.",
      "x-waiter-name must be UTF-8 text without NUL characters, but it is not valid UTF-8 "
      "(byte 0xff at position 0)."]),
    ([("x-waiter-env-a", "\x00")],
     ["x-waiter-env-a must be UTF-8 text without NUL characters, but it contains a NUL character at position 0."]),
], ids=["option-shows-raw-text", "not-json-shows-raw-text", "json-shows-raw-text", "too-deep", "idle-zero",
        "garbled-each-named", "garbled-env-not-parsed"])
def test_bad_header_sentences(headers: list[tuple[str, str]], problems: list[str]) -> None:
    err = _errors(parse_headers, headers)
    assert (err.headline, err.problems) == (SERVICE_HEADLINE, problems)


@pytest.mark.parametrize("name", [
    "x-waiter-maintenance", "x-waiter-foo", "x-waiter-env", "x-waiter-metadata", "x-waiter-owner",
    "x-waiter-stale-timeout-mins", "X-Waiter-Https-Redirect"])
def test_unsupported_headers(name: str) -> None:
    err = _errors(parse_headers, [(name, "1")])
    assert err.problems == [f"Unsupported waiter headers found: {name.lower()}"]


def test_several_bad_headers_reported_together() -> None:
    err = _errors(parse_headers, [
        ("x-waiter-foo", "1"), ("x-waiter-maintenance", "m"), ("x-waiter-cpus", "abc"),
        ("x-waiter-timeout", "-1"), ("x-waiter-env-home", "x"), ("x-waiter-metadata-1a", "v"),
        ("x-waiter-mem", "64"), ("x-waiter-token", "t")])
    assert err.headline == SERVICE_HEADLINE
    assert err.problems[0] == "Unsupported waiter headers found: x-waiter-foo, x-waiter-maintenance"
    for name in ("x-waiter-cpus", "x-waiter-timeout", "x-waiter-env-home", "x-waiter-metadata-1a"):
        assert sum(name in p for p in err.problems) == 1, name
    assert len(err.problems) == 5


@pytest.mark.parametrize(("headers", "expected"), [
    ([], False), ([("x-waiter-token", "t")], False), ([("x-waiter-timeout", "5")], False),
    ([("x-waiter-param-x", "1")], False), ([("x-waiter-env-x", "1")], True),
    ([("x-waiter-metadata-x", "1")], True),
    ([("x-waiter-cpus", "1")], True), ([("x-waiter-param-x", "1"), ("x-waiter-version", "v")], True),
], ids=["nothing", "token", "option", "param-only", "env", "metadata", "service-param", "param-and-param"])
def test_on_the_fly(headers: list[tuple[str, str]], expected: bool) -> None:
    parsed = parse_headers(headers)
    assert parsed.on_the_fly is expected
    assert parsed.param_env_keys == frozenset({"X"} if ("x-waiter-param-x", "1") in headers else set())


# -- tokens: split, merge, defaults --------------------------------------------------------------------------

def test_split_token() -> None:
    record = {**BASE, "env": {"A": "1"}, "owner": "o", "maintenance": {"message": "m"}, "cluster": "c",
              "last-update-time": 5, "previous": {"cmd": "old"}, "token": "t", "unknown": 1}
    params, meta = split_token(record)
    assert params == {**BASE, "env": {"A": "1"}}
    assert meta == {"owner": "o", "maintenance": {"message": "m"}}
    params["env"]["A"] = "changed"
    assert record["env"] == {"A": "1"}


@pytest.mark.parametrize(("records", "expected"), [
    ([], {}),
    ([{"cmd": "a", "cpus": 1}], {"cmd": "a", "cpus": 1}),
    ([{"cmd": "a", "cpus": 1}, {"cmd": "b"}], {"cmd": "b", "cpus": 1}),
    ([{"env": {"A": "1", "B": "1"}}, {"env": {"B": "2", "C": "2"}}, {"env": {"C": "3"}}],
     {"env": {"A": "1", "B": "2", "C": "3"}}),
    ([{"metadata": {"a": "1"}}, {"metadata": {"b": "2"}}], {"metadata": {"a": "1", "b": "2"}}),
    ([{"allowed-params": ["A"]}, {"allowed-params": ["B"]}], {"allowed-params": ["B"]}),
    ([{"owner": "x", "fallback-period-secs": 1}, {"owner": "y"}], {"owner": "y", "fallback-period-secs": 1}),
], ids=["none", "one", "later-wins", "env-deep-merged-in-order", "metadata-deep-merged", "lists-replaced",
        "user-metadata"])
def test_merge_tokens(records: list[dict[str, Any]], expected: dict[str, Any]) -> None:
    before = copy.deepcopy(records)
    assert merge_tokens(records) == expected
    assert records == before


@pytest.mark.parametrize(("meta", "expected"), [
    ({}, {"fallback-period-secs": 300, "stale-timeout-mins": 15, "queue-timeout-ms": 300000,
          "socket-timeout-ms": 900000, "streaming-timeout-ms": 20000, "https-redirect": False,
          "service-mapping": "legacy"}),
    ({"fallback-period-secs": 0, "owner": "o"},
     {"fallback-period-secs": 0, "owner": "o", "stale-timeout-mins": 15, "queue-timeout-ms": 300000,
      "socket-timeout-ms": 900000, "streaming-timeout-ms": 20000, "https-redirect": False,
      "service-mapping": "legacy"}),
], ids=["defaults", "given-values-win"])
def test_token_defaults(meta: dict[str, Any], expected: dict[str, Any]) -> None:
    assert token_defaults(meta) == expected


# -- §3.3 precedence -----------------------------------------------------------------------------------------

TOKEN = {"cmd": "run", "cpus": 1, "mem": 128, "version": "v1", "run-as-user": "svc", "permitted-user": "*",
         "env": {"A": "1"}, "metadata": {"m": "1"}, "allowed-params": ["Z", "P"], "owner": "o"}
NAMED = [("x-waiter-token", "t")]


def _core_of(token: dict[str, Any], headers: list[tuple[str, str]], has_token: bool = True,
             consent: bool = False) -> dict[str, Any]:
    return build_core(token, parse_headers(headers), "req", has_token=has_token,
                      host_token_needs_consent=consent)


def _without(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in keys}


@pytest.mark.parametrize(("token", "headers", "has_token", "expected"), [
    (TOKEN, NAMED, True, {"run-as-user": "svc", "permitted-user": "*", "version": "v1"}),
    ({**TOKEN, "run-as-user": "*"}, NAMED, True, {"run-as-user": "req", "permitted-user": "req"}),
    (_without(TOKEN, "run-as-user"), NAMED, True, {"run-as-user": "req", "permitted-user": "req"}),
    (_without(TOKEN, "run-as-user"), [], True, {"run-as-user": "req", "permitted-user": "req"}),
    ({**TOKEN, "run-as-user": "*"}, [], True, {"run-as-user": "req", "permitted-user": "req"}),
    (TOKEN, [], True, {"run-as-user": "svc"}),
    (TOKEN, [*NAMED, ("x-waiter-version", "v2")], True,
     {"version": "v2", "run-as-user": "req", "permitted-user": "req", "cmd": "run"}),
    (TOKEN, [*NAMED, ("x-waiter-version", "v2"), ("x-waiter-run-as-user", "bob")], True,
     {"run-as-user": "bob", "permitted-user": "req"}),
    (TOKEN, [*NAMED, ("x-waiter-cpus", "2"), ("x-waiter-permitted-user", "*")], True,
     {"cpus": 2, "run-as-user": "req", "permitted-user": "*"}),
    (TOKEN, [*NAMED, ("x-waiter-run-as-user", "*"), ("x-waiter-cpus", "2")], True,
     {"run-as-user": "req", "permitted-user": "req"}),
    ({}, [("x-waiter-cmd", "c"), ("x-waiter-cpus", "1")], False,
     {"cmd": "c", "run-as-user": "req", "permitted-user": "req"}),
    (TOKEN, [*NAMED, ("x-waiter-env-b", "2"), ("x-waiter-metadata-n", "2")], True,
     {"env": {"A": "1", "B": "2"}, "metadata": {"m": "1", "n": "2"}}),
    (TOKEN, [*NAMED, ("x-waiter-env-a", "9")], True, {"env": {"A": "9"}}),
    (TOKEN, [*NAMED, ("x-waiter-param-p", "x")], True,
     {"env": {"A": "1", "P": "x"}, "run-as-user": "svc", "permitted-user": "*"}),
    (TOKEN, NAMED, True, {"allowed-params": ["P", "Z"], "owner": None}),
    ({**TOKEN, "namespace": "*"}, NAMED, True, {"namespace": "svc"}),
    ({**_without(TOKEN, "run-as-user"), "namespace": "*"}, NAMED, True, {"namespace": "req"}),
], ids=["token-as-is", "star-user-named-token", "no-user-named-token", "host-token-no-user",
        "host-token-star-user", "host-token-with-user", "header-overrides-token",
        "header-run-as-user", "header-permitted-user", "header-star-user", "on-the-fly-only",
        "env-metadata-deep-merged",
        "header-env-wins", "param-allowed-not-on-the-fly", "canonical-allowed-params-and-no-metadata",
        "namespace-star-to-user", "namespace-star-to-requester"])
def test_precedence(token: dict[str, Any], headers: list[tuple[str, str]], has_token: bool,
                    expected: dict[str, Any]) -> None:
    before = copy.deepcopy(token)
    core = _core_of(token, headers, has_token)
    for key, value in expected.items():
        assert core.get(key) == value, (key, core)
    assert token == before


@pytest.mark.parametrize(("token", "headers", "expected"), [
    (_without(TOKEN, "run-as-user"), [], {"run-as-user": None, "permitted-user": "*"}),
    ({**TOKEN, "run-as-user": "*"}, [], {"run-as-user": None, "permitted-user": "*"}),
    (TOKEN, [], {"run-as-user": "svc"}),
    ({**TOKEN, "run-as-user": "*"}, NAMED, {"run-as-user": "req", "permitted-user": "req"}),
    ({**TOKEN, "run-as-user": "*"}, [("x-waiter-cpus", "2")],
     {"run-as-user": "req", "permitted-user": "req"}),
], ids=["host-token-no-user-left-missing", "host-token-star-left-missing", "host-token-with-user",
        "named-token-filled", "on-the-fly-filled"])
def test_host_token_consent_mode(token: dict[str, Any], headers: list[tuple[str, str]],
                                 expected: dict[str, Any]) -> None:
    core = _core_of(token, headers, has_token=True, consent=True)
    for key, value in expected.items():
        assert core.get(key) == value, (key, core)


@pytest.mark.parametrize(("token", "headers", "has_token", "message"), [
    ({}, [], False, "Unable to identify service using waiter headers/token"),
    ({}, [("x-waiter-param-x", "1"), ("x-waiter-timeout", "5")], False,
     "Unable to identify service using waiter headers/token"),
    (TOKEN, [*NAMED, ("x-waiter-param-q", "1"), ("x-waiter-param-r", "1")], True,
     "Some params cannot be configured: Q, R"),
    (_without(TOKEN, "allowed-params"), [*NAMED, ("x-waiter-param-p", "1")], True,
     "Some params cannot be configured: P"),
], ids=["nothing", "param-only", "params-not-allowed", "no-allowed-params"])
def test_build_core_errors(token: dict[str, Any], headers: list[tuple[str, str]], has_token: bool,
                           message: str) -> None:
    err = _errors(_core_of, token, headers, has_token)
    assert err.headline == message and err.status == 400


def test_a_host_token_fills_the_requester_unless_consent_is_asked() -> None:
    token = _without(TOKEN, "run-as-user")
    core = build_core(token, parse_headers([]), "req", has_token=True)
    assert (core["run-as-user"], core["permitted-user"]) == ("req", "req")


@pytest.mark.parametrize(("allowed", "headers", "problems"), [
    (["Z", "P"], [*NAMED, ("x-waiter-param-q", "1")],
     ["x-waiter-param-* may only set the allowed-params of the token (P, Z)."]),
    (None, [*NAMED, ("x-waiter-param-q", "1")],
     ["x-waiter-param-* may only set the allowed-params of the token (none)."]),
    # not yet validated: a number among the names is listed, not a TypeError
    (["P", 1], [*NAMED, ("x-waiter-param-q", "1")],
     ["x-waiter-param-* may only set the allowed-params of the token (1, P)."]),
], ids=["listed-in-order", "none", "mixed-types"])
def test_refused_params_name_what_the_token_allows(allowed: list[Any] | None, headers: list[tuple[str, str]],
                                                  problems: list[str]) -> None:
    token = _without(TOKEN, "allowed-params") if allowed is None else {**TOKEN, "allowed-params": allowed}
    err = _errors(_core_of, token, headers)
    assert err.problems == problems


def test_allowed_params_of_mixed_types_get_one_order_and_a_clear_error() -> None:
    core = _core_of({**TOKEN, "allowed-params": ["P", 1, "P"]}, NAMED)
    assert core["allowed-params"] == [1, "P"]
    err = _errors(validate_service, core)
    assert err.problems == [
        "Environment variable name 1 in allowed-params is invalid: names must start with a letter, contain only "
        "letters, digits and underscores, and be at most 512 characters long."]


def test_on_the_fly_headers_build_a_valid_service() -> None:
    headers = [("x-waiter-cmd", "python -m http.server $PORT0"), ("x-waiter-cpus", "0.5"),
    ("x-waiter-mem", "64"),
               ("x-waiter-version", "1"), ("x-waiter-name", "Demo"), ("x-waiter-env-mode", "fast")]
    core = _core_of({}, headers, has_token=False)
    validate_service(core)
    assert core == {"cmd": "python -m http.server $PORT0", "cpus": 0.5, "mem": 64, "version": "1",
    "name": "Demo",
                    "env": {"MODE": "fast"}, "run-as-user": "req", "permitted-user": "req"}
    assert service_id(core).startswith("waiter-service-demo-")


# -- service ids ---------------------------------------------------------------------------------------------

ID_RE = re.compile(r"[a-z0-9-]+")

# a second valid value for every service parameter, to show each one changes the id
FULL: dict[str, Any] = {
    **BASE, "cmd-type": "shell", "allowed-params": ["A"], "authentication": "standard",
    "backend-proto": "http",
    "concurrency-level": 1, "distribution-scheme": "balanced", "env": {"A": "1"},
    "expired-instance-restart-rate": 0.1, "grace-period-secs": 30, "health-check-authentication": "disabled",
    "health-check-interval-secs": 10, "health-check-max-consecutive-failures": 5,
    "health-check-port-index": 0,
    "health-check-proto": "http", "health-check-url": "/status", "liveness-check-authentication": "disabled",
    "liveness-check-interval-secs": 10, "liveness-check-max-consecutive-failures": 5,
    "liveness-check-port-index": 0, "liveness-check-proto": "http", "liveness-check-url": "/status",
    "idle-timeout-mins": 30, "image": "i", "instance-expiry-mins": 7200, "interstitial-secs": 0,
    "jitter-threshold": 0.5, "load-balancing": "oldest", "max-instances": 500, "min-instances": 1,
    "max-queue-length": 1000000, "metadata": {"k": "v"}, "metric-group": "other", "name": "svc",
    "namespace": "alice", "permitted-user": "*", "ports": 2, "profile": "p", "restart-backoff-factor": 2,
    "routing-mode": "default", "scale-factor": 1, "scale-up-factor": 0.1, "scale-down-factor": 0.001,
    "scheduler": "s", "termination-grace-period-secs": 0,
}
CHANGES: dict[str, Any] = {
    "cmd": "run2", "cpus": 2, "mem": 256, "version": "v2", "run-as-user": "bob", "cmd-type": "docker",
    "allowed-params": ["B"], "authentication": "disabled", "backend-proto": "https", "concurrency-level": 2,
    "distribution-scheme": "simple", "env": {"A": "2"}, "expired-instance-restart-rate": 0.2,
    "grace-period-secs": 31, "health-check-authentication": "standard", "health-check-interval-secs": 11,
    "health-check-max-consecutive-failures": 6, "health-check-port-index": 1, "health-check-proto": "https",
    "health-check-url": "/s", "liveness-check-authentication": "standard", "liveness-check-interval-secs": 11,
    "liveness-check-max-consecutive-failures": 6, "liveness-check-port-index": 1,
    "liveness-check-proto": "h2",
    "liveness-check-url": "/l", "idle-timeout-mins": 0, "image": "j", "instance-expiry-mins": 1,
    "interstitial-secs": 1, "jitter-threshold": 0.4, "load-balancing": "random", "max-instances": 499,
    "min-instances": 2, "max-queue-length": 10, "metadata": {"k": "w"}, "metric-group": "mine",
    "name": "svc2", "namespace": "bob", "permitted-user": "bob", "ports": 3, "profile": "q",
    "restart-backoff-factor": 3, "routing-mode": "headless", "scale-factor": 0.5, "scale-up-factor": 0.2,
    "scale-down-factor": 0.01, "scheduler": "t", "termination-grace-period-secs": 1,
}


def test_every_param_has_an_id_change_case() -> None:
    assert set(FULL) == set(CHANGES) == set(SERVICE_PARAMS)


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_service_id_changes_with_every_param(name: str) -> None:
    assert FULL[name] != CHANGES[name]
    assert service_id({**FULL, name: CHANGES[name]}) != service_id(FULL)
    assert service_id(_without(FULL, name)) != service_id(FULL)


@pytest.mark.parametrize(("changed", "label"), [
    ({**FULL, "env": {"A": "1", "B": "1"}}, "env-key-added"),
    ({**FULL, "env": {"B": "1"}}, "env-key-renamed"),
    ({**FULL, "metadata": {"k": "v", "l": "v"}}, "metadata-key-added"),
    ({**FULL, "metadata": {}}, "metadata-emptied"),
    ({**FULL, "cmd": "run", "cpus": "1"}, "type-change"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_service_id_changes_with_nested_values(changed: dict[str, Any], label: str) -> None:
    assert service_id(changed) != service_id(FULL), label


@pytest.mark.parametrize(("core", "prefix", "pattern"), [
    (BASE, "waiter-service-", r"waiter-service-[0-9a-f]{32}"),
    ({**BASE, "name": "My.Service_v2!"}, "waiter-service-", r"waiter-service-myservicev2-[0-9a-f]{32}"),
    ({**BASE, "name": "..."}, "waiter-service-", r"waiter-service-[0-9a-f]{32}"),
    ({**BASE, "name": "App"}, "w-", r"w-app-[0-9a-f]{32}"),
], ids=["no-name", "sanitised-name", "name-without-usable-chars", "custom-prefix"])
def test_service_id_shape(core: dict[str, Any], prefix: str, pattern: str) -> None:
    sid = service_id(core, prefix)
    assert re.fullmatch(pattern, sid)
    assert ID_RE.fullmatch(sid) and "." not in sid


def test_service_id_is_deterministic() -> None:
    reordered = dict(reversed(list(FULL.items())))
    reordered["env"] = dict(reversed(list(FULL["env"].items())))
    assert service_id(reordered) == service_id(copy.deepcopy(FULL)) == service_id(FULL)
    assert service_id({**BASE, "cpus": 1.0}) == service_id({**BASE, "cpus": 1})


def test_a_set_hashes_as_its_sorted_list() -> None:
    as_list = service_id({**BASE, "allowed-params": ["A", "B"], "env": {"A": "1"}})
    assert service_id({**BASE, "allowed-params": {"B", "A"}, "env": {"A": "1"}}) == as_list
    mixed = service_id({**BASE, "allowed-params": [2, "A"]})
    assert service_id({**BASE, "allowed-params": frozenset({"A", 2})}) == mixed


def test_service_id_ignores_non_service_keys_and_defaults() -> None:
    core = dict(BASE)
    sid = service_id(core)
    eff = effective(core)
    assert core == BASE
    assert service_id(core) == sid
    assert service_id({**core, "owner": "o", "fallback-period-secs": 1}) == sid
    assert eff["idle-timeout-mins"] == 30 and "idle-timeout-mins" not in core


# -- effective defaults --------------------------------------------------------------------------------------

CODE_DEFAULTS = {
    "allowed-params": [], "authentication": "standard", "backend-proto": "http", "concurrency-level": 1,
    "distribution-scheme": "balanced", "env": {}, "expired-instance-restart-rate": 0.1,
    "grace-period-secs": 30,
    "health-check-authentication": "disabled", "health-check-interval-secs": 10,
    "health-check-max-consecutive-failures": 5, "health-check-port-index": 0, "health-check-url": "/status",
    "idle-timeout-mins": 30, "instance-expiry-mins": 7200, "interstitial-secs": 0, "jitter-threshold": 0.5,
    "load-balancing": "oldest", "max-instances": 500, "min-instances": 1, "max-queue-length": 1000000,
    "metadata": {}, "metric-group": "other", "permitted-user": "*", "ports": 1, "restart-backoff-factor": 2,
    "routing-mode": "default", "scale-factor": 1, "scale-up-factor": 0.1, "scale-down-factor": 0.001,
    "termination-grace-period-secs": 0,
}


@pytest.mark.parametrize(("name", "value"), sorted(CODE_DEFAULTS.items()), ids=sorted(CODE_DEFAULTS))
def test_effective_defaults(name: str, value: Any) -> None:
    eff = effective(BASE)
    assert eff[name] == value
    validate_service(eff)


@pytest.mark.parametrize(("core", "overrides", "expected"), [
    (BASE, None, {"health-check-proto": None, "liveness-check-url": "/status", "liveness-check-port-index": 0,
                  "liveness-check-proto": None, "cmd": "run"}),
    ({**BASE, "health-check-url": "/h", "health-check-proto": "http"}, None,
     {"liveness-check-url": "/h", "liveness-check-proto": "http"}),
    ({**BASE, "health-check-url": "/h", "liveness-check-url": "/l"}, None, {"liveness-check-url": "/l"}),
    (BASE, {"idle-timeout-mins": 5, "concurrency-level": 4},
     {"idle-timeout-mins": 5, "concurrency-level": 4}),
    ({**BASE, "concurrency-level": 2}, {"concurrency-level": 4}, {"concurrency-level": 2}),
    ({**BASE, "max-instances": 3}, {"min-instances": 5}, {"min-instances": 3, "max-instances": 3}),
    ({**BASE, "max-instances": 3, "min-instances": 2}, {"min-instances": 5}, {"min-instances": 2}),
    ({**BASE, "max-instances": 1}, {"min-instances": 5}, {"min-instances": 1}),
    ({**BASE, "max-instances": 0}, {"min-instances": 5}, {"min-instances": 1}),
    ({**BASE, "max-instances": "3"}, {"min-instances": 5}, {"min-instances": 5, "max-instances": "3"}),
    ({**BASE, "max-instances": True}, {"min-instances": 5}, {"min-instances": 5}),
],
        ids=["liveness-copies-defaults", "liveness-copies-health-check", "explicit-liveness-kept",
        "overrides-apply",
        "core-beats-overrides", "small-max-lowers-default-min", "explicit-min-kept", "max-one", "max-zero-min-one",
        "max-not-a-number-left-to-validation", "max-bool-is-no-number"])
def test_effective(core: dict[str, Any], overrides: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    eff = effective(core, overrides)
    for key, value in expected.items():
        assert eff.get(key) == value, key


def test_effective_copies_instead_of_sharing() -> None:
    eff = effective(BASE)
    eff["env"]["X"] = "1"
    eff["allowed-params"].append("X")
    assert SERVICE_PARAMS["env"].default == {} and SERVICE_PARAMS["allowed-params"].default == []
    assert effective(BASE)["env"] == {}


# -- the error type ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "status", "text"), [
    (("Head",), 400, "Head"),
    (("Head", ["a.", "b."]), 400, "Head\na.\nb."),
    (("Head", []), 403, "Head"),
], ids=["headline-only", "with-problems", "status"])
def test_descriptor_error(args: tuple[Any, ...], status: int, text: str) -> None:
    err = DescriptorError(*args, status=status)  # built in the test: a table row is built before any test runs
    assert (str(err), err.status) == (text, status)
    assert err.args == (text,)  # what repr, pickling and logging's fallbacks show


def test_waiter_headers_defaults() -> None:
    headers = WaiterHeaders()
    assert headers.tokens == () and headers.params == {} and not headers.on_the_fly
