"""Mutation testing of the pure decision modules with mutmut, each module against its own tests (not run in CI).

For every module the script copies the package and the tests into a temp dir (the checkout stays untouched),
points mutmut at that one module and its test files, runs it, and prints one line per module: mutants, killed,
survived, the raw score, and the score over behaviour-changing mutants, which leaves out survivors whose whole
change is inside string literals (an error message's wording: the tests pin the important sentences, not every
word). Survivors that change behaviour are listed after the table with their diff, for the next test to kill.

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
    "params": ["tests/test_descriptor.py", "tests/test_description.py"],
}
# Helpers that build the parameter tables when the module is imported: mutmut switches mutants on per call, after
# the import, so their mutants can never be killed (nor can they change behaviour at run time).
IMPORT_TIME = {"params": ("x__num_", "x__int_", "x__enum_", "x__str_", "x__liveness_")}
PYTEST_ARGS = ["-p", "no:cacheprovider", "-q", "-x", "-W", "ignore"]
_STRING = re.compile(r"""(?:[rbfu]{0,2})("([^"\\]|\\.)*"|'([^'\\]|\\.)*')""")


def mutmut(work: Path, *args: str) -> str:
    binary = Path(sys.executable).with_name("mutmut")
    result = subprocess.run([str(binary), *args], cwd=work, capture_output=True, text=True, check=False)
    return result.stdout + result.stderr


def wording_only(diff: str) -> bool:
    """The mutant changed nothing but text inside string literals."""
    removed = [line[1:] for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line[1:] for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    if not removed or len(removed) != len(added):
        return False
    return all(_STRING.sub('""', a) == _STRING.sub('""', b) for a, b in zip(removed, added, strict=True))


def run_module(name: str, tests: list[str], children: int) -> tuple[str, list[tuple[str, str]]]:
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
        survivors = [m for m, status in statuses.items() if status == "survived"]
        behaviour = [(m, diff) for m in survivors if not wording_only(diff := mutmut(work, "show", m))]
    total = len(statuses)
    killed = sum(1 for status in statuses.values() if status == "killed")
    relevant = total - (len(survivors) - len(behaviour))
    raw = 100 * killed / total if total else 0.0
    score = 100 * killed / relevant if relevant else 0.0
    line = (
        f"{name}: mutants={total} (+{len(unreachable)} import-time) killed={killed} survived={len(survivors)} "
        f"(wording-only {len(survivors) - len(behaviour)}) score={raw:.1f}% behaviour-changing score={score:.1f}%"
    )
    return line, behaviour


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--module", choices=sorted(MODULES), action="append", help="default: all of them")
    parser.add_argument("--children", type=int, default=2, help="mutmut's --max-children")
    args = parser.parse_args()
    lines, survivors = [], []
    for name in args.module or list(MODULES):
        line, behaviour = run_module(name, MODULES[name], args.children)
        print(line, flush=True)
        lines.append(line)
        survivors += behaviour
    if survivors:
        print(f"\n{len(survivors)} behaviour-changing survivors:")
        for mutant, diff in survivors:
            changed = [row for row in diff.splitlines() if row[:1] in "+-" and row[:3] not in ("---", "+++")]
            print(f"  {mutant}: " + " | ".join(row.strip() for row in changed))


if __name__ == "__main__":
    main()
