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


class FakeRequest:
    def __init__(self, authorization: str) -> None:
        self.headers = {"authorization": authorization}
        self.peer = "127.0.0.1"


async def test_jwks_file_is_reread_on_its_period_and_on_unknown_kids_at_most_once_a_second(tmp_path) -> None:
    import json

    from tests.identity import AUDIENCE, ISSUER, Issuer
    from waiter.auth.jwt import JwtAuthenticator
    from waiter.settings import JwtConfig

    issuer = Issuer()
    issuer.add("k1")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    clock = Clock(100.0)
    config = JwtConfig(jwks_file=jwks, issuer=ISSUER, audience=AUDIENCE, jwks_refresh_secs=600)
    auth = JwtAuthenticator(config, clock=clock)
    reads = 0
    fetch = auth._fetch

    async def counted() -> dict[str, object]:
        nonlocal reads
        reads += 1
        return await fetch()

    auth._fetch = counted  # type: ignore[method-assign]
    await auth.start()
    assert reads == 1
    assert (await auth.authenticate(FakeRequest(f"Bearer {issuer.token('alice')}"))).caller.user == "alice"

    issuer.add("k2")  # a rotation: the new key is in the file, the router has not seen it
    jwks.write_text(json.dumps(issuer.jwks()))
    clock.now += 0.5
    assert (await auth.authenticate(FakeRequest(f"Bearer {issuer.token('bob', 'k2')}"))).caller.user == "bob"
    assert reads == 2  # an unknown kid made it re-read the set
    unknown = issuer.add("k3", publish=False)
    for _ in range(3):  # unknown kids within a second of the last such read: no read at all
        with pytest.raises(Exception, match="key id 'k3'"):
            await auth.authenticate(FakeRequest(f"Bearer {issuer.token('eve', unknown.kid)}"))
    assert reads == 2
    clock.now += 1.0
    for _ in range(3):  # a second later: one read for all of them
        with pytest.raises(Exception, match="key id 'k3'"):
            await auth.authenticate(FakeRequest(f"Bearer {issuer.token('eve', unknown.kid)}"))
    assert reads == 3
    assert (await auth.authenticate(FakeRequest(f"Bearer {issuer.token('alice')}"))).caller.user == "alice"
    assert reads == 3  # known kids never cause a read
    issuer.published.remove("k1")
    jwks.write_text(json.dumps(issuer.jwks()))
    clock.now += 600
    with pytest.raises(Exception, match="key id 'k1'"):
        await auth.authenticate(FakeRequest(f"Bearer {issuer.token('alice', 'k1')}"))  # the period re-read it
    assert reads == 4
    jwks.write_text("not json")
    clock.now += 600
    assert (await auth.authenticate(FakeRequest(f"Bearer {issuer.token('bob', 'k2')}"))).caller.user == "bob"
    assert auth.last_error is not None and "cannot load the JWKS" in auth.last_error  # old keys kept
    await auth.close()
