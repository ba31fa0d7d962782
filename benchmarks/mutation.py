"""Mutation testing of the pure decision modules with mutmut, each module against its own tests (not run in CI).

For every module the script copies the package and the tests into a temp dir (the checkout stays untouched),
points mutmut at that one module and its test files, runs it, and prints one line per module: mutants, killed,
survived, the raw score, and the score over behaviour-changing mutants. Two kinds of survivor are left out of
that score, and both are listed after the table so a reader can check them:
- wording-only: the change is inside the prose of a string literal (two words with a space between, outside an
  f-string's {fields}): an error message's wording. A changed field name, value, separator or key is behaviour.
- equivalent: listed in EQUIVALENT below with the reason the mutated program behaves the same for every input.
Survivors that change behaviour are listed with their diff, for the next test to kill. A mutant no test reaches
("no tests") is a survivor too.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/mutation.py [--module scaling] [--children 2]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = {
    "scaling": ["tests/test_scaling.py", "tests/test_decision_boundaries.py"],
    "reservation": ["tests/test_reservation.py", "tests/test_decision_boundaries.py"],
    # the pure rows only: the file's end-to-end tests start real routers, which add minutes and nothing here
    "lifecycle": [
        *(f"tests/test_lifecycle.py::{t}" for t in ("test_deployment_error", "test_reap_reason", "test_is_expired")),
        "tests/test_lifecycle.py::test_in_fallback",
        "tests/test_decision_boundaries.py",
    ],
    "descriptor": ["tests/test_descriptor.py", "tests/test_service_ids.py"],
    "validation": ["tests/test_descriptor.py"],
    "params": ["tests/test_params.py", "tests/test_descriptor.py", "tests/test_description.py"],
}
# Helpers that build the parameter tables when the module is imported: mutmut switches mutants on per call, after
# the import, so their mutants can never be killed (nor can they change behaviour at run time).
IMPORT_TIME = {"params": ("x__num_", "x__int_", "x__enum_", "x__str_", "x__liveness_")}
PYTEST_ARGS = ["-p", "no:cacheprovider", "-q", "-x", "-W", "ignore"]
_FLAGS = "core, partial={}, user={}, max_cpus=max_cpus, max_mem=max_mem"
# Survivors reviewed as equivalent: (module, function, "old line -> new line") with why no input can tell the
# mutant apart. Keyed by the changed code, not mutmut's numbering, which shifts whenever the function changes.
EQUIVALENT: dict[tuple[str, str, str], str] = {
    ("reservation", "Reservations.remove", "slots.routable = False -> slots.routable = None"):
        "routable is only ever read for its truth, and None is as false as False",
    **{
        ("descriptor", "service_id", f"usedforsecurity=False).hexdigest() -> {new}).hexdigest()"):
            "the digest is the same; the flag only lets md5 run on a FIPS-restricted OpenSSL, which the id needs"
        for new in ("", "usedforsecurity=True", "usedforsecurity=None")
    },
    ("validation", "validate_service", f"{_FLAGS.format(False, False)} -> {_FLAGS.format(None, False)}"):
        "_service_problems reads partial only for its truth, and None is as false as False",
    ("validation", "validate_service", f"{_FLAGS.format(False, False)} -> {_FLAGS.format(False, None)}"):
        "_service_problems reads user only for its truth, and None is as false as False",
}
DETECTED = ("killed", "timeout", "segfault")  # a test failed, hung or crashed under the mutant
_STRING = re.compile(r"""(?i:[rbfu]{0,2})("([^"\\]|\\.)*"|'([^'\\]|\\.)*')""")
_FIELD = re.compile(r"\{[^{}]*\}")
_WORDS = re.compile(r"[A-Za-z]{2,}\W*\s\W*[A-Za-z]{2,}")  # two words apart: prose, not a key like "min-instances"


def mutmut(work: Path, *args: str) -> str:
    binary = Path(sys.executable).with_name("mutmut")
    result = subprocess.run([str(binary), *args], cwd=work, capture_output=True, text=True, check=False)
    return result.stdout + result.stderr


def changed_lines(diff: str) -> tuple[list[str], list[str]]:
    rows = [row for row in diff.splitlines() if row[:1] in "+-" and row[:3] not in ("---", "+++")]
    return [row[1:].strip() for row in rows if row[0] == "-"], [row[1:].strip() for row in rows if row[0] == "+"]


def _fields(literal: str) -> list[str]:
    """The {replacement fields} of an f-string literal: code, not wording."""
    prefix = literal[: len(literal) - len(literal.lstrip("rbfuRBFU"))]
    return _FIELD.findall(literal) if "f" in prefix.lower() else []


def _prose(literal: str, other: str) -> bool:
    """``literal`` became ``other`` only in its prose: same f-string fields, and the text changed is words."""
    return _fields(literal) == _fields(other) and _WORDS.search(_FIELD.sub("", literal)) is not None


def wording_only(diff: str) -> bool:
    """The mutant changed nothing but the prose inside string literals (an error message's wording)."""
    removed, added = changed_lines(diff)
    if not removed or len(removed) != len(added):
        return False
    for old, new in zip(removed, added, strict=True):
        if _STRING.sub('""', old) != _STRING.sub('""', new):
            return False
        literals = [[m.group(0) for m in _STRING.finditer(line)] for line in (old, new)]
        if not all(a == b or _prose(a, b) for a, b in zip(*literals, strict=True)):
            return False
    return True


def equivalent_key(name: str, mutant: str, diff: str) -> tuple[str, str, str]:
    function = re.sub(r"^x[ǁ_]|__mutmut_\d+$", "", mutant.rsplit(".", 1)[-1]).replace("ǁ", ".")
    removed, added = changed_lines(diff)
    return name, function, " | ".join(removed) + " -> " + " | ".join(added)


def run_module(name: str, tests: list[str], children: int) -> tuple[str, dict[str, list[str]]]:
    with tempfile.TemporaryDirectory(prefix=f"mutation-{name}-") as tmp:
        work = Path(tmp)
        shutil.copytree(ROOT / "waiter", work / "waiter")
        shutil.copytree(ROOT / "tests", work / "tests")
        shutil.copy(ROOT / "setup.cfg", work / "setup.cfg")
        quoted = ", ".join(f'"{arg}"' for arg in PYTEST_ARGS)
        (work / "pyproject.toml").write_text(
            "[tool.pytest.ini_options]\nasyncio_mode = \"auto\"\n"
            "asyncio_default_fixture_loop_scope = \"function\"\n\n"
            "[tool.mutmut]\n"
            'source_paths = ["waiter/"]\n'
            f'only_mutate = ["waiter/{name}.py"]\n'
            f"pytest_add_cli_args_test_selection = {tests!r}\n".replace("'", '"')
            + f"pytest_add_cli_args = [{quoted}]\n"
        )
        mutmut(work, "run", "--max-children", str(children))
        results = mutmut(work, "results", "--all", "true")
        statuses = dict(re.findall(r"^\s*(\S+): (\w[\w ]*)$", results, re.M))
        import_time = IMPORT_TIME.get(name, ())
        unreachable = [m for m in statuses if any(f".{prefix}" in m for prefix in import_time)]
        for mutant in unreachable:
            statuses.pop(mutant)
        listed: dict[str, list[str]] = {"behaviour-changing": [], "equivalent": [], "wording-only": []}
        for mutant, status in statuses.items():
            if status in DETECTED:
                continue
            diff = mutmut(work, "show", mutant)
            removed, added = changed_lines(diff)
            shown = f"{mutant} ({status}): " + " | ".join(f"-{r}" for r in removed) + " => " + " | ".join(
                f"+{a}" for a in added
            )
            reason = EQUIVALENT.get(equivalent_key(name, mutant, diff))
            if reason is not None:
                listed["equivalent"].append(f"{shown}\n      because {reason}")
            elif status == "survived" and wording_only(diff):
                listed["wording-only"].append(shown)
            else:
                listed["behaviour-changing"].append(shown)
    total = len(statuses)
    killed = sum(1 for status in statuses.values() if status in DETECTED)
    survived = total - killed
    relevant = killed + len(listed["behaviour-changing"])
    raw = 100 * killed / total if total else 0.0
    score = 100 * killed / relevant if relevant else 0.0
    line = (
        f"{name}: mutants={total} (+{len(unreachable)} import-time) killed={killed} survived={survived} "
        f"(wording-only {len(listed['wording-only'])}, equivalent {len(listed['equivalent'])}) "
        f"score={raw:.1f}% behaviour-changing score={score:.1f}%"
    )
    return line, listed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--module", choices=sorted(MODULES), action="append", help="default: all of them")
    parser.add_argument("--children", type=int, default=2, help="mutmut's --max-children")
    args = parser.parse_args()
    survivors: dict[str, list[str]] = {}
    for name in args.module or list(MODULES):
        line, listed = run_module(name, MODULES[name], args.children)
        print(line, flush=True)
        for kind, rows in listed.items():
            survivors.setdefault(kind, []).extend(rows)
    for kind, rows in survivors.items():
        if rows:
            print(f"\n{len(rows)} {kind} survivors:")
            print("\n".join(f"  {row}" for row in rows))


if __name__ == "__main__":
    main()
