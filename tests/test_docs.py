"""The project's own documentation stays true: the configuration reference matches the settings parser, and
nothing in the repository cites a file outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from waiter.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent
PROBE = "zz-probe"


def _problems(path: tuple[str, ...], value: object) -> str:
    data: object = value
    for key in reversed(path):
        data = {key: data}
    assert isinstance(data, dict)
    try:
        load_settings(None, data)
    except SettingsError as exc:
        return str(exc)
    return ""


def _known_here(path: tuple[str, ...]) -> list[str] | None:
    """The keys the parser knows in the mapping at ``path``, or None when ``path`` is not a mapping of settings."""
    dotted = "".join(f"{key}." for key in path)
    found = re.search(
        re.escape(dotted + PROBE) + r" is not a known setting; allowed here: ([^\n]*)\.$",
        _problems((*path, PROBE), 1),
        re.M,
    )
    return [key.strip() for key in found.group(1).split(",") if key.strip()] if found else None


def parser_keys(path: tuple[str, ...] = ()) -> set[str]:
    keys: set[str] = set()
    here = _known_here(path)
    if here == [] and path:
        return {".".join(path)}  # a mapping whose keys are read only when present: documented by its name
    for key in here or []:
        if _known_here((*path, key)) is None:
            keys.add(".".join((*path, key)))
        else:
            keys |= parser_keys((*path, key))
    return keys


def documented_keys() -> set[str]:
    """First-column keys of the reference table; "`a.b.c`, `d`" documents a.b.c and a.b.d."""
    text = (ROOT / "docs" / "operations.md").read_text()
    table = text.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    keys: set[str] = set()
    for row in table.splitlines():
        if not row.startswith("| `"):
            continue
        names = re.findall(r"`([^`]+)`", row.split("|")[1])
        parent = names[0].rsplit(".", 1)[0] + "." if "." in names[0] else ""
        keys |= {names[0], *(parent + name for name in names[1:])}
    return keys


def test_every_setting_is_documented() -> None:
    documented = documented_keys()
    missing = {key for key in parser_keys() - documented if not any(d.startswith(f"{key}.") for d in documented)}
    assert not missing, f"settings missing from docs/operations.md's reference: {sorted(missing)}"


@pytest.mark.parametrize("key", sorted(documented_keys()))
def test_every_documented_setting_exists(key: str) -> None:
    assert "is not a known setting" not in _problems(tuple(key.split(".")), None)
    assert "is not a known setting" not in _problems(tuple(key.split(".")), "zz-value")


OUTSIDE = re.compile(r"(?<![\w/.-])(?:\.\./shared/|/work/shared|waiter-api\.md|DESIGN\.md|STYLE\.md)")


def test_nothing_cites_a_file_outside_the_repository() -> None:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    offenders = [
        f"{name}:{number}"
        for name in listed.stdout.split()
        if name != "tests/test_docs.py"  # the pattern above names what it looks for
        and name.endswith((".py", ".md", ".yaml", ".yml", ".toml", ".cfg", ".sh", ".json", ".html", ".js"))
        and (ROOT / name).is_file()
        for number, line in enumerate((ROOT / name).read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not offenders, f"citations of files outside the repository: {offenders}"
