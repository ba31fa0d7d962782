"""Router configuration: the shipped example, flags over the file, and errors that name key, value and range."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from waiter.settings import SettingsError, load_settings

ROOT = Path(__file__).parent.parent


def test_shipped_example_config_loads() -> None:
    settings = load_settings(ROOT / "config" / "waiter.yaml")
    assert settings.host == "127.0.0.1"
    assert settings.port == 9091
    assert settings.scheduler_kind == "local"
    assert settings.allow_on_the_fly is True
    assert settings.router_id  # generated
    assert settings.public()["cluster-config"]["name"] == "local"


def test_flags_override_the_file(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("port: 1234\ncluster-name: from-file\n")
    settings = load_settings(config, {"port": 4321, "router-id": "r1", "cluster-name": None})
    assert (settings.port, settings.router_id, settings.cluster_name) == (4321, "r1", "from-file")


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        pytest.param("port: 70000", "port is 70000 but must be an integer in the range [0, 65535].", id="port"),
        pytest.param("port: abc", "port is 'abc' but must be an integer", id="port-type"),
        pytest.param("allow-on-the-fly: maybe", "allow-on-the-fly is 'maybe' but must be true or false.", id="bool"),
        pytest.param(
            "scheduler: {kind: k8s}",
            "scheduler.kind is 'k8s' but must be one of: local, marathon, mesos, kubernetes, agent.",
            id="scheduler-kind",
        ),
        pytest.param(
            "scheduler: {local: {port-range: [20, 10]}}", "scheduler.local.port-range is [20, 10]", id="port-range"
        ),
        pytest.param(
            "scheduler: {kind: agent, agent: {url: 'http://127.0.0.1:1'}}",
            "scheduler.agent.url is 'http://127.0.0.1:1' but must be the agent's socket, unix:/path",
            id="agent-over-tcp",
        ),
        pytest.param("colour: blue", "colour is not a known setting; allowed here:", id="unknown-key"),
        pytest.param(
            "health-check: {startup-interval-ms: 1}",
            "health-check.startup-interval-ms is 1 but must be an integer in the range [10, 10000].",
            id="nested-range",
        ),
        pytest.param("service-prefix: My.Prefix", "service-prefix is 'My.Prefix' but may hold only", id="prefix"),
        pytest.param("- a list", "must hold a mapping of settings", id="not-a-mapping"),
        pytest.param("port: [1", "is not valid YAML", id="bad-yaml"),
    ],
)
def test_errors_name_key_value_and_range(tmp_path: Path, yaml_text: str, expected: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text + "\n")
    with pytest.raises(SettingsError) as err:
        load_settings(config)
    assert expected in str(err.value)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("port: -1\ndrain-timeout-secs: -3\n")
    with pytest.raises(SettingsError) as err:
        load_settings(config)
    assert "port is -1" in str(err.value) and "drain-timeout-secs is -3" in str(err.value)


def test_command_line_reports_config_errors_and_exits_non_zero(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("port: 70000\n")
    proc = subprocess.run(
        [sys.executable, "-m", "waiter", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    assert "port is 70000 but must be an integer in the range [0, 65535]." in proc.stderr


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="Cannot read the config file"):
        load_settings(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        pytest.param(
            "authenticator: {kind: ldap}",
            "authenticator.kind is ['ldap'] but must be one of one-user, jwt, kerberos, trusted-header",
            id="kind",
        ),
        pytest.param(
            "authenticator: {kind: jwt, jwt: {issuer: i, audience: a}}",
            "authenticator.jwt needs exactly one of jwks-url (the issuer's JWKS endpoint) and jwks-file; got neither.",
            id="jwt-no-keys",
        ),
        pytest.param(
            "authenticator: {kind: jwt, jwt: {jwks-url: 'http://x/jwks', audience: a}}",
            "authenticator.jwt.issuer is not set but is required",
            id="jwt-issuer",
        ),
        pytest.param(
            "authenticator: {kind: jwt, jwt: {jwks-url: 'http://x/j', issuer: i, audience: a, algorithms: [HS256]}}",
            "authenticator.jwt.algorithms is ['HS256'] but must be a non-empty list of: RS256",
            id="jwt-hmac",
        ),
        pytest.param(
            "authenticator: {kind: trusted-header}",
            "authenticator.trusted-header.trusted-cidrs is empty but is required",
            id="trusted-header-cidrs",
        ),
        pytest.param(
            "authenticator: {trusted-header: {trusted-cidrs: [10.0.0.300/8]}}",
            "authenticator.trusted-header.trusted-cidrs holds '10.0.0.300/8', which is not an IP network",
            id="cidr",
        ),
        pytest.param("auth-cookie: {same-site: Loose}", "auth-cookie.same-site is 'Loose' but must be one of", id="ss"),
        pytest.param("auth-cookie: {secret: short}", "auth-cookie.secret is too short", id="secret"),
    ],
)
def test_authenticator_errors_name_the_key(tmp_path: Path, yaml_text: str, expected: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text + "\n")
    with pytest.raises(SettingsError) as err:
        load_settings(config)
    assert expected in str(err.value)


@pytest.mark.parametrize(
    ("yaml_text", "refused"),
    [
        pytest.param("host: 0.0.0.0", True, id="open-default"),
        pytest.param(
            "host: 10.1.2.3\nauthenticator: {kind: [jwt, one-user], jwt: {jwks-url: 'http://j/', "
            "issuer: i, audience: a}}",
            True,
            id="one-user-in-the-list",
        ),
        pytest.param("host: 0.0.0.0\ninsecure: true", False, id="insecure"),
        pytest.param("host: 0.0.0.0\nallow-on-the-fly: false", False, id="no-on-the-fly"),
        pytest.param(
            "host: '::'\nauthenticator: {kind: trusted-header, trusted-header: {trusted-cidrs: [10.0.0.0/8]}}",
            False,
            id="real-auth",
        ),
        pytest.param("host: localhost", False, id="localhost"),
        pytest.param("host: '::1'", False, id="ipv6-loopback"),
    ],
)
def test_non_loopback_one_user_on_the_fly_refuses_to_start(tmp_path: Path, yaml_text: str, refused: bool) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text + "\n")
    if not refused:
        load_settings(config)
        return
    with pytest.raises(SettingsError) as err:
        load_settings(config)
    assert "not a loopback address" in str(err.value)
    assert "set allow-on-the-fly: false" in str(err.value) and "insecure: true" in str(err.value)


def test_insecure_flag_lets_a_non_loopback_one_user_router_start(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "waiter", "--host", "0.0.0.0", "--port", "70000"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "not a loopback address" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "waiter", "--host", "0.0.0.0", "--port", "70000", "--insecure"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "not a loopback address" not in proc.stderr and "port is 70000" in proc.stderr


def test_settings_show_the_authenticator_but_never_the_cookie_secret(tmp_path: Path) -> None:
    import json

    config = tmp_path / "c.yaml"
    secret = "s3cret-shared-by-all-routers-0123"
    config.write_text(
        "authenticator: {kind: [jwt, one-user], jwt: {jwks-url: 'https://u:pw@issuer/jwks', issuer: i, audience: a}}\n"
        f"auth-cookie: {{secret: {secret}, max-age-secs: 600, same-site: Strict}}\n"
    )
    shown = load_settings(config).public()
    assert shown["authenticator"]["kind"] == ["jwt", "one-user"]
    assert shown["authenticator"]["jwt"]["jwks-url"] == "https://u:***@issuer/jwks"
    assert shown["auth-cookie"] == {"max-age-secs": 600, "same-site": "Strict"}
    assert secret not in json.dumps(shown) and ":pw@" not in json.dumps(shown)


def test_no_implicit_token_admin_with_real_authentication(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("authenticator: {kind: trusted-header, trusted-header: {trusted-cidrs: [10.0.0.0/8]}}\n")
    assert load_settings(config).token_admins == ()
    config.write_text("run-as-user: zed\n")
    assert load_settings(config).token_admins == ("zed",)  # one-user: the one user administers its tokens
    config.write_text("authenticator: {kind: jwt, jwt: {jwks-url: 'http://j/', issuer: i, audience: a}}\n"
                      "token-admins: [alice]\n")
    assert load_settings(config).token_admins == ("alice",)
