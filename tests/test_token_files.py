"""Tokens registered as YAML files: what loads, what is reported (file, line, reason), and reloading on change."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import FAKE, RunningRouter, backend_token
from tests.support import eventually
from waiter.tokens import FileSettings, TokenFiles, token_etag

# Instances only need to answer HTTP here (tests.fakes); real processes: test_router_e2e.py and the scheduler tests.
pytestmark = pytest.mark.schedulers(FAKE)

MakeRouter = Callable[..., Awaitable[RunningRouter]]
CONFIG = FileSettings(cluster="c1", default_owner="alice", hostnames=("waiter.example",))


def files_in(tmp_path: Path, **texts: str) -> TokenFiles:
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
    files = TokenFiles(tmp_path, CONFIG)
    files.load()
    return files


GOOD = "token: good\ncmd: run\ncpus: 1\nmem: 64\nversion: '1'\n"


def test_one_token_with_system_metadata(tmp_path: Path) -> None:
    files = files_in(tmp_path, **{"good.yaml": GOOD})
    record = files.get("good")
    assert record is not None and files.problems == []
    mtime_ms = (tmp_path / "good.yaml").stat().st_mtime_ns // 1_000_000
    assert record.data == {
        "cmd": "run",
        "cpus": 1,
        "mem": 64,
        "version": "1",
        "owner": "alice",  # the router's run-as-user when the file names no owner
        "last-update-time": mtime_ms,
        "last-update-user": "alice",
        "cluster": "c1",
        "root": "c1",
    }
    assert record.etag == token_etag(record.data) and record.source == str(tmp_path / "good.yaml")


def test_a_list_of_tokens_and_an_explicit_owner(tmp_path: Path) -> None:
    text = yaml.safe_dump([{"token": "aa", "cmd": "x", "owner": "bob"}, {"token": "bb", "cmd": "y"}])
    files = files_in(tmp_path, **{"many.yml": text, "notes.txt": "not a token file"})
    a, b = files.get("aa"), files.get("bb")
    assert a is not None and b is not None and sorted(files.tokens) == ["aa", "bb"]
    assert a.owner == "bob" and b.owner == "alice"


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        pytest.param("token: tk\ncmd: [unclosed\n", 3, "is not valid YAML", id="yaml-syntax"),
        pytest.param("- just a string\n", 1, "entry 1 must be a mapping", id="not-a-mapping"),
        pytest.param("cmd: run\ncpus: 1\n", 1, "has no 'token' key", id="no-token-key"),
        pytest.param("token: 9lives\ncmd: run\n", 1, "Token must match pattern", id="bad-name"),
        pytest.param("token: a/b\ncmd: run\n", 1, 'Token contains invalid character: "/"', id="bad-char"),
        pytest.param("token: waiter.example\ncmd: run\n", 1, "Token name is reserved", id="reserved-name"),
        pytest.param("token: tk\ncmd: run\ncpus: -1\nmem: 64\n", 3, "cpus must be a positive number", id="bad-field"),
        pytest.param("token: tk\ncmd: run\ncolour: blue\n", 3, 'Unsupported key(s) in token: ["colour"]', id="unknown"),
        pytest.param(
            "token: tk\ncmd: run\nfallback-period-secs: -5\n",
            3,
            "fallback-period-secs must be an integer between",
            id="bad-user-metadata",
        ),
        pytest.param(
            "token: tk\ncmd: run\nlast-update-time: 5\n",
            3,
            "last-update-time cannot be given in a token file",
            id="system-metadata",
        ),
        pytest.param(
            "token: tk\nmin-instances: 5\nmax-instances: 2\n",
            1,
            "min-instances (5) must be less than",
            id="cross-field",
        ),
        pytest.param("- token: tk\n  cmd: a\n- token: tk\n  cmd: b\n", 3, "defined twice in this file", id="twice"),
    ],
)
def test_problems_name_file_line_and_reason(tmp_path: Path, text: str, line: int, reason: str) -> None:
    files = files_in(tmp_path, **{"bad.yaml": text, "good.yaml": GOOD})
    (problem,) = files.problems
    assert problem.file == str(tmp_path / "bad.yaml")
    assert problem.line == line, problem
    assert reason in problem.reason, problem
    assert problem.json() == {"file": str(tmp_path / "bad.yaml"), "line": line, "message": problem.reason}
    assert f"bad.yaml, line {line}: " in str(problem)
    assert files.get("good") is not None  # every other token is still served


DEEP_REASON = "nests lists and maps deeper than the limit of 32 levels"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param(
            GOOD.replace("good", "deep").encode() + b"metadata: " + b"[" * 40 + b"]" * 40, DEEP_REASON, id="deep"
        ),
        pytest.param(
            GOOD.replace("good", "deep").encode() + b"metadata: " + b"[" * 5000 + b"]" * 5000,
            DEEP_REASON,
            id="deeper-than-pyyaml-recurses",
        ),
        pytest.param(b"token: bad\ncmd: caf\xe9\n", "is not valid UTF-8 (byte 0xe9 at position 19)", id="not-utf8"),
    ],
)
def test_files_that_cannot_be_text_or_nest_too_deep_are_reported(tmp_path: Path, raw: bytes, reason: str) -> None:
    (tmp_path / "bad.yaml").write_bytes(raw)
    files = files_in(tmp_path, **{"good.yaml": GOOD})
    (problem,) = files.problems
    assert problem.file == str(tmp_path / "bad.yaml") and reason in problem.reason, problem
    assert files.get("good") is not None


def test_a_token_defined_in_two_files_keeps_the_first(tmp_path: Path) -> None:
    files = files_in(tmp_path, **{"a.yaml": GOOD, "b.yaml": GOOD.replace("cmd: run", "cmd: other")})
    record = files.get("good")
    assert record is not None and record.data["cmd"] == "run"
    (problem,) = files.problems
    assert problem.file.endswith("b.yaml") and "already defined in" in problem.reason and "a.yaml" in problem.reason


def write(path: Path, text: str, bump_ns: int = 0) -> None:
    """Write and make sure the mtime moves even on coarse-grained file systems."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    after = max(path.stat().st_mtime_ns, before + 1_000_000 + bump_ns)
    os.utime(path, ns=(after, after))


def test_reload_picks_up_changes_additions_and_removals(tmp_path: Path) -> None:
    files = files_in(tmp_path, **{"good.yaml": GOOD})
    generation = files.generation
    assert not files.changed_on_disk()
    write(tmp_path / "good.yaml", GOOD.replace("version: '1'", "version: '2'"))
    write(tmp_path / "new.yaml", "token: fresh\ncmd: x\n")
    assert files.changed_on_disk()
    files.load()
    good = files.get("good")
    assert good is not None and good.data["version"] == "2" and files.get("fresh") is not None
    assert files.generation > generation
    (tmp_path / "new.yaml").unlink()
    files.load()
    assert files.get("fresh") is None


def test_a_broken_edit_keeps_the_last_good_version(tmp_path: Path) -> None:
    files = files_in(tmp_path, **{"good.yaml": GOOD})
    before = files.get("good")
    write(tmp_path / "good.yaml", GOOD + "cpus: [oops\n")
    files.load()
    assert files.get("good") == before
    (problem,) = files.problems
    assert "still serving the last good version of good" in problem.reason
    write(tmp_path / "good.yaml", GOOD.replace("cpus: 1", "cpus: -3"))  # parses, but the token is invalid
    files.load()
    assert files.get("good") == before and "cpus must be a positive number" in files.problems[0].reason
    write(tmp_path / "good.yaml", GOOD)
    files.load()
    assert files.problems == [] and files.get("good") is not None


# -- in a running router ----------------------------------------------------------------------------------------


async def test_a_file_edited_while_the_router_runs_is_served(make_router: MakeRouter) -> None:
    r = await make_router([backend_token("edited")])
    headers = {"x-waiter-token": "edited"}
    first = await r.service_id(headers)
    path = r.tokens_dir / "edited.yaml"
    write(path, yaml.safe_dump(backend_token("edited", version="2")))

    async def new_version_served() -> bool:
        return await r.service_id(headers) != first

    await eventually(new_version_served, timeout=10, what="the edited file to be served")
    async with r.client.get(r.url + "/token?token=edited") as resp:
        assert resp.status == 200 and (await resp.json())["version"] == "2"
    async with r.client.get(r.url + "/hello", headers=headers) as resp:
        assert resp.status == 200
        assert (await resp.text()).startswith(f"hello from {await r.service_id(headers)}.")


async def test_a_file_too_deep_for_the_yaml_parser_does_not_stop_reloading(make_router: MakeRouter) -> None:
    r = await make_router([backend_token("fine")])
    deep = yaml.safe_dump(backend_token("deep")) + "metadata: " + "[" * 5000 + "]" * 5000 + "\n"
    (r.tokens_dir / "deep.yaml").write_text(deep)

    async def reported() -> bool:
        return bool((await r.get_json("/status"))["token-file-errors"])

    await eventually(reported, timeout=10, what="the deep file to be reported")
    write(r.tokens_dir / "later.yaml", yaml.safe_dump(backend_token("later")))

    async def later_served() -> bool:
        async with r.client.get(r.url + "/token?token=later") as resp:
            return resp.status == 200

    await eventually(later_served, timeout=10, what="a file added afterwards to be loaded")


async def test_bad_yaml_is_reported_in_status_with_its_line(make_router: MakeRouter) -> None:
    r = await make_router([backend_token("fine")])
    (r.tokens_dir / "broken.yaml").write_text("token: broken\ncmd: run\ncpus: [\n")

    async def reported() -> bool:
        status: dict[str, Any] = await r.get_json("/status")
        return bool(status["token-file-errors"])

    await eventually(reported, timeout=10, what="the broken file to be reported")
    (error,) = (await r.get_json("/status"))["token-file-errors"]
    assert error["file"] == str(r.tokens_dir / "broken.yaml") and error["line"] == 4
    assert "is not valid YAML" in error["message"]
    async with r.client.get(r.url + "/hello", headers={"x-waiter-token": "fine"}) as resp:
        assert resp.status == 200  # every other token keeps being served
