"""Tokens registered as YAML files: loaded at start, reloaded when a file changes.

A file holds one token (a mapping with ``token: NAME`` and its fields, exactly the JSON body a client POSTs to
``/token``) or a list of them. A problem is reported with its file, line and reason, in the log and through
``problems``; only the token concerned is skipped, and a token that loaded before keeps its last good version
while its file is broken, so a half-saved edit does not take a running service away.

File tokens get system metadata like API tokens: ``owner`` (the file's ``owner``, else the router's
run-as-user), ``last-update-time`` (the file's mtime), ``last-update-user`` (the owner), ``cluster`` and ``root``
(the cluster name). They are read-only through the API.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from waiter.descriptor import SYSTEM_METADATA, DescriptorError
from waiter.jsonbounds import MAX_DEPTH, depth
from waiter.tokens.records import name_problem, normalise
from waiter.tokens.store import TokenRecord, make_record
from waiter.validation import validate_token

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FileProblem:
    file: str
    line: int | None
    reason: str
    # The token it keeps from loading: the entry's name, or for a file that cannot be read at all, its stem
    # (files are named after their token); requests for it are told why (TokenRegistry.problem_for).
    token: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}, line {self.line}" if self.line else self.file
        return f"{where}: {self.reason}"

    def json(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "message": self.reason}


@dataclass(frozen=True, slots=True)
class FileSettings:
    """What file tokens take from the router's configuration."""

    cluster: str
    default_owner: str
    hostnames: tuple[str, ...] = ()
    max_cpus: float = 32
    max_mem: float = 131072


class _Skip(Exception):
    def __init__(self, line: int | None, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


class TokenFiles:
    def __init__(self, directory: Path | None, config: FileSettings) -> None:
        self.directory = directory
        self.config = config
        self.tokens: dict[str, TokenRecord] = {}
        self.problems: list[FileProblem] = []
        self.generation = 0  # bumped whenever ``tokens`` changes
        self._by_file: dict[Path, dict[str, TokenRecord]] = {}
        self._signature: dict[Path, tuple[int, int]] = {}
        # Each file's parse (or why it could not be parsed) by its signature: a reload parses only what changed,
        # so one huge or pathological file does not hold the event loop at every change of another.
        self._parsed: dict[Path, tuple[tuple[int, int] | None, tuple[Any, Any, int] | _Skip]] = {}

    def get(self, name: str) -> TokenRecord | None:
        return self.tokens.get(name)

    def load(self) -> None:
        """Read every file again; keep what is valid (and the last good version of what broke)."""
        tokens: dict[str, TokenRecord] = {}
        by_file: dict[Path, dict[str, TokenRecord]] = {}
        problems: list[FileProblem] = []
        self._signature = self._current_signature()
        self._parsed = {path: parsed for path, parsed in self._parsed.items() if path in self._signature}
        for path in self._files():
            loaded, file_problems = self._load_file(path, self._by_file.get(path, {}))
            problems += file_problems
            for name, record in list(loaded.items()):
                if name in tokens:
                    problems.append(FileProblem(str(path), None, f"token {name} is already defined in "
                                                f"{tokens[name].source}; this definition is ignored"))
                    del loaded[name]
                else:
                    tokens[name] = record
            by_file[path] = loaded
        for problem in problems:
            if problem not in self.problems:
                log.error("token file %s", problem)
        if tokens != self.tokens:
            self.generation += 1
            log.info("loaded %d token(s) from %s", len(tokens), self.directory)
        self.tokens, self.problems, self._by_file = tokens, problems, by_file

    def changed_on_disk(self) -> bool:
        return self._current_signature() != self._signature

    async def watch(self, interval: float = 0.5) -> None:
        """Reload whenever a file in the directory is added, changed or removed."""
        while True:
            await asyncio.sleep(interval)
            try:
                if self.changed_on_disk():
                    self.load()
            except OSError as exc:  # the directory itself went away or became unreadable: keep what is loaded
                log.error("token directory %s cannot be read: %s; keeping the tokens loaded before",
                          self.directory, exc.strerror)
            except Exception:  # a bug must not end reloading for good
                log.exception("reloading the token files in %s failed; keeping the tokens loaded before",
                              self.directory)

    def _files(self) -> list[Path]:
        if self.directory is None or not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())

    def _current_signature(self) -> dict[Path, tuple[int, int]]:
        signature = {}
        for path in self._files():
            try:
                stat = path.stat()
            except OSError:
                continue  # removed between listing and stat: the next poll sees it gone
            signature[path] = (stat.st_mtime_ns, stat.st_size)
        return signature

    def _load_file(
        self, path: Path, before: Mapping[str, TokenRecord]
    ) -> tuple[dict[str, TokenRecord], list[FileProblem]]:
        try:
            loaded, node, mtime_ms = self._parse(path)
        except _Skip as skip:
            problem = FileProblem(str(path), skip.line, skip.reason + _kept(before.values()), path.stem)
            return dict(before), [problem]
        if loaded is None:
            return {}, []
        entries, nodes = (loaded, node.value) if isinstance(loaded, list) else ([loaded], [node])
        tokens: dict[str, TokenRecord] = {}
        problems: list[FileProblem] = []
        for index, (entry, entry_node) in enumerate(zip(entries, nodes, strict=True)):
            label = f"entry {index + 1}" if isinstance(loaded, list) else "the token"
            try:
                record = self._record(path, entry, entry_node, label, mtime_ms)
            except _Skip as skip:
                name = entry.get("token") if isinstance(entry, dict) else None
                kept = before.get(name) if isinstance(name, str) else None
                reason = skip.reason + _kept([kept] if kept else [])
                problems.append(FileProblem(str(path), skip.line, reason, name if isinstance(name, str) else None))
                if kept is not None:
                    tokens[kept.name] = kept
                continue
            if record.name in tokens:
                reason = f"token {record.name} is defined twice in this file; the later definition is ignored"
                problems.append(FileProblem(str(path), _line(entry_node), reason))
                continue
            tokens[record.name] = record
        return tokens, problems

    def _record(self, path: Path, entry: Any, node: yaml.Node, label: str, mtime_ms: int) -> TokenRecord:
        if not isinstance(entry, dict):
            raise _Skip(_line(node), f"{label} must be a mapping with a 'token' key and the token's fields")
        lines = _key_lines(node)
        name = entry.get("token")
        if not isinstance(name, str) or not name:
            raise _Skip(_line(node), f"{label} has no 'token' key naming it (token: NAME)")
        problem = name_problem(name)
        if problem is None and name.lower() in self.config.hostnames:
            problem = f"Token name is reserved: {name} is one of the router's host names"
        if problem is not None:
            raise _Skip(lines.get("token", _line(node)), problem)
        fields = {k: v for k, v in entry.items() if k != "token"}
        system = sorted(str(k) for k in fields if k in SYSTEM_METADATA)
        if system:
            raise _Skip(lines.get(system[0]), f"token {name}: {', '.join(system)} cannot be given in a token "
                        "file: the router sets system metadata itself (owner may be given)")
        self._validate(name, fields, lines, _line(node))
        owner = fields.get("owner") or self.config.default_owner
        data = normalise(fields)
        data.update({"owner": owner, "last-update-time": mtime_ms, "last-update-user": owner,
                     "cluster": self.config.cluster, "root": self.config.cluster})
        return make_record(name, data, str(path))

    def _validate(self, name: str, fields: Mapping[str, Any], lines: Mapping[str, int], entry_line: int) -> None:
        limits = {"max_cpus": self.config.max_cpus, "max_mem": self.config.max_mem}
        try:
            validate_token(fields, **limits)
        except DescriptorError as exc:
            raise _Skip(self._first_bad_line(fields, lines, entry_line), f"token {name}: {exc}") from None

    def _first_bad_line(self, fields: Mapping[str, Any], lines: Mapping[str, int], entry_line: int) -> int:
        """The line of the first field that is wrong on its own; the entry's line for cross-field problems."""
        limits = {"max_cpus": self.config.max_cpus, "max_mem": self.config.max_mem}
        for key, value in fields.items():
            try:
                validate_token({key: value}, **limits)
            except DescriptorError:
                return lines.get(str(key), entry_line)
        return entry_line


    def _parse(self, path: Path) -> tuple[Any, Any, int]:
        signature = self._signature.get(path)
        known = self._parsed.get(path)
        if known is None or known[0] != signature or signature is None:
            try:
                known = (signature, _parse(path))
            except _Skip as skip:
                known = (signature, skip)
            self._parsed[path] = known
        if isinstance(known[1], _Skip):
            raise known[1]
        data, node, mtime_ms = known[1]
        return copy.deepcopy(data), node, mtime_ms  # records are built from it: the kept parse stays as read


def _parse(path: Path) -> tuple[Any, Any, int]:
    """(data, YAML node tree, mtime in ms); the node tree gives the line of every entry and key."""
    try:
        raw = path.read_bytes()
        mtime_ms = path.stat().st_mtime_ns // 1_000_000
        text = raw.decode("utf-8")
        data = yaml.safe_load(text)
        if depth(data) > MAX_DEPTH:
            raise _Skip(None, f"nests lists and maps deeper than the limit of {MAX_DEPTH} levels")
        return data, yaml.compose(text, Loader=yaml.SafeLoader), mtime_ms
    except OSError as exc:
        raise _Skip(None, f"cannot be read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise _Skip(None, f"is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at position {exc.start})") from None
    except RecursionError:  # PyYAML's composer recurses once per level
        raise _Skip(None, f"nests lists and maps deeper than the limit of {MAX_DEPTH} levels") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise _Skip(mark.line + 1 if mark else None, f"is not valid YAML: {exc.problem or exc.context or exc}") from exc
    except yaml.YAMLError as exc:
        raise _Skip(None, f"is not valid YAML: {exc}") from exc


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _key_lines(node: yaml.Node) -> dict[str, int]:
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(key.value): _line(key) for key, _ in node.value}


def _kept(records: Iterable[TokenRecord]) -> str:
    names = ", ".join(sorted(r.name for r in records))
    if not names:
        return ""
    return f" (still serving the last good version of {names})"
