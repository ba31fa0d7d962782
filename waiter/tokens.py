"""Tokens registered as YAML files: loaded at start, reloaded when a file changes.

A file holds one token (a mapping with ``token: NAME`` and its fields, exactly the JSON body a client POSTs to
``/token``) or a list of them. A malformed file or token is reported with its file, line and reason and skipped;
every other token keeps being served.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from waiter.descriptor import DescriptorError, validate_token

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TokenRecord:
    name: str
    data: Mapping[str, Any]  # service parameters and user metadata, as stored
    etag: str
    source: str = ""  # the file that defines it


def token_etag(data: Mapping[str, Any]) -> str:
    """``E-`` + MD5 of the record without its history (waiter-api.md §2.4)."""
    body = {k: v for k, v in data.items() if k not in ("previous", "token")}
    return "E-" + hashlib.md5(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class TokenRegistry:
    directory: Path | None
    tokens: dict[str, TokenRecord] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # file -> problem
    generation: int = 0  # bumped on every change, so caches of resolved services know to drop entries
    _mtimes: dict[Path, float] = field(default_factory=dict)

    def get(self, name: str) -> TokenRecord | None:
        return self.tokens.get(name)

    def load(self) -> None:
        tokens: dict[str, TokenRecord] = {}
        errors: dict[str, str] = {}
        mtimes: dict[Path, float] = {}
        for path in self._files():
            try:
                mtimes[path] = path.stat().st_mtime
                records = _read_file(path)
            except _FileProblem as exc:
                errors[str(path)] = str(exc)
                log.error("token file %s skipped: %s", path, exc)
                continue
            for record in records:
                if record.name in tokens:
                    problem = f"token {record.name} is also defined in {tokens[record.name].source}"
                    errors[str(path)] = problem
                    log.error("token file %s: %s", path, problem)
                    continue
                tokens[record.name] = record
        changed = tokens != self.tokens
        self.tokens, self.errors, self._mtimes = tokens, errors, mtimes
        if changed:
            self.generation += 1
            log.info("loaded %d token(s) from %s", len(tokens), self.directory)

    def _files(self) -> list[Path]:
        if self.directory is None or not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())

    def _changed_on_disk(self) -> bool:
        try:
            current = {p: p.stat().st_mtime for p in self._files()}
        except OSError:
            return True
        return current != self._mtimes

    async def watch(self, interval: float = 1.0) -> None:
        """Reload whenever a file in the directory is added, changed or removed."""
        while True:
            await asyncio.sleep(interval)
            if self._changed_on_disk():
                self.load()


class _FileProblem(Exception):
    pass


def _read_file(path: Path) -> list[TokenRecord]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise _FileProblem(f"cannot read: {exc.strerror}") from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise _FileProblem(f"{where}{exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise _FileProblem(str(exc)) from exc
    items = loaded if isinstance(loaded, list) else [loaded]
    records = []
    for index, item in enumerate(items):
        where = f"entry {index + 1}" if isinstance(loaded, list) else "the token"
        if not isinstance(item, dict):
            raise _FileProblem(f"{where} must be a mapping with a 'token' key and the token's fields")
        name = item.get("token")
        if not isinstance(name, str) or not name:
            raise _FileProblem(f"{where} has no 'token' key naming it")
        data = {k: v for k, v in item.items() if k != "token"}
        try:
            validate_token(data)
        except DescriptorError as exc:
            raise _FileProblem(f"token {name}: {exc}") from exc
        records.append(TokenRecord(name, data, token_etag(data), str(path)))
    return records
