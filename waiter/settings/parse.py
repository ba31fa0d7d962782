"""Defaults, then the YAML file, then the command line, then validation: ``load_settings``."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from waiter.redis_client import EXAMPLE as SENTINEL_EXAMPLE
from waiter.redis_client import SCHEMES as REDIS_SCHEMES
from waiter.redis_client import check_url as check_redis_url
from waiter.settings.model import (
    SCHEDULER_KINDS,
    HealthConfig,
    LifecycleConfig,
    LocalSchedulerConfig,
    Settings,
    SettingsError,
    is_loopback,
    redact_url,
)
from waiter.settings.reader import _cidrs, _merge, _Reader
from waiter.settings.sections import _auth, _kubernetes, _marathon, _mesos, _scaling


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
    access_log = top.get("access-log")
    if access_log is None:
        access_log = base.access_log
    elif access_log is False or access_log == "off":  # YAML reads a bare off as false
        access_log = "off"
    elif access_log != "json":
        problems.append(f"access-log is {access_log!r} but must be off or json.")
        access_log = base.access_log
    run_as_user = top.string("run-as-user", base.run_as_user)
    drain = top.number("drain-timeout-secs", base.drain_timeout_secs, 0, 3600)
    redis_url, token_admins = _token_store(top, base, run_as_user, problems)
    hostnames = base.hostnames
    raw_hosts = top.get("hostnames")
    if raw_hosts is not None:
        if isinstance(raw_hosts, list) and all(isinstance(h, str) and h for h in raw_hosts):
            hostnames = tuple(h.lower() for h in raw_hosts)
        else:
            problems.append(f"hostnames is {raw_hosts!r} but must be a list of host names.")
    max_cpus = top.number("max-cpus", base.max_cpus, 0.001, 1024)
    max_mem = top.number("max-mem", base.max_mem, 1, 16 * 1024 * 1024)
    max_api_body = top.integer("max-api-body-bytes", base.max_api_body_bytes, 1024, 1 << 30)

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
    retention = local_r.number("sandbox-retention-secs", base.local.sandbox_retention_secs, 60, 365 * 86400)
    kept = local_r.integer("sandboxes-kept", base.local.sandboxes_kept, 0, 1000)
    local_r.check_unknown()
    marathon = _marathon(_Reader(sched.mapping("marathon"), "scheduler.marathon.", problems), base.marathon, kind)
    mesos = _mesos(_Reader(sched.mapping("mesos"), "scheduler.mesos.", problems), base.mesos, kind)
    kubernetes = _kubernetes(
        _Reader(sched.mapping("kubernetes"), "scheduler.kubernetes.", problems), base.kubernetes, kind
    )
    agent_r = _Reader(sched.mapping("agent"), "scheduler.agent.", problems)
    agent_url = agent_r.string("url", base.agent_url)
    handoff = agent_r.boolean("handoff", base.handoff)
    if kind == "agent" and not agent_url.startswith("unix:/"):
        problems.append(
            f"scheduler.agent.url is {agent_url!r} but must be the agent's socket, unix:/path, with kind agent."
        )
    agent_r.check_unknown()
    sched.check_unknown()
    workers = top.integer("workers", base.workers, 1, 256)

    health_r = _Reader(top.mapping("health-check"), "health-check.", problems)
    health = HealthConfig(
        startup_interval_ms=health_r.integer("startup-interval-ms", base.health.startup_interval_ms, 10, 10000),
        timeout_ms=health_r.integer("timeout-ms", base.health.timeout_ms, 10, 60000),
    )
    health_r.check_unknown()
    scaling = _scaling(_Reader(top.mapping("autoscaler"), "autoscaler.", problems), base.scaling)
    life_r = _Reader(top.mapping("lifecycle"), "lifecycle.", problems)
    lifecycle = LifecycleConfig(
        reap_interval_secs=life_r.number("reap-interval-secs", base.lifecycle.reap_interval_secs, 0.05, 3600),
        broken_service_timeout_secs=life_r.number(
            "broken-service-timeout-secs", base.lifecycle.broken_service_timeout_secs, 1, 7 * 86400
        ),
        minute_secs=life_r.number("minute-secs", base.lifecycle.minute_secs, 0.01, 60),
    )
    life_r.check_unknown()
    defaults = dict(base.service_defaults)
    defaults.update(top.mapping("service-defaults"))
    auth = _auth(top, base.auth, problems)
    if "one-user" not in auth.kinds and not top.has("token-admins") and not base.token_admins:
        # With real identities nobody is an admin by accident of their name matching the router's process user.
        token_admins = ()
    insecure = top.boolean("insecure", base.insecure)
    trusted_proxies = _cidrs(top, "trusted-proxies", base.trusted_proxies, problems)
    top.check_unknown()
    if not is_loopback(host) and "one-user" in auth.kinds and allow and not insecure:
        problems.append(
            f"host is {host!r}, which is not a loopback address, while the authenticator is one-user and "
            "allow-on-the-fly is true: anyone who can reach the router could run any command as "
            f"'{auth.one_user or run_as_user}'. Bind 127.0.0.1 (host), or set authenticator.kind to jwt, "
            "kerberos or trusted-header, or set allow-on-the-fly: false; or set insecure: true (--insecure) "
            "if you accept that."
        )
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
        access_log=access_log,
        run_as_user=run_as_user,
        drain_timeout_secs=drain,
        max_api_body_bytes=max_api_body,
        hostnames=hostnames,
        redis=redis_url,
        token_admins=token_admins,
        scheduler_kind=kind,
        agent_url=agent_url,
        handoff=handoff,
        workers=workers,
        local=LocalSchedulerConfig(
            work_dir=work_dir,
            port_range=port_range,
            memory_check_interval_secs=mem_interval,
            sandbox_retention_secs=retention,
            sandboxes_kept=kept,
        ),
        marathon=marathon,
        mesos=mesos,
        kubernetes=kubernetes,
        health=health,
        scaling=scaling,
        lifecycle=lifecycle,
        service_defaults=defaults,
        max_cpus=max_cpus,
        max_mem=max_mem,
        auth=auth,
        insecure=insecure,
        trusted_proxies=trusted_proxies,
    )


def _token_store(
    top: _Reader, base: Settings, run_as_user: str, problems: list[str]
) -> tuple[str | None, tuple[str, ...]]:
    redis_url = base.redis
    if top.has("redis"):
        raw = top.get("redis")
        if raw is None:
            redis_url = None
        elif isinstance(raw, str) and check_redis_url(raw) is None:
            redis_url = raw
        else:
            shown = redact_url(raw) if isinstance(raw, str) else repr(raw)
            why = check_redis_url(raw) if isinstance(raw, str) else f"it must start with {', '.join(REDIS_SCHEMES)}"
            problems.append(
                f"redis is {shown!r} but {why} (e.g. redis://127.0.0.1:6379/0, or {SENTINEL_EXAMPLE}), "
                "or null to keep everything in memory (one router)."
            )
    admins = base.token_admins or (run_as_user,)
    raw_admins = top.get("token-admins")
    if raw_admins is not None:
        if isinstance(raw_admins, list) and all(isinstance(a, str) and a for a in raw_admins):
            admins = tuple(raw_admins)
        else:
            problems.append(f"token-admins is {raw_admins!r} but must be a list of user names (may be empty).")
    return redis_url, admins


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
    _merge(data, overrides or {})
    settings = _parse(data, Settings(config_file=config_file))
    if not settings.router_id:
        settings = replace(settings, router_id=f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    return settings
