"""Router configuration: defaults -> YAML file -> command-line flags -> validation.

Every error names the key, the value and what is allowed. Loading is pure (no logging, no exiting); ``main`` turns a
``SettingsError`` into a message and a non-zero exit. ``model`` holds the typed values, ``reader`` reads one
mapping, ``sections`` the nested sections, ``parse`` puts them together.
"""

from waiter.settings.model import (
    AUTHENTICATOR_KINDS,
    JWT_ALGORITHMS,
    REFUSED,
    SAME_SITE,
    SCHEDULER_KINDS,
    AuthConfig,
    HealthConfig,
    JwtConfig,
    KerberosConfig,
    KubernetesSchedulerConfig,
    LifecycleConfig,
    LocalSchedulerConfig,
    MarathonSchedulerConfig,
    MesosSchedulerConfig,
    ScalingConfig,
    Settings,
    SettingsError,
    TrustedHeaderConfig,
    is_loopback,
    redact_url,
)
from waiter.settings.parse import load_settings

__all__ = [
    "AUTHENTICATOR_KINDS",
    "JWT_ALGORITHMS",
    "REFUSED",
    "SAME_SITE",
    "SCHEDULER_KINDS",
    "AuthConfig",
    "HealthConfig",
    "JwtConfig",
    "KerberosConfig",
    "KubernetesSchedulerConfig",
    "LifecycleConfig",
    "LocalSchedulerConfig",
    "MarathonSchedulerConfig",
    "MesosSchedulerConfig",
    "ScalingConfig",
    "Settings",
    "SettingsError",
    "TrustedHeaderConfig",
    "is_loopback",
    "load_settings",
    "redact_url",
]
