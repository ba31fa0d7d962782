"""Pure pieces of identity and access, with injected time: the auth cookie, CORS rules, the permission sentences."""

from __future__ import annotations

import pytest

from waiter import cors
from waiter.auth import Caller, Permissions
from waiter.auth.cookie import AUTH_COOKIE, CookieJar, strip_auth_cookie

ALICE = Caller("alice", "alice@EXAMPLE.COM", "kerberos")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def jar(clock: Clock, secret: bytes = b"s" * 32, max_age: int = 3600) -> CookieJar:
    return CookieJar(secret, max_age_secs=max_age, same_site="Lax", clock=clock)


def test_cookie_round_trip_and_expiry() -> None:
    clock = Clock(1_000_000.0)
    cookies = jar(clock)
    value = cookies.seal(ALICE, int(clock.now))
    assert cookies.open(value) == ALICE
    assert cookies.from_header(f"a=b; {AUTH_COOKIE}={value}; c=d") == ALICE
    clock.now += 3599
    assert cookies.open(value) == ALICE
    clock.now += 1
    assert cookies.open(value) is None  # expired
    clock.now = 1_000_000.0 - 3600  # created an hour in the future: another router's clock is not that far off
    assert cookies.open(value) is None


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda v: v[:-2] + ("AA" if v[-2:] != "AA" else "BB"), id="tampered"),
        pytest.param(lambda v: v[:10], id="truncated"),
        pytest.param(lambda v: "garbage!*", id="garbage"),
        pytest.param(lambda v: "", id="empty"),
    ],
)
def test_bad_cookies_are_ignored(mangle) -> None:  # type: ignore[no-untyped-def]
    clock = Clock(1_000_000.0)
    cookies = jar(clock)
    assert cookies.open(mangle(cookies.seal(ALICE, int(clock.now)))) is None


def test_cookie_of_another_secret_is_ignored() -> None:
    clock = Clock(1_000_000.0)
    value = jar(clock, b"one-secret-of-the-cluster").seal(ALICE, int(clock.now))
    assert jar(clock, b"another-secret-entirely").open(value) is None


def test_issued_cookies_carry_their_attributes() -> None:
    clock = Clock(1_000_000.0)
    issued = jar(clock, max_age=60).issue(ALICE)
    auth, expires = issued.set_cookies
    assert auth.startswith(f"{AUTH_COOKIE}=") and auth.endswith("Max-Age=60; Path=/; SameSite=Lax; HttpOnly")
    assert expires == "x-auth-expires-at=1000060; Max-Age=60; Path=/; SameSite=Lax"
    assert issued.expires_at == 1_000_060


@pytest.mark.parametrize(
    ("header", "kept"),
    [
        (b"x-waiter-auth=abc", b""),
        (b"a=1; x-waiter-auth=abc; b=2", b"a=1; b=2"),
        (b"x-waiter-auth-not=1; x-auth-expires-at=5", b"x-waiter-auth-not=1"),
    ],
)
def test_router_cookies_are_not_forwarded(header: bytes, kept: bytes) -> None:
    assert strip_auth_cookie(header) == kept


RULES = {
    "cors-rules": [
        {"origin-regex": r"https://.*\.example\.com", "methods": ["GET", "POST"]},
        {"origin-regex": "http://localhost:3000", "target-path-regex": "/api/.*"},
        {"origin-regex": "(broken"},
    ]
}


@pytest.mark.parametrize(
    ("origin", "path", "method", "allowed"),
    [
        ("https://a.example.com", "/x", "GET", True),
        ("https://a.example.com", "/x", "DELETE", False),
        ("https://a.example.com.evil.org", "/x", "GET", False),  # full match only
        ("http://localhost:3000", "/api/v1", "DELETE", True),
        ("http://localhost:3000", "/other", "GET", False),
        ("", "/x", "GET", False),
        ("(broken", "/x", "GET", False),  # an invalid regex matches nothing
    ],
)
def test_cors_rules(origin: str, path: str, method: str, allowed: bool) -> None:
    assert cors.allowed(RULES, origin, path, method) is allowed
    assert bool(cors.response_headers(RULES, method, path, origin)) is allowed


def test_no_rules_no_cors() -> None:
    assert not cors.allowed({}, "https://a.example.com", "/", "GET")
    assert cors.preflight({}, "OPTIONS", "/", {"origin": "https://a.example.com"}) is None


@pytest.mark.parametrize(
    ("meta", "host", "secure", "location"),
    [
        ({"https-redirect": True}, "svc.example.com:9091", False, "https://svc.example.com/p?q=1"),
        ({"https-redirect": True}, "[::1]", False, "https://[::1]/p?q=1"),
        ({"https-redirect": True}, "svc", True, None),
        ({"https-redirect": False}, "svc", False, None),
        ({}, "svc", False, None),
    ],
)
def test_https_redirect(meta: dict[str, object], host: str, secure: bool, location: str | None) -> None:
    answer = cors.https_redirect(meta, "GET", host, "/p?q=1", secure)
    assert (dict(answer)["location"] if answer else None) == location


@pytest.mark.parametrize(
    ("user", "run_as", "owners", "problem"),
    [
        ("alice", "alice", [], None),
        ("carol", "alice", ["carol"], None),
        ("root", "alice", [], None),
        (
            "bob",
            "alice",
            ["carol"],
            "User 'bob' cannot delete service s1: only its run-as-user 'alice', the owner "
            "of one of its tokens ('carol') or a token admin may.",
        ),
        ("bob", "alice", [], "User 'bob' cannot delete service s1: only its run-as-user 'alice' or a token admin may."),
    ],
)
def test_service_permission_sentences(user: str, run_as: str, owners: list[str], problem: str | None) -> None:
    assert Permissions(frozenset({"root"})).service_problem(user, "s1", run_as, owners, "delete") == problem


def test_permitted_user() -> None:
    perms = Permissions(frozenset({"root"}))
    assert perms.permitted_problem("bob", "s1", "*") is None
    assert perms.permitted_problem("bob", "s1", "bob") is None
    assert "isn't allowed to invoke this service" in (perms.permitted_problem("root", "s1", "alice") or "")
