"""Router configuration: defaults -> YAML file -> command-line flags -> validation.

Every error names the key, the value and what is allowed. Loading is pure (no logging, no exiting); ``main`` turns a
``SettingsError`` into a message and a non-zero exit.
"""

from __future__ import annotations

import getpass
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

SCHEDULER_KINDS = ("local", "marathon", "mesos")


class SettingsError(Exception):
    """The configuration is invalid; the message lists every problem, one per line."""


@dataclass(frozen=True)
class LocalSchedulerConfig:
    work_dir: Path = Path("scheduler")
    port_range: tuple[int, int] = (10000, 10999)
    memory_check_interval_secs: float = 1.0


@dataclass(frozen=True)
class HealthConfig:
    startup_interval_ms: int = 50  # probe period while an instance has never been healthy
    timeout_ms: int = 1000  # one probe's deadline


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 9091
    router_id: str = ""
    cluster_name: str = "local"
    tokens_dir: Path | None = Path("config/tokens")
    service_prefix: str = "waiter-service-"
    allow_on_the_fly: bool = True
    run_as_user: str = field(default_factory=getpass.getuser)
    drain_timeout_secs: float = 30.0
    hostnames: tuple[str, ...] = ()
    scheduler_kind: str = "local"
    local: LocalSchedulerConfig = LocalSchedulerConfig()
    health: HealthConfig = HealthConfig()
    service_defaults: Mapping[str, Any] = field(default_factory=dict)
    max_cpus: float = 32.0
    max_mem: float = 131072.0
    config_file: Path | None = None

    def public(self) -> dict[str, Any]:
        """The effective configuration as /settings shows it (kebab-case keys, Waiter's names where they exist)."""
        return {
            "router-id": self.router_id,
            "host": self.host,
            "port": self.port,
            "hostnames": list(self.hostnames),
            "cluster-config": {"name": self.cluster_name},
            "tokens-dir": str(self.tokens_dir) if self.tokens_dir else None,
            "service-prefix": self.service_prefix,
            "allow-on-the-fly": self.allow_on_the_fly,
            "run-as-user": self.run_as_user,
            "drain-timeout-secs": self.drain_timeout_secs,
            "scheduler-config": {
                "kind": self.scheduler_kind,
                "local": {
                    "work-dir": str(self.local.work_dir),
                    "port-range": list(self.local.port_range),
                    "memory-check-interval-secs": self.local.memory_check_interval_secs,
                },
            },
            "health-check-config": {
                "startup-interval-ms": self.health.startup_interval_ms,
                "timeout-ms": self.health.timeout_ms,
            },
            "service-description-defaults": dict(self.service_defaults),
            "service-description-constraints": {"cpus": {"max": self.max_cpus}, "mem": {"max": self.max_mem}},
            "config-file": str(self.config_file) if self.config_file else None,
        }


class _Reader:
    """Reads one mapping of the YAML file, collecting a problem per bad key instead of stopping at the first."""

    def __init__(self, data: Mapping[str, Any], prefix: str, problems: list[str]) -> None:
        self.data = data
        self.prefix = prefix
        self.problems = problems
        self.seen: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def get(self, key: str) -> Any:
        self.seen.add(key)
        return self.data.get(key)

    def has(self, key: str) -> bool:
        return key in self.data

    def string(self, key: str, default: str) -> str:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            self.problems.append(f"{self._key(key)} is {value!r} but must be a non-empty string.")
            return default
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.problems.append(f"{self._key(key)} is {value!r} but must be an integer in the range [{low}, {high}].")
            return default
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            self.problems.append(f"{self._key(key)} is {value!r} but must be a number in the range [{low}, {high}].")
            return default
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.problems.append(f"{self._key(key)} is {value!r} but must be true or false.")
            return default
        return value

    def mapping(self, key: str) -> Mapping[str, Any]:
        value = self.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problems.append(f"{self._key(key)} is {value!r} but must be a mapping.")
            return {}
        return value

    def check_unknown(self) -> None:
        for key in self.data:
            if key not in self.seen:
                allowed = ", ".join(sorted(self.seen))
                self.problems.append(f"{self._key(str(key))} is not a known setting; allowed here: {allowed}.")


def _parse(data: Mapping[str, Any], base: Settings) -> Settings:
    problems: list[str] = []
    top = _Reader(data, "", problems)
    host = top.string("host", base.host)
    port = top.integer("port", base.port, 0, 65535)
    router_id = top.string("router-id", base.router_id)
    cluster_name = top.string("cluster-name", base.cluster_name)
    tokens_dir = base.tokens_dir
    if top.has("tokens-dir"):
        raw = top.get("tokens-dir")
        tokens_dir = None if raw is None else Path(top.string("tokens-dir", str(base.tokens_dir)))
    prefix = top.string("service-prefix", base.service_prefix)
    if not all(c.islower() or c.isdigit() or c == "-" for c in prefix):
        problems.append(f"service-prefix is {prefix!r} but may hold only lowercase letters, digits and '-'.")
    allow = top.boolean("allow-on-the-fly", base.allow_on_the_fly)
    run_as_user = top.string("run-as-user", base.run_as_user)
    drain = top.number("drain-timeout-secs", base.drain_timeout_secs, 0, 3600)
    hostnames = base.hostnames
    raw_hosts = top.get("hostnames")
    if raw_hosts is not None:
        if isinstance(raw_hosts, list) and all(isinstance(h, str) and h for h in raw_hosts):
            hostnames = tuple(h.lower() for h in raw_hosts)
        else:
            problems.append(f"hostnames is {raw_hosts!r} but must be a list of host names.")
    max_cpus = top.number("max-cpus", base.max_cpus, 0.001, 1024)
    max_mem = top.number("max-mem", base.max_mem, 1, 16 * 1024 * 1024)

    sched = _Reader(top.mapping("scheduler"), "scheduler.", problems)
    kind = sched.string("kind", base.scheduler_kind)
    if kind not in SCHEDULER_KINDS:
        problems.append(f"scheduler.kind is {kind!r} but must be one of: {', '.join(SCHEDULER_KINDS)}.")
    local_r = _Reader(sched.mapping("local"), "scheduler.local.", problems)
    work_dir = Path(local_r.string("work-dir", str(base.local.work_dir)))
    port_range = base.local.port_range
    raw_range = local_r.get("port-range")
    if raw_range is not None:
        ok = (
            isinstance(raw_range, list)
            and len(raw_range) == 2
            and all(isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535 for p in raw_range)
            and raw_range[0] <= raw_range[1]
        )
        if ok:
            port_range = (raw_range[0], raw_range[1])
        else:
            problems.append(
                f"scheduler.local.port-range is {raw_range!r} but must be [low, high] with 1 <= low <= high <= 65535."
            )
    mem_interval = local_r.number("memory-check-interval-secs", base.local.memory_check_interval_secs, 0.05, 3600)
    local_r.check_unknown()
    sched.check_unknown()

    health_r = _Reader(top.mapping("health-check"), "health-check.", problems)
    health = HealthConfig(
        startup_interval_ms=health_r.integer("startup-interval-ms", base.health.startup_interval_ms, 10, 10000),
        timeout_ms=health_r.integer("timeout-ms", base.health.timeout_ms, 10, 60000),
    )
    health_r.check_unknown()
    defaults = dict(base.service_defaults)
    defaults.update(top.mapping("service-defaults"))
    top.check_unknown()
    if problems:
        raise SettingsError("\n".join(problems))
    return replace(
        base,
        host=host,
        port=port,
        router_id=router_id,
        cluster_name=cluster_name,
        tokens_dir=tokens_dir,
        service_prefix=prefix,
        allow_on_the_fly=allow,
        run_as_user=run_as_user,
        drain_timeout_secs=drain,
        hostnames=hostnames,
        scheduler_kind=kind,
        local=LocalSchedulerConfig(work_dir=work_dir, port_range=port_range, memory_check_interval_secs=mem_interval),
        health=health,
        service_defaults=defaults,
        max_cpus=max_cpus,
        max_mem=max_mem,
    )


def load_settings(config_file: Path | None = None, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Defaults, then the YAML file, then ``overrides`` (the command line, in the file's key names)."""
    data: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = yaml.safe_load(config_file.read_text())
        except OSError as exc:
            raise SettingsError(f"Cannot read the config file {config_file}: {exc.strerror}.") from exc
        except yaml.YAMLError as exc:
            raise SettingsError(f"The config file {config_file} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise SettingsError(f"The config file {config_file} must hold a mapping of settings at its top level.")
        data.update(loaded or {})
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    settings = _parse(data, Settings(config_file=config_file))
    if not settings.router_id:
        settings = replace(settings, router_id=f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    return settings
