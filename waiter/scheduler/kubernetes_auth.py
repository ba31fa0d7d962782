"""Where the Kubernetes API server is and how to authenticate to it, from the router's config.

In order: explicit keys (``api-url``, ``token-file``, ``ca-file``) win; then a kubeconfig file (its current
context, or ``context``); then, inside a pod, the in-cluster defaults every client uses: the address in
``KUBERNETES_SERVICE_HOST``/``_PORT`` and the service account's token, CA and namespace under
``/var/run/secrets/kubernetes.io/serviceaccount``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from waiter.scheduler.base import SchedulerError
from waiter.scheduler.kubernetes_client import Credentials
from waiter.settings import KubernetesSchedulerConfig

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def _named(entries: Any, name: str, key: str) -> Mapping[str, Any]:
    for entry in entries or ():
        if isinstance(entry, Mapping) and entry.get("name") == name and isinstance(entry.get(key), Mapping):
            return entry[key]  # type: ignore[no-any-return]
    return {}


def from_kubeconfig(path: Path, context_name: str) -> tuple[Credentials, str]:
    """The credentials and namespace of a kubeconfig context (relative paths are relative to the file)."""
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise SchedulerError(f"scheduler.kubernetes.kubeconfig {path} cannot be read: {error}") from error
    if not isinstance(config, Mapping):
        raise SchedulerError(f"scheduler.kubernetes.kubeconfig {path} is not a kubeconfig (not a mapping).")
    name = context_name or str(config.get("current-context") or "")
    context = _named(config.get("contexts"), name, "context")
    if not context:
        raise SchedulerError(f"scheduler.kubernetes.kubeconfig {path} has no context {name!r}.")
    cluster = _named(config.get("clusters"), str(context.get("cluster")), "cluster")
    user = _named(config.get("users"), str(context.get("user")), "user")
    if not cluster.get("server"):
        raise SchedulerError(f"scheduler.kubernetes.kubeconfig {path}: context {name!r} names no cluster server.")

    def file(value: Any) -> Path | None:
        return (path.parent / str(value)) if value else None

    ca_data = cluster.get("certificate-authority-data")
    credentials = Credentials(
        api_url=str(cluster["server"]),
        token=str(user["token"]) if user.get("token") else None,
        token_file=file(user.get("tokenFile")),
        ca_file=file(cluster.get("certificate-authority")),
        ca_data=_pem(ca_data) if ca_data else None,
        client_cert_file=file(user.get("client-certificate")),
        client_key_file=file(user.get("client-key")),
        insecure_skip_tls_verify=bool(cluster.get("insecure-skip-tls-verify")),
    )
    return credentials, str(context.get("namespace") or "")


def _pem(data: Any) -> str:
    return base64.b64decode(str(data)).decode()


def connection(
    config: KubernetesSchedulerConfig, environ: Mapping[str, str], secrets: Path = SERVICE_ACCOUNT
) -> tuple[Credentials, str]:
    """The credentials to use and the namespace the ReplicaSets go to."""
    base, namespace = Credentials(api_url=""), ""
    if config.kubeconfig is not None:
        base, namespace = from_kubeconfig(config.kubeconfig, config.context)
    elif not config.api_url and environ.get("KUBERNETES_SERVICE_HOST"):
        host = environ["KUBERNETES_SERVICE_HOST"]
        host = f"[{host}]" if ":" in host else host
        base = Credentials(
            api_url=f"https://{host}:{environ.get('KUBERNETES_SERVICE_PORT', '443')}",
            token_file=secrets / "token",
            ca_file=secrets / "ca.crt",
        )
        try:
            namespace = (secrets / "namespace").read_text().strip()
        except OSError:
            namespace = ""
    url = config.api_url or base.api_url
    if not url:
        raise SchedulerError(
            "scheduler.kubernetes.api-url is not set, no kubeconfig is configured and this is not a pod; "
            "set scheduler.kubernetes.api-url (or --kubernetes-url)."
        )
    credentials = Credentials(
        api_url=url,
        token=None if config.token_file else base.token,
        token_file=config.token_file or base.token_file,
        ca_file=config.ca_file or base.ca_file,
        ca_data=None if config.ca_file else base.ca_data,
        client_cert_file=base.client_cert_file,
        client_key_file=base.client_key_file,
        insecure_skip_tls_verify=config.insecure_skip_tls_verify or base.insecure_skip_tls_verify,
    )
    return credentials, config.namespace or namespace or "default"


__all__ = ["SERVICE_ACCOUNT", "connection", "from_kubeconfig"]
