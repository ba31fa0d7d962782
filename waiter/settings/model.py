"""The router's configuration as typed, frozen values, with their defaults and /settings view."""

from __future__ import annotations

import getpass
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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
    work_dir: Path = Path("scheduler")  # the framework id is kept here (mesos-framework-id) when there is no Redis


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
    handoff: bool = True  # kind "agent": pass connections to the sibling router holding their service's slots
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
                "agent": {"url": self.agent_url, "handoff": self.handoff},
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
                    "work-dir": str(self.mesos.work_dir),
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
