"""Table tests for waiter.params: the exact sentences of each checker, the edges of each limit, ``show``.

The sentences are the contract (they name the field, the value and what is allowed), so rows compare them whole.
"""

from __future__ import annotations

from typing import Any

import pytest

from waiter.params import (
    MAX_MAP_ENTRIES,
    SERVICE_PARAMS,
    TOKEN_PARAMS,
    env_entry_problems,
    env_problems,
    fmt_number,
    metadata_entry_problems,
    show,
    text_problems,
)

ENV_NAME_RULE = (
    "names must start with a letter, contain only letters, digits and underscores, and be at most 512 characters long."
)
METADATA_KEY_RULE = "keys must start with a lower-case letter and contain only lower-case letters, digits and hyphens."
METHODS = "CONNECT, DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT, TRACE"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.5, "0.5"),
        ("a", '"a"'),
        (None, "null"),
        ({"b": 1, "a": [2]}, '{"a": [2], "b": 1}'),  # keys sorted: one value, one sentence
        (b"x", "\"b'x'\""),  # not JSON: shown as Python writes it
        ("x" * 78, '"' + "x" * 78 + '"'),  # 80 characters: the limit itself is shown whole
        ("x" * 79, '"' + "x" * 76 + "..."),  # 81: cut to 77 and marked
    ],
    ids=["number", "string", "null", "sorted-keys", "not-json", "at-limit", "over-limit"],
)
def test_show(value: Any, expected: str) -> None:
    assert show(value) == expected


def test_show_limit_is_a_parameter() -> None:
    assert show("abcdef", limit=8) == '"abcdef"'
    assert show("abcdefg", limit=8) == '"abcd...'


@pytest.mark.parametrize(("value", "expected"), [(2, "2"), (2.0, "2"), (2.5, "2.5"), (131072, "131072")])
def test_fmt_number(value: float, expected: str) -> None:
    assert fmt_number(value) == expected


@pytest.mark.parametrize(
    ("value", "label", "problems"),
    [
        ({"cmd": "ok", "env": {"A": "fine"}, "n": 1}, "", []),
        (
            {"cmd": "a\x00"},
            "",
            ["cmd must be UTF-8 text without NUL characters, but it contains a NUL character at position 1."],
        ),
        (
            {"env": {"A": "\udcff"}},
            "",
            ["env.A must be UTF-8 text without NUL characters, but it is not valid UTF-8 (byte 0xff at position 0)."],
        ),
        (
            {"k\x00": 1},
            "",
            [
                "The key k\\x00 must be UTF-8 text without NUL characters, but it contains a NUL character "
                "at position 1."
            ],
        ),
        (
            {"l": [1, "x", "\ud800"]},
            "",
            [
                "l[2] must be UTF-8 text without NUL characters, but it is not valid UTF-8 "
                "(a lone surrogate \\ud800 at position 0)."
            ],
        ),
        # a labelled mapping (one header's value): keys are named inside it
        (
            {"a\x00": "x", "b": "\x00"},
            "x-waiter-env",
            [
                "The key a\\x00 in x-waiter-env must be UTF-8 text without NUL characters, but it contains a NUL "
                "character at position 1.",
                "x-waiter-env.b must be UTF-8 text without NUL characters, but it contains a NUL character "
                "at position 0.",
            ],
        ),
        # every problem is kept, not only the last field's
        (
            {"a": "\x00", "b": {"c": "\x00"}},
            "",
            [
                "a must be UTF-8 text without NUL characters, but it contains a NUL character at position 0.",
                "b.c must be UTF-8 text without NUL characters, but it contains a NUL character at position 0.",
            ],
        ),
        (
            "ok\x00",
            "x-waiter-cmd",
            ["x-waiter-cmd must be UTF-8 text without NUL characters, but it contains a NUL character at position 2."],
        ),
        ("fine", "x-waiter-cmd", []),
    ],
    ids=["clean", "nul", "bad-utf8", "key", "list-item", "labelled-mapping", "all-kept", "string", "clean-string"],
)
def test_text_problems_name_each_field(value: Any, label: str, problems: list[str]) -> None:
    assert text_problems(value, label) == problems
    if not label:
        assert text_problems(value) == problems


# (table, name, value, problems): what Param.problems says, whole
PROBLEMS: list[tuple[str, Any, list[str]]] = [
    ("cpus", 0, ["cpus must be a positive number. Got 0."]),
    ("cpus", 1, []),
    ("env", {"A": "x"}, []),
    ("env", {"WAITER_CONFIG_TOKEN": "t"}, []),  # only a user's token may not set it (env_problems(user=True))
    ("env", "A=x", ['env must be an object mapping environment variable names to strings. Got "A=x".']),
    ("env", {"1A": "x"}, [f'Environment variable name "1A" in env is invalid: {ENV_NAME_RULE}']),
    ("env", {"A": ""}, ['Environment variable A in env must be a string of 1 to 512 characters. Got "".']),
    (
        "env",
        {"HOME": "x"},
        [
            'Environment variable name "HOME" in env is reserved: HOME, LOGNAME, USER, MARATHON_*, MESOS_*, '
            "PORT<digits> and WAITER_* (except WAITER_CONFIG_*) are set by Waiter."
        ],
    ),
    (
        "env",
        {f"V{i}": "" if i == 0 else "v" for i in range(MAX_MAP_ENTRIES + 1)},
        [
            "env may contain at most 99 entries. Got 100.",
            'Environment variable V0 in env must be a string of 1 to 512 characters. Got "".',
        ],
    ),
    ("metadata", ["a"], ['metadata must be an object mapping metadata names to strings. Got ["a"].']),
    ("metadata", {"A": "x"}, [f'Metadata key "A" in metadata is invalid: {METADATA_KEY_RULE}']),
    ("metadata", {"a" * 999: "x"}, []),
    ("metadata", {"a" * 1000: "x"}, [f'Metadata key "{"a" * 76}... in metadata is invalid: {METADATA_KEY_RULE}']),
    ("metadata", {"a": 1}, ["Metadata a in metadata must be a string of 1 to 999 characters. Got 1."]),
    (
        "metadata",
        {"b": 1, "a": ""},
        [
            "Metadata b in metadata must be a string of 1 to 999 characters. Got 1.",
            'Metadata a in metadata must be a string of 1 to 999 characters. Got "".',
        ],
    ),
    ("allowed-params", "A", ['allowed-params must be a list of environment variable names. Got "A".']),
    # names in str order, whatever their type: a number among them must not stop the sort
    (
        "allowed-params",
        ["B", 1, "HOME"],
        [
            f"Environment variable name 1 in allowed-params is invalid: {ENV_NAME_RULE}",
            'Environment variable name "HOME" in allowed-params is reserved: HOME, LOGNAME, USER, MARATHON_*, '
            "MESOS_*, PORT<digits> and WAITER_* (except WAITER_CONFIG_*) are set by Waiter.",
        ],
    ),
    (
        "allowed-params",
        ["WAITER_CONFIG_TOKEN"],
        [
            'Environment variable name "WAITER_CONFIG_TOKEN" in allowed-params is reserved: Waiter sets it for '
            "service-mapping exclusive tokens."
        ],
    ),
    ("maintenance", {"message": "x"}, []),
    ("maintenance", {"message": "x" * 512}, []),
    (
        "maintenance",
        {"message": ""},
        [
            'maintenance must be an object {"message": "..."} whose message is a string of 1 to 512 characters. '
            'Got {"message": ""}.'
        ],
    ),
    ("cors-rules", {}, ["cors-rules must be a list of rule objects. Got {}."]),
    (
        "cors-rules",
        ["x"],
        ['cors-rules[0] must be an object with origin-regex, target-path-regex and methods. Got "x".'],
    ),
    (
        "cors-rules",
        [{"origin-regex": ".*"}, {"z": 1, "y": 2, "target-path-regex": 5, "methods": ["get"]}],
        [
            'cors-rules[1] has unsupported key(s) ["y", "z"]: only origin-regex, target-path-regex and methods are '
            "allowed.",
            "cors-rules[1].origin-regex is required.",
            "cors-rules[1].target-path-regex must be a regular expression string. Got 5.",
            f'cors-rules[1].methods must be a non-empty list of upper-case HTTP methods ({METHODS}). Got ["get"].',
        ],
    ),
    (
        "cors-rules",
        [{"origin-regex": "("}],
        [
            "cors-rules[0].origin-regex must be a valid regular expression in Python's syntax (it breaks at "
            'position 0). Got "(".'
        ],
    ),
    # an error Python places nowhere: no position is made up
    (
        "cors-rules",
        [{"origin-regex": "(?<=a+)b"}],
        ['cors-rules[0].origin-regex must be a valid regular expression in Python\'s syntax. Got "(?<=a+)b".'],
    ),
]


@pytest.mark.parametrize(
    ("name", "value", "problems"), PROBLEMS, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(PROBLEMS)]
)
def test_param_problems(name: str, value: Any, problems: list[str]) -> None:
    param = SERVICE_PARAMS.get(name) or TOKEN_PARAMS[name]
    assert param.problems(value) == problems


def test_a_header_names_itself_and_shows_its_raw_text() -> None:
    param = SERVICE_PARAMS["cpus"]
    assert param.problems(0, "x-waiter-cpus", '"0.0"') == ['x-waiter-cpus must be a positive number. Got "0.0".']
    assert param.problems(0, "x-waiter-cpus") == ["x-waiter-cpus must be a positive number. Got 0."]


@pytest.mark.parametrize("kind_of", ["env", "metadata", "allowed-params", "cors-rules"])
def test_structured_values_are_never_accepted_as_plain_values(kind_of: str) -> None:
    param = SERVICE_PARAMS.get(kind_of) or TOKEN_PARAMS[kind_of]
    assert not param.accepts({}) and not param.accepts([])


@pytest.mark.parametrize(
    ("user", "problems"),
    [
        (False, []),
        (
            True,
            [
                'Environment variable name "WAITER_CONFIG_TOKEN" in x-waiter-env is reserved: Waiter sets it for '
                "service-mapping exclusive tokens."
            ],
        ),
    ],
    ids=["router", "user"],
)
def test_waiter_config_token_is_reserved_for_users_only(user: bool, problems: list[str]) -> None:
    assert env_problems({"WAITER_CONFIG_TOKEN": "t"}, "x-waiter-env", user=user) == problems
    assert env_entry_problems("WAITER_CONFIG_TOKEN", "t", "x-waiter-env", user=user) == problems


def test_an_entry_with_a_bad_name_has_its_value_left_unjudged() -> None:
    assert env_entry_problems("1A", "", "env", user=False) == [
        f'Environment variable name "1A" in env is invalid: {ENV_NAME_RULE}'
    ]
    assert metadata_entry_problems("A", "", "metadata") == [
        f'Metadata key "A" in metadata is invalid: {METADATA_KEY_RULE}'
    ]
