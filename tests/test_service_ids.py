"""Golden service ids and the copying contract of the descriptor functions.

A service id names running instances, Marathon apps and Redis records: if the way ids are computed changes, every
router after an upgrade would orphan the services the previous version started. These ids must therefore never
change without a migration; a failure here means the canonical form of a description changed.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from waiter.descriptor import (
    build_core,
    effective,
    merge_tokens,
    parse_headers,
    service_id,
    split_token,
    token_defaults,
)

GOLDEN: list[tuple[str, dict[str, Any], str]] = [
    (
        "minimal",
        {"cmd": "exec python3 -m http.server $PORT0", "cpus": 0.1, "mem": 64, "version": "1", "run-as-user": "alice"},
        "waiter-service-f404a74f12031070830261cf4d740a6f",
    ),
    (
        "named",
        {"name": "Hello_World-2", "cmd": "run", "cpus": 1, "mem": 128, "version": "v1", "run-as-user": "alice"},
        "waiter-service-helloworld2-b91d652790cbd7487e8c656056d7c4a3",
    ),
    (
        "float-cpus-equals-int",
        {"name": "n", "cmd": "run", "cpus": 1.0, "mem": 128.0, "version": "v1", "run-as-user": "alice"},
        "waiter-service-n-3bdd2e69eb21583828dd32a3458d5091",
    ),
    (
        "env-and-metadata",
        {
            "name": "svc", "cmd": "run", "cpus": 0.5, "mem": 256, "version": "2", "run-as-user": "bob",
            "env": {"B": "2", "A": "1"}, "metadata": {"team": "x"},
        },
        "waiter-service-svc-7c1db81852caacbef66b54e4cbf9d1fd",
    ),
    (
        "allowed-params",
        {"cmd": "run", "cpus": 0.5, "mem": 256, "version": "2", "run-as-user": "bob", "allowed-params": ["Y", "X"]},
        "waiter-service-ece2bb5bb6520ebbbe782582c751868e",
    ),
    (
        "scaling-knobs",
        {
            "name": "scaled", "cmd": "run", "cpus": 2, "mem": 1024, "version": "3", "run-as-user": "carol",
            "concurrency-level": 8, "min-instances": 2, "max-instances": 20, "scale-factor": 0.5,
            "health-check-url": "/ready",
        },
        "waiter-service-scaled-4175db29c1f9bd856e414f1ec6be5793",
    ),
    (
        "unicode-cmd",
        {"cmd": "echo héllo", "cpus": 0.1, "mem": 64, "version": "1", "run-as-user": "dave"},
        "waiter-service-dea93183ae64dc89ade18cf8aaf56ee6",
    ),
]


@pytest.mark.parametrize(("core", "expected"), [(c, e) for _, c, e in GOLDEN], ids=[n for n, _, _ in GOLDEN])
def test_golden_service_ids(core: dict[str, Any], expected: str) -> None:
    assert service_id(core) == expected


def test_prefix_replaces_the_default_one() -> None:
    assert service_id(GOLDEN[0][1], prefix="p-") == "p-f404a74f12031070830261cf4d740a6f"


def test_key_order_does_not_change_the_id() -> None:
    core = GOLDEN[3][1]
    assert service_id(dict(reversed(list(core.items())))) == GOLDEN[3][2]


def test_id_through_the_header_path_is_golden() -> None:
    """The whole resolution (header parsing, precedence, canonical allowed-params) lands on a pinned id."""
    headers = parse_headers(
        [
            ("x-waiter-cmd", "run"),
            ("x-waiter-cpus", "0.5"),
            ("x-waiter-mem", "256"),
            ("x-waiter-version", "2"),
            ("x-waiter-allowed-params", "Y,X"),
        ]
    )
    core = build_core({}, headers, "bob", has_token=False)
    assert core["allowed-params"] == ["X", "Y"]
    assert core["run-as-user"] == core["permitted-user"] == "bob"
    assert service_id(core) == "waiter-service-bdaca064b799711b4b6328cacc3ffc38"


def _nested_objects(value: Any) -> list[int]:
    found: list[int] = []
    if isinstance(value, dict):
        found.append(id(value))
        for item in value.values():
            found += _nested_objects(item)
    elif isinstance(value, list | tuple):
        found.append(id(value))
        for item in value:
            found += _nested_objects(item)
    return found


TOKEN = {
    "token": "t",
    "cmd": "run",
    "cpus": 1,
    "mem": 64,
    "version": "1",
    "env": {"A": "1"},
    "metadata": {"team": "x"},
    "allowed-params": ["X"],
    "cors-rules": [{"origin-regex": ".*", "methods": ["GET"]}],
    "maintenance": {"message": "down"},
}


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda t: split_token(t), id="split_token"),
        pytest.param(lambda t: merge_tokens([t, {"env": {"B": "2"}}]), id="merge_tokens"),
        pytest.param(lambda t: token_defaults({k: t[k] for k in ("cors-rules", "maintenance")}), id="token_defaults"),
        pytest.param(lambda t: build_core(t, parse_headers([]), "alice", has_token=True), id="build_core"),
        pytest.param(
            lambda t: effective({k: t[k] for k in ("cmd", "env", "metadata", "allowed-params")}), id="effective"
        ),
    ],
)
def test_results_share_no_nested_object_with_their_inputs(call: Any) -> None:
    """Callers mutate what they get back (merging env, filling defaults): a shared dict would edit the token."""
    token = copy.deepcopy(TOKEN)
    before = copy.deepcopy(token)
    result = call(token)
    assert set(_nested_objects(result)).isdisjoint(_nested_objects(token)[1:])
    assert token == before
