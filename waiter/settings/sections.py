"""The sections of the configuration: autoscaler, schedulers (Marathon, Mesos, Kubernetes) and authentication."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TypedDict
from urllib.parse import urlsplit

from waiter.settings.model import (
    AUTHENTICATOR_KINDS,
    JWT_ALGORITHMS,
    MARATHON_APP_ID_PREFIX,
    MESOS_MASTER,
    SAME_SITE,
    AuthConfig,
    JwtConfig,
    KerberosConfig,
    KubernetesSchedulerConfig,
    MarathonSchedulerConfig,
    MesosSchedulerConfig,
    ScalingConfig,
    TrustedHeaderConfig,
    redact_url,
)
from waiter.settings.reader import _cidrs, _Reader, _string_list


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


class _Calls(TypedDict):
    """How a scheduler calls its cluster's HTTP API (Marathon, Kubernetes): the same keys and ranges for both."""

    request_timeout_ms: int
    retry_attempts: int
    retry_backoff_ms: int


def _calls(r: _Reader, base: MarathonSchedulerConfig | KubernetesSchedulerConfig) -> _Calls:
    return _Calls(
        request_timeout_ms=r.integer("request-timeout-ms", base.request_timeout_ms, 10, 600_000),
        retry_attempts=r.integer("retry-attempts", base.retry_attempts, 1, 100),
        retry_backoff_ms=r.integer("retry-backoff-ms", base.retry_backoff_ms, 1, 60_000),
    )


def _http_url(r: _Reader, key: str, default: str, example: str) -> str:
    """A cluster API's base URL (no trailing '/'); a problem unless it is http(s) with a host, or empty."""
    url = r.string(key, default).rstrip("/")
    parts = urlsplit(url)
    if url and (parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment):
        r.problems.append(
            f"{r.prefix}{key} is {redact_url(url)!r} but must be an http:// or https:// URL with a host, "
            f"e.g. {example}."
        )
    return url


def _marathon(r: _Reader, base: MarathonSchedulerConfig, kind: str) -> MarathonSchedulerConfig:
    url = _http_url(r, "url", base.url, "http://marathon.example.com:8080")
    if not url and kind == "marathon":
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
        agent_work_dir=r.string("agent-work-dir", base.agent_work_dir),
        **_calls(r, base),
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
        work_dir=Path(r.string("work-dir", str(base.work_dir))),
    )
    r.check_unknown()
    return config


def _kubernetes(r: _Reader, base: KubernetesSchedulerConfig, kind: str) -> KubernetesSchedulerConfig:
    url = _http_url(r, "api-url", base.api_url, "https://kubernetes.example.com:6443")

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
        watch_timeout_secs=r.integer("watch-timeout-secs", base.watch_timeout_secs, 1, 3600),
        **_calls(r, base),
    )
    r.check_unknown()
    return config



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
