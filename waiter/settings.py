"""Router configuration: defaults -> YAML file -> command-line flags -> validation.

Every error names the key, the value and what is allowed. Loading is pure (no logging, no exiting); ``main`` turns a
``SettingsError`` into a message and a non-zero exit.
"""

from __future__ import annotations

import getpass
import ipaddress
import os
import re
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from waiter.redis_client import EXAMPLE as SENTINEL_EXAMPLE
from waiter.redis_client import SCHEMES as REDIS_SCHEMES
from waiter.redis_client import check_url as check_redis_url

SCHEDULER_KINDS = ("local", "marathon", "mesos", "kubernetes", "agent")


def redact_url(url: str) -> str:
    """``url`` without its password, for logs, /status and /settings (also with several hosts, as Sentinel's)."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    username = userinfo.split(":", 1)[0]
    return urlunsplit((parts.scheme, f"{username}:***@{hosts}", parts.path, parts.query, parts.fragment))


REFUSED = 2  # exit code of waiter-router when its configuration is invalid or cannot run here


class SettingsError(Exception):
    """The configuration is invalid; the message lists every problem, one per line."""


@dataclass(frozen=True)
class LocalSchedulerConfig:
    work_dir: Path = Path("scheduler")
    port_range: tuple[int, int] = (10000, 10999)
    memory_check_interval_secs: float = 1.0
    sandbox_retention_secs: float = 3600.0  # sandboxes of ended instances are removed after this
    sandboxes_kept: int = 3  # except the newest few of each service that still exists


MARATHON_APP_ID_PREFIX = re.compile(r"/(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?/)*")


@dataclass(frozen=True)
class MarathonSchedulerConfig:
    url: str = ""  # Marathon's base URL (required with kind marathon), e.g. http://marathon.example.com:8080
    # The Marathon group holding this router's apps: app id = prefix + service id. "/" puts them at the top, as
    # Waiter does; a group keeps them apart from other apps and lets one GET list only them.
    app_id_prefix: str = "/waiter/"
    username: str | None = None  # HTTP basic auth, together with password
    password: str | None = None
    sync_interval_ms: int = 1000  # how often the app snapshot is refreshed when nothing is starting
    request_timeout_ms: int = 10_000  # one HTTP call's deadline
    retry_attempts: int = 5  # tries of a call that meets a deployment lock (409), a 5xx or a timeout
    retry_backoff_ms: int = 100  # wait before the first retry; doubles each time, capped at 5 s
    agent_work_dir: str = "/var/lib/mesos"  # the Mesos agents' --work_dir, for instances' log-directory


MESOS_MASTER = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):(\d{1,5})")


@dataclass(frozen=True)
class MesosSchedulerConfig:
    master: str = ""  # HOST:PORT of a Mesos master (required with kind mesos); a non-leader redirects to the leader
    framework_name: str = "waiter"
    role: str = "*"
    user: str = ""  # the framework's user; empty means the router's run-as-user
    failover_timeout_secs: float = 604800.0  # the master keeps the tasks this long while the router is away
    offer_wait_secs: float = 60.0  # no offer fits an instance for this long -> the service shows a deployment error
    request_timeout_ms: int = 10_000  # one call's deadline (and SUBSCRIBE's until the first event)
    agent_work_dir: str = "/var/lib/mesos"  # the Mesos agents' --work_dir, for instances' log-directory


@dataclass(frozen=True)
class KubernetesSchedulerConfig:
    # The API server's base URL. Unset: the kubeconfig's cluster, or inside a pod the in-cluster address
    # (https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT with the service account's token and CA).
    api_url: str = ""
    namespace: str = ""  # where the ReplicaSets go; unset: the kubeconfig context's, the pod's own, or "default"
    token_file: Path | None = None  # a bearer token, re-read when it changes
    kubeconfig: Path | None = None  # a kubeconfig file (its current context); api-url and token-file override it
    context: str = ""  # the kubeconfig context to use instead of its current-context
    ca_file: Path | None = None  # the CA bundle that signed the API server's certificate
    insecure_skip_tls_verify: bool = False
    image: str = "python:3.12-slim"  # the image of services that name none (the service parameter "image")
    shell: tuple[str, ...] = ("/bin/sh", "-c")  # the image's shell; cmd is its last argument
    pod_base_port: int = 31000  # PORT0 is base + 10 * (hash of the service id mod 100)
    pod_sigkill_delay_secs: int = 3  # terminationGracePeriodSeconds when termination-grace-period-secs is 0
    offer_wait_secs: float = 60.0  # a pod unschedulable this long -> the service shows a deployment error
    request_timeout_ms: int = 10_000  # one call's deadline
    retry_attempts: int = 5  # tries of a call that meets a 5xx, a 429 or a timeout
    retry_backoff_ms: int = 100  # wait before the first retry (and watch reconnection); doubles, capped at 5 s
    watch_timeout_secs: int = 300  # the server ends each watch after this; the router resumes it at once


@dataclass(frozen=True)
class HealthConfig:
    startup_interval_ms: int = 50  # probe period while an instance has never been healthy
    timeout_ms: int = 1000  # one probe's deadline


@dataclass(frozen=True)
class ScalingConfig:
    interval_ms: int = 1000  # the leader's decision period (Waiter: 1 s)
    kill_interval_ms: int = 1000  # at most one scale-down kill per service this often
    burst_enabled: bool = True
    burst_threshold: float = 2.0  # burst when the need is at least this many times the healthy instances
    burst_stable_window_secs: float = 60.0  # a burst holds its highest throughput need this long
    burst_drain_secs: float = 1.0  # a burst adds the instances that serve the queue within this many seconds
    publish_interval_ms: int = 100  # how often a router shares its counts (and reads the others')
    router_ttl_ms: int = 3000  # a router that stops heartbeating is forgotten after this


@dataclass(frozen=True)
class LifecycleConfig:
    reap_interval_secs: float = 10.0  # how often the leader looks for idle, stale and broken services
    broken_service_timeout_secs: float = 1800.0  # a service that cannot start for this long is deleted
    minute_secs: float = 60.0  # the length of a minute in the *-mins service parameters; shorten only for tests


AUTHENTICATOR_KINDS = ("one-user", "jwt", "kerberos", "trusted-header")
# Asymmetric algorithms only: "none" and the HMAC family (HS*) would let a public key act as a shared secret.
JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
SAME_SITE = ("Strict", "Lax", "None")


@dataclass(frozen=True)
class JwtConfig:
    jwks_url: str = ""  # the issuer's JWKS, fetched at start, on an unknown kid and every jwks-refresh-secs
    jwks_file: Path | None = None  # or a JWKS file, re-read on the same occasions
    issuer: str = ""
    audience: str = ""
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
    user_claim: str = "sub"  # the claim naming the caller; its part before '@' is the user name
    leeway_secs: float = 30.0  # clock skew allowed on exp, nbf and iat
    jwks_refresh_secs: float = 600.0


@dataclass(frozen=True)
class KerberosConfig:
    keytab: Path | None = None  # the acceptor's keytab; None uses KRB5_KTNAME or the system default
    service_principal: str = ""  # e.g. HTTP/router.example.com@REALM; empty accepts any principal of the keytab


@dataclass(frozen=True)
class TrustedHeaderConfig:
    header: str = "x-forwarded-user"
    trusted_cidrs: tuple[str, ...] = ()  # only peers in these networks may name the user


@dataclass(frozen=True)
class AuthConfig:
    kinds: tuple[str, ...] = ("one-user",)  # tried in order; the first that recognises a request decides
    one_user: str = ""  # the one user; empty means run-as-user
    jwt: JwtConfig = JwtConfig()
    kerberos: KerberosConfig = KerberosConfig()
    trusted_header: TrustedHeaderConfig = TrustedHeaderConfig()
    cookie_secret: str = ""  # empty: shared through redis when set, else random for this router
    cookie_max_age_secs: int = 86400
    cookie_same_site: str = "Lax"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 9091
    router_id: str = ""
    cluster_name: str = "local"
    tokens_dir: Path | None = Path("config/tokens")
    service_prefix: str = "waiter-service-"
    allow_on_the_fly: bool = True
    access_log: str = "off"  # "json": one JSON line per request on stdout (waiter.access_log)
    run_as_user: str = field(default_factory=getpass.getuser)
    drain_timeout_secs: float = 30.0
    hostnames: tuple[str, ...] = ()
    redis: str | None = None  # what routers share (tokens, state); None keeps it in memory (one router)
    token_admins: tuple[str, ...] = ()  # load_settings defaults it to (run_as_user,), as Waiter's process user
    scheduler_kind: str = "local"
    agent_url: str = ""  # kind "agent": the scheduler agent that shares one local scheduler between routers
    workers: int = 1  # router processes on one port (SO_REUSEPORT); more than one needs redis
    local: LocalSchedulerConfig = LocalSchedulerConfig()
    marathon: MarathonSchedulerConfig = MarathonSchedulerConfig()
    mesos: MesosSchedulerConfig = MesosSchedulerConfig()
    kubernetes: KubernetesSchedulerConfig = KubernetesSchedulerConfig()
    health: HealthConfig = HealthConfig()
    scaling: ScalingConfig = ScalingConfig()
    lifecycle: LifecycleConfig = LifecycleConfig()
    service_defaults: Mapping[str, Any] = field(default_factory=dict)
    max_cpus: float = 32.0
    max_mem: float = 131072.0
    # The largest body the router's own API reads (POST /token): more is a 413. Proxied bodies stream unbounded.
    max_api_body_bytes: int = 1 << 20
    auth: AuthConfig = AuthConfig()
    insecure: bool = False  # the operator accepts a non-loopback bind with one-user auth and on-the-fly services
    trusted_proxies: tuple[str, ...] = ()  # peers whose x-forwarded-proto is believed (https-redirect)
    config_file: Path | None = None

    @property
    def scheduler_syncer_interval_secs(self) -> float:
        """How often the scheduler's view of instances is refreshed: Marathon is polled; local processes are checked
        by the local scheduler's loop; Mesos pushes its task updates, nothing is polled (0)."""
        if self.scheduler_kind == "marathon":
            return self.marathon.sync_interval_ms / 1000
        if self.scheduler_kind == "mesos":
            return 0.0
        return self.local.memory_check_interval_secs

    def public(self) -> dict[str, Any]:
        """The effective configuration as /settings shows it (kebab-case keys, Waiter's names where they exist)."""
        return {
            "router-id": self.router_id,
            "host": self.host,
            "port": self.port,
            "hostnames": list(self.hostnames),
            "redis": redact_url(self.redis) if self.redis else None,
            "token-admins": list(self.token_admins),
            "cluster-config": {"name": self.cluster_name},
            "tokens-dir": str(self.tokens_dir) if self.tokens_dir else None,
            "service-prefix": self.service_prefix,
            "allow-on-the-fly": self.allow_on_the_fly,
            "access-log": self.access_log,
            "run-as-user": self.run_as_user,
            "drain-timeout-secs": self.drain_timeout_secs,
            "max-api-body-bytes": self.max_api_body_bytes,
            "scheduler-syncer-interval-secs": self.scheduler_syncer_interval_secs,
            "scheduler-config": {
                "kind": self.scheduler_kind,
                "agent": {"url": self.agent_url},
                "local": {
                    "work-dir": str(self.local.work_dir),
                    "port-range": list(self.local.port_range),
                    "memory-check-interval-secs": self.local.memory_check_interval_secs,
                    "sandbox-retention-secs": self.local.sandbox_retention_secs,
                    "sandboxes-kept": self.local.sandboxes_kept,
                },
                "marathon": {
                    "url": redact_url(self.marathon.url),
                    "app-id-prefix": self.marathon.app_id_prefix,
                    "username": self.marathon.username,
                    "sync-interval-ms": self.marathon.sync_interval_ms,
                    "request-timeout-ms": self.marathon.request_timeout_ms,
                    "retry-attempts": self.marathon.retry_attempts,
                    "retry-backoff-ms": self.marathon.retry_backoff_ms,
                    "agent-work-dir": self.marathon.agent_work_dir,
                },
                "mesos": {
                    "master": self.mesos.master,
                    "framework-name": self.mesos.framework_name,
                    "role": self.mesos.role,
                    "user": self.mesos.user or self.run_as_user,
                    "failover-timeout-secs": self.mesos.failover_timeout_secs,
                    "offer-wait-secs": self.mesos.offer_wait_secs,
                    "request-timeout-ms": self.mesos.request_timeout_ms,
                    "agent-work-dir": self.mesos.agent_work_dir,
                },
                "kubernetes": {
                    "api-url": redact_url(self.kubernetes.api_url),
                    "namespace": self.kubernetes.namespace,
                    "token-file": str(self.kubernetes.token_file) if self.kubernetes.token_file else None,
                    "kubeconfig": str(self.kubernetes.kubeconfig) if self.kubernetes.kubeconfig else None,
                    "context": self.kubernetes.context,
                    "ca-file": str(self.kubernetes.ca_file) if self.kubernetes.ca_file else None,
                    "insecure-skip-tls-verify": self.kubernetes.insecure_skip_tls_verify,
                    "image": self.kubernetes.image,
                    "shell": list(self.kubernetes.shell),
                    "pod-base-port": self.kubernetes.pod_base_port,
                    "pod-sigkill-delay-secs": self.kubernetes.pod_sigkill_delay_secs,
                    "offer-wait-secs": self.kubernetes.offer_wait_secs,
                    "request-timeout-ms": self.kubernetes.request_timeout_ms,
                    "retry-attempts": self.kubernetes.retry_attempts,
                    "retry-backoff-ms": self.kubernetes.retry_backoff_ms,
                    "watch-timeout-secs": self.kubernetes.watch_timeout_secs,
                },
            },
            "autoscaler": {
                "interval-ms": self.scaling.interval_ms,
                "kill-interval-ms": self.scaling.kill_interval_ms,
                "burst": {
                    "enabled": self.scaling.burst_enabled,
                    "threshold": self.scaling.burst_threshold,
                    "stable-window-secs": self.scaling.burst_stable_window_secs,
                    "drain-secs": self.scaling.burst_drain_secs,
                },
                "publish-interval-ms": self.scaling.publish_interval_ms,
                "router-ttl-ms": self.scaling.router_ttl_ms,
            },
            "lifecycle": {
                "reap-interval-secs": self.lifecycle.reap_interval_secs,
                "broken-service-timeout-secs": self.lifecycle.broken_service_timeout_secs,
                "minute-secs": self.lifecycle.minute_secs,
            },
            "health-check-config": {
                "startup-interval-ms": self.health.startup_interval_ms,
                "timeout-ms": self.health.timeout_ms,
            },
            "authenticator": {
                "kind": list(self.auth.kinds),
                "jwt": {
                    "jwks-url": redact_url(self.auth.jwt.jwks_url),
                    "jwks-file": str(self.auth.jwt.jwks_file) if self.auth.jwt.jwks_file else None,
                    "issuer": self.auth.jwt.issuer,
                    "audience": self.auth.jwt.audience,
                    "algorithms": list(self.auth.jwt.algorithms),
                    "user-claim": self.auth.jwt.user_claim,
                    "leeway-secs": self.auth.jwt.leeway_secs,
                    "jwks-refresh-secs": self.auth.jwt.jwks_refresh_secs,
                },
                "kerberos": {
                    "keytab": str(self.auth.kerberos.keytab) if self.auth.kerberos.keytab else None,
                    "service-principal": self.auth.kerberos.service_principal,
                },
                "trusted-header": {
                    "header": self.auth.trusted_header.header,
                    "trusted-cidrs": list(self.auth.trusted_header.trusted_cidrs),
                },
            },
            "auth-cookie": {
                "max-age-secs": self.auth.cookie_max_age_secs,
                "same-site": self.auth.cookie_same_site,
            },
            "insecure": self.insecure,
            "trusted-proxies": list(self.trusted_proxies),
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


def _scaling(r: _Reader, base: ScalingConfig) -> ScalingConfig:
    burst = _Reader(r.mapping("burst"), "autoscaler.burst.", r.problems)
    config = ScalingConfig(
        interval_ms=r.integer("interval-ms", base.interval_ms, 50, 60_000),
        kill_interval_ms=r.integer("kill-interval-ms", base.kill_interval_ms, 0, 600_000),
        burst_enabled=burst.boolean("enabled", base.burst_enabled),
        burst_threshold=burst.number("threshold", base.burst_threshold, 1.0, 100.0),
        burst_stable_window_secs=burst.number("stable-window-secs", base.burst_stable_window_secs, 0, 86400),
        burst_drain_secs=burst.number("drain-secs", base.burst_drain_secs, 0.1, 3600),
        publish_interval_ms=r.integer("publish-interval-ms", base.publish_interval_ms, 50, 250),
        router_ttl_ms=r.integer("router-ttl-ms", base.router_ttl_ms, 500, 600_000),
    )
    burst.check_unknown()
    r.check_unknown()
    return config


def _marathon(r: _Reader, base: MarathonSchedulerConfig, kind: str) -> MarathonSchedulerConfig:
    url = r.string("url", base.url).rstrip("/")
    parts = urlsplit(url)
    if url and (parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment):
        r.problems.append(
            f"scheduler.marathon.url is {redact_url(url)!r} but must be an http:// or https:// URL with a host, "
            "e.g. http://marathon.example.com:8080."
        )
    elif not url and kind == "marathon":
        r.problems.append("scheduler.marathon.url is not set but is required when scheduler.kind is marathon.")
    prefix = r.string("app-id-prefix", base.app_id_prefix)
    normalised = "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"
    if not MARATHON_APP_ID_PREFIX.fullmatch(normalised):
        r.problems.append(
            f"scheduler.marathon.app-id-prefix is {prefix!r} but must be '/' or a Marathon group path of segments "
            "made of lowercase letters, digits and '-' (not starting or ending with '-'), e.g. /waiter/."
        )
    username = r.string("username", base.username or "") or None
    password = r.string("password", base.password or "") or None
    if (username is None) != (password is None):
        r.problems.append("scheduler.marathon.username and scheduler.marathon.password must be set together.")
    config = MarathonSchedulerConfig(
        url=url,
        app_id_prefix=normalised,
        username=username,
        password=password,
        sync_interval_ms=r.integer("sync-interval-ms", base.sync_interval_ms, 10, 600_000),
        request_timeout_ms=r.integer("request-timeout-ms", base.request_timeout_ms, 10, 600_000),
        retry_attempts=r.integer("retry-attempts", base.retry_attempts, 1, 100),
        retry_backoff_ms=r.integer("retry-backoff-ms", base.retry_backoff_ms, 1, 60_000),
        agent_work_dir=r.string("agent-work-dir", base.agent_work_dir),
    )
    r.check_unknown()
    return config


def _mesos(r: _Reader, base: MesosSchedulerConfig, kind: str) -> MesosSchedulerConfig:
    master = r.string("master", base.master)
    match = MESOS_MASTER.fullmatch(master)
    if master and (match is None or not 1 <= int(match.group(1)) <= 65535):
        r.problems.append(
            f"scheduler.mesos.master is {master!r} but must be HOST:PORT of a Mesos master (no scheme, port 1-65535), "
            "e.g. mesos.example.com:5050."
        )
    elif not master and kind == "mesos":
        r.problems.append("scheduler.mesos.master is not set but is required when scheduler.kind is mesos.")
    role = r.string("role", base.role)
    if role != "*" and (role in (".", "..") or role.startswith("-") or any(c.isspace() for c in role)):
        r.problems.append(
            f"scheduler.mesos.role is {role!r} but must be '*' or a Mesos role name: no whitespace, "
            "not '.' or '..', not starting with '-'."
        )
    config = MesosSchedulerConfig(
        master=master,
        framework_name=r.string("framework-name", base.framework_name),
        role=role,
        user=r.string("user", base.user),
        failover_timeout_secs=r.number("failover-timeout-secs", base.failover_timeout_secs, 0, 365 * 86400),
        offer_wait_secs=r.number("offer-wait-secs", base.offer_wait_secs, 0.1, 86400),
        request_timeout_ms=r.integer("request-timeout-ms", base.request_timeout_ms, 10, 600_000),
        agent_work_dir=r.string("agent-work-dir", base.agent_work_dir),
    )
    r.check_unknown()
    return config


def _kubernetes(r: _Reader, base: KubernetesSchedulerConfig, kind: str) -> KubernetesSchedulerConfig:
    url = r.string("api-url", base.api_url).rstrip("/")
    parts = urlsplit(url)
    if url and (parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment):
        r.problems.append(
            f"scheduler.kubernetes.api-url is {redact_url(url)!r} but must be an http:// or https:// URL with a "
            "host, e.g. https://kubernetes.example.com:6443."
        )

    def path(key: str, default: Path | None) -> Path | None:
        value = r.string(key, str(default) if default else "")
        return Path(value) if value else None

    kubeconfig = path("kubeconfig", base.kubeconfig)
    in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    if kind == "kubernetes" and not url and kubeconfig is None and not in_cluster:
        r.problems.append(
            "scheduler.kubernetes.api-url is not set but is required when scheduler.kind is kubernetes outside a "
            "pod: set it (or --kubernetes-url), or scheduler.kubernetes.kubeconfig."
        )
    namespace = r.string("namespace", base.namespace)
    if namespace and (len(namespace) > 63 or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", namespace)):
        r.problems.append(
            f"scheduler.kubernetes.namespace is {namespace!r} but must be a Kubernetes namespace name: at most 63 "
            "lowercase letters, digits and '-', starting and ending with a letter or digit."
        )
    shell = base.shell
    raw_shell = r.get("shell")
    if raw_shell is not None:
        if isinstance(raw_shell, list) and raw_shell and all(isinstance(a, str) and a for a in raw_shell):
            shell = tuple(raw_shell)
        else:
            r.problems.append(
                f"scheduler.kubernetes.shell is {raw_shell!r} but must be a non-empty list of strings, the image's "
                'shell and its arguments before the command, e.g. ["/bin/sh", "-c"].'
            )
    config = KubernetesSchedulerConfig(
        api_url=url,
        namespace=namespace,
        token_file=path("token-file", base.token_file),
        kubeconfig=kubeconfig,
        context=r.string("context", base.context),
        ca_file=path("ca-file", base.ca_file),
        insecure_skip_tls_verify=r.boolean("insecure-skip-tls-verify", base.insecure_skip_tls_verify),
        image=r.string("image", base.image),
        shell=shell,
        pod_base_port=r.integer("pod-base-port", base.pod_base_port, 1024, 64535),
        pod_sigkill_delay_secs=r.integer("pod-sigkill-delay-secs", base.pod_sigkill_delay_secs, 0, 3600),
        offer_wait_secs=r.number("offer-wait-secs", base.offer_wait_secs, 0.1, 86400),
        request_timeout_ms=r.integer("request-timeout-ms", base.request_timeout_ms, 10, 600_000),
        retry_attempts=r.integer("retry-attempts", base.retry_attempts, 1, 100),
        retry_backoff_ms=r.integer("retry-backoff-ms", base.retry_backoff_ms, 1, 60_000),
        watch_timeout_secs=r.integer("watch-timeout-secs", base.watch_timeout_secs, 1, 3600),
    )
    r.check_unknown()
    return config


def _merge(into: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    """Overrides win key by key; nested mappings merge, so ``--marathon-url`` keeps the file's other marathon keys."""
    for key, value in overrides.items():
        if value is None:
            continue
        current = into.get(key)
        if isinstance(value, Mapping) and isinstance(current, dict):
            _merge(current, value)
        elif isinstance(value, Mapping):
            into[key] = {}
            _merge(into[key], value)
        else:
            into[key] = value


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


def _string_list(r: _Reader, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = r.get(key)
    if raw is None:
        return default
    if isinstance(raw, list) and all(isinstance(v, str) and v for v in raw):
        return tuple(raw)
    r.problems.append(f"{r._key(key)} is {raw!r} but must be a list of non-empty strings.")
    return default


def _cidrs(r: _Reader, key: str, default: tuple[str, ...], problems: list[str]) -> tuple[str, ...]:
    values = _string_list(r, key, default)
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            problems.append(
                f"{r._key(key)} holds {value!r}, which is not an IP network; use CIDR notation, e.g. 10.0.0.0/8."
            )
    return values


def _auth(top: _Reader, base: AuthConfig, problems: list[str]) -> AuthConfig:
    r = _Reader(top.mapping("authenticator"), "authenticator.", problems)
    raw_kind = r.get("kind")
    kinds = base.kinds
    if isinstance(raw_kind, str):
        raw_kind = [raw_kind]
    if raw_kind is not None:
        if (
            isinstance(raw_kind, list)
            and raw_kind
            and all(k in AUTHENTICATOR_KINDS for k in raw_kind)
            and len(set(raw_kind)) == len(raw_kind)
        ):
            kinds = tuple(raw_kind)
        else:
            problems.append(
                f"authenticator.kind is {raw_kind!r} but must be one of {', '.join(AUTHENTICATOR_KINDS)}, "
                "or a list of them without repeats (tried in order)."
            )
    one = _Reader(r.mapping("one-user"), "authenticator.one-user.", problems)
    one_user = one.string("user", base.one_user)
    one.check_unknown()
    jwt = _jwt(_Reader(r.mapping("jwt"), "authenticator.jwt.", problems), base.jwt, "jwt" in kinds)
    krb = _Reader(r.mapping("kerberos"), "authenticator.kerberos.", problems)
    keytab = krb.string("keytab", "")
    kerberos = KerberosConfig(
        keytab=Path(keytab) if keytab else base.kerberos.keytab,
        service_principal=krb.string("service-principal", base.kerberos.service_principal),
    )
    krb.check_unknown()
    th = _Reader(r.mapping("trusted-header"), "authenticator.trusted-header.", problems)
    header = th.string("header", base.trusted_header.header).lower()
    cidrs = _cidrs(th, "trusted-cidrs", base.trusted_header.trusted_cidrs, problems)
    if "trusted-header" in kinds and not cidrs:
        problems.append(
            "authenticator.trusted-header.trusted-cidrs is empty but is required with the trusted-header "
            "authenticator: list the networks of the authenticating proxies, e.g. [10.0.0.0/8]."
        )
    th.check_unknown()
    r.check_unknown()
    cookie = _Reader(top.mapping("auth-cookie"), "auth-cookie.", problems)
    secret = cookie.string("secret", base.cookie_secret)
    if secret and len(secret) < 16:
        problems.append("auth-cookie.secret is too short: use at least 16 characters (32 random bytes is best).")
    same_site = cookie.string("same-site", base.cookie_same_site)
    if same_site not in SAME_SITE:
        problems.append(f"auth-cookie.same-site is {same_site!r} but must be one of: {', '.join(SAME_SITE)}.")
    max_age = cookie.integer("max-age-secs", base.cookie_max_age_secs, 1, 30 * 86400)
    cookie.check_unknown()
    return AuthConfig(
        kinds=kinds,
        one_user=one_user,
        jwt=jwt,
        kerberos=kerberos,
        trusted_header=TrustedHeaderConfig(header=header, trusted_cidrs=cidrs),
        cookie_secret=secret,
        cookie_max_age_secs=max_age,
        cookie_same_site=same_site,
    )


def _jwt(r: _Reader, base: JwtConfig, used: bool) -> JwtConfig:
    url = r.string("jwks-url", base.jwks_url)
    file = r.string("jwks-file", "")
    jwks_file = Path(file) if file else base.jwks_file
    if url and urlsplit(url).scheme not in ("http", "https"):
        r.problems.append(f"authenticator.jwt.jwks-url is {redact_url(url)!r} but must be an http:// or https:// URL.")
    if used and bool(url) == bool(jwks_file):
        r.problems.append(
            "authenticator.jwt needs exactly one of jwks-url (the issuer's JWKS endpoint) and jwks-file; "
            f"got {'both' if url else 'neither'}."
        )
    issuer = r.string("issuer", base.issuer)
    audience = r.string("audience", base.audience)
    if used and not issuer:
        r.problems.append("authenticator.jwt.issuer is not set but is required: the iss every token must carry.")
    if used and not audience:
        r.problems.append("authenticator.jwt.audience is not set but is required: the aud every token must carry.")
    algorithms = _string_list(r, "algorithms", base.algorithms)
    bad = [a for a in algorithms if a not in JWT_ALGORITHMS]
    if bad or not algorithms:
        r.problems.append(
            f"authenticator.jwt.algorithms is {list(algorithms)!r} but must be a non-empty list of: "
            f"{', '.join(JWT_ALGORITHMS)} (never none or HS*)."
        )
    config = JwtConfig(
        jwks_url=url,
        jwks_file=jwks_file,
        issuer=issuer,
        audience=audience,
        algorithms=algorithms,
        user_claim=r.string("user-claim", base.user_claim),
        leeway_secs=r.number("leeway-secs", base.leeway_secs, 0, 600),
        jwks_refresh_secs=r.number("jwks-refresh-secs", base.jwks_refresh_secs, 1, 86400),
    )
    r.check_unknown()
    return config


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
