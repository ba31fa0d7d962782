"""Identity and access end to end: JWTs from a real JWKS endpoint, the x-waiter-auth cookie, every endpoint's policy,
what proxied requests may run, what reaches the backend, the internal port, CORS and https-redirect."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import FAKE, RunningRouter, backend_token, on_the_fly_headers
from tests.identity import AUDIENCE, ISSUER, Issuer
from waiter.api.routes import admin_routes
from waiter.auth import Access, policy_of
from waiter.auth.cookie import AUTH_COOKIE, EXPIRES_COOKIE

# Instances only need to answer HTTP here (tests.fakes); real processes: test_router_e2e.py and the scheduler tests.
pytestmark = pytest.mark.schedulers(FAKE)

ADMIN = "root"


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    issuer = Issuer()
    issuer.add("k1")
    async with issuer.serving():
        yield issuer


async def jwt_router(make_router: Any, issuer: Issuer, tokens: list[dict[str, Any]] | None = None, **config: Any):
    config.setdefault("authenticator", issuer.config())
    config.setdefault("token-admins", [ADMIN])
    return await make_router(tokens, **config)


def auth_cookie(resp: aiohttp.ClientResponse) -> str:
    return resp.cookies[AUTH_COOKIE].value


async def call(r: RunningRouter, method: str, path: str, headers: dict[str, str] | None = None, **kw: Any):
    async with r.client.request(method, r.url + path, headers=headers or {}, **kw) as resp:
        return resp.status, await resp.text(), resp


async def register(r: RunningRouter, issuer: Issuer, user: str) -> str:
    """A service run as ``user`` (its description stored, nothing started): its id."""
    status, body, _ = await call(r, "GET", "/service-id", {**issuer.bearer(user), **on_the_fly_headers()})
    assert status == 200, body
    return body


# -- the "done when" of the feature --------------------------------------------------------------------------------


async def test_jwt_bearer_then_cookie_then_forbidden_kill(make_router, issuer: Issuer) -> None:
    r = await jwt_router(make_router, issuer)
    status, body, resp = await call(r, "GET", "/waiter-auth")
    assert status == 401 and "Authentication required" in body
    assert resp.headers["www-authenticate"].startswith("Bearer")

    status, body, resp = await call(r, "GET", "/waiter-auth", issuer.bearer("alice@example.com"))
    assert status == 200 and body == "alice"
    assert resp.headers["x-waiter-auth-user"] == "alice"
    assert resp.headers["x-waiter-auth-principal"] == "alice@example.com"
    assert resp.headers["x-waiter-auth-method"] == "jwt"
    cookie = resp.cookies[AUTH_COOKIE]
    assert cookie["httponly"] and cookie["path"] == "/" and cookie["max-age"] == "86400"
    assert cookie["samesite"] == "Lax"
    assert int(resp.cookies[EXPIRES_COOKIE].value) > 0

    status, body, resp = await call(r, "GET", "/waiter-auth", {"cookie": f"{AUTH_COOKIE}={cookie.value}"})
    assert status == 200 and body == "alice"
    assert AUTH_COOKIE not in resp.cookies  # a valid cookie is not re-issued (its expiry stays)

    # alice runs a service; the backend learns who calls, and never sees the router's credentials
    alice = {**issuer.bearer("alice@example.com"), **on_the_fly_headers()}
    alice["cookie"] = f"theme=dark; {AUTH_COOKIE}={cookie.value}"
    status, body, resp = await call(r, "GET", "/headers", alice)
    assert status == 200, body
    seen = await resp.json()
    assert seen["x-waiter-auth-principal"] == "alice"
    assert seen["x-waiter-authenticated-principal"] == "alice@example.com"
    assert "authorization" not in seen
    assert seen["cookie"] == "theme=dark"
    service_id = await register(r, issuer, "alice@example.com")
    assert r.router.registry.get(service_id) is not None
    detail = await r.get_json(f"/apps/{service_id}", headers=issuer.bearer("bob"))
    instance_id = detail["instances"]["active-instances"][0]["id"]
    status, body, _ = await call(r, "POST", f"/apps/{service_id}/instance/{instance_id}/kill", issuer.bearer("bob"))
    assert status == 403
    assert "User 'bob' cannot" in body and "'alice'" in body
    status, body, _ = await call(r, "DELETE", f"/apps/{service_id}", issuer.bearer("bob"))
    assert status == 403 and "only its run-as-user 'alice'" in body
    assert r.router.registry.get(service_id) is not None
    status, body, _ = await call(r, "DELETE", f"/apps/{service_id}", issuer.bearer("alice"))
    assert status == 200, body
    # a service this router does not know: only an admin may act on it (it may live on other routers)
    status, body, _ = await call(r, "DELETE", f"/apps/{service_id}", issuer.bearer("bob"))
    assert status == 404 and "Service not found" in body
    status, body, _ = await call(r, "DELETE", f"/apps/{service_id}", issuer.bearer(ADMIN))
    assert status == 404 and "does not exist" in body


# -- JWT verification -------------------------------------------------------------------------------------------------


async def test_bad_bearer_tokens_are_refused_and_start_nothing(make_router, issuer: Issuer) -> None:
    issuer.add("unpublished", publish=False)
    r = await jwt_router(make_router, issuer)
    forged = issuer.token("alice", "unpublished")
    forged_k1 = forged.split(".")
    genuine = issuer.token("alice").split(".")
    cases = {
        "garbage": ("Bearer not-a-jwt", "not a valid JWT"),
        "expired": (f"Bearer {issuer.token('alice', exp=1_000_000)}", "has expired"),
        "not-yet-valid": (
            f"Bearer {issuer.token('alice', nbf=int(time.time()) + 3600)}",
            "not valid yet",
        ),
        "wrong-issuer": (f"Bearer {issuer.token('alice', iss='https://evil.test')}", f"is not {ISSUER!r}"),
        "wrong-audience": (f"Bearer {issuer.token('alice', aud='another-app')}", f"include {AUDIENCE!r}"),
        "no-subject": (f"Bearer {issuer.token('alice', sub=None)}", "sub"),
        "alg-none": (f"Bearer {issuer.unsigned('alice')}", "alg 'none'"),
        "hs256-with-public-key": (f"Bearer {issuer.hmac_with_public_key('alice', 'k1')}", "alg 'HS256'"),
        "unknown-kid": (f"Bearer {forged}", "key id 'unpublished'"),
        "signature-of-another-key": (
            f"Bearer {genuine[0]}.{genuine[1]}.{forged_k1[2]}",
            "its signature does not verify with the issuer's key",
        ),
        "other-scheme": ("Basic YWxpY2U6cHc=", "the basic credentials sent are not accepted"),
    }
    for name, (authorization, message) in cases.items():
        headers = {"authorization": authorization, **on_the_fly_headers(), "accept": "application/json"}
        status, body, resp = await call(r, "GET", "/hello", headers)
        assert status == 401, (name, body)
        assert message in body, (name, body)
        assert AUTH_COOKIE not in resp.cookies, name
    assert r.router.registry.services == {}


async def test_jwks_rotation_and_every_allowed_algorithm(make_router, issuer: Issuer) -> None:
    r = await jwt_router(make_router, issuer)
    assert (await call(r, "GET", "/waiter-auth", issuer.bearer("alice")))[0] == 200
    fetches = issuer.fetches
    issuer.add("k2-ec", "ES256")
    issuer.add("k3-ed", "EdDSA")
    for kid in ("k2-ec", "k3-ed"):
        status, body, _ = await call(r, "GET", "/waiter-auth", issuer.bearer(f"carol-{kid}", kid))
        assert status == 200 and body == f"carol-{kid}"
    assert issuer.fetches > fetches  # a new kid made the router fetch the key set again
    issuer.published.remove("k1")
    known = issuer.fetches
    assert (await call(r, "GET", "/waiter-auth", issuer.bearer("alice", "k1")))[0] == 200  # cached until refresh
    assert issuer.fetches == known


async def test_jwks_file(make_router, issuer: Issuer, tmp_path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    config = {"kind": "jwt", "jwt": {"jwks-file": str(jwks), "issuer": ISSUER, "audience": AUDIENCE}}
    r = await make_router(authenticator=config)
    status, body, _ = await call(r, "GET", "/waiter-auth", issuer.bearer("dave"))
    assert status == 200 and body == "dave"


# -- the cookie across routers ---------------------------------------------------------------------------------------


async def test_cookie_works_on_every_router_sharing_the_secret(make_router, issuer: Issuer) -> None:
    secret = {"secret": "a-cluster-wide-secret-of-32-chars"}
    one = await jwt_router(make_router, issuer, **{"auth-cookie": secret})
    two = await jwt_router(make_router, issuer, **{"auth-cookie": secret})
    stranger = await jwt_router(make_router, issuer, **{"auth-cookie": {"secret": "another-cluster-secret-000"}})
    _, _, resp = await call(one, "GET", "/waiter-auth", issuer.bearer("alice"))
    cookie = auth_cookie(resp)
    status, body, _ = await call(two, "GET", "/waiter-auth", {"cookie": f"{AUTH_COOKIE}={cookie}"})
    assert status == 200 and body == "alice"
    assert (await call(stranger, "GET", "/waiter-auth", {"cookie": f"{AUTH_COOKIE}={cookie}"}))[0] == 401
    tampered = cookie[:20] + ("A" if cookie[20] != "A" else "B") + cookie[21:]
    assert (await call(two, "GET", "/waiter-auth", {"cookie": f"{AUTH_COOKIE}={tampered}"}))[0] == 401
    # an ignored cookie does not stand in the way of the authenticators
    headers = {"cookie": f"{AUTH_COOKIE}={tampered}", **issuer.bearer("bob")}
    status, body, _ = await call(two, "GET", "/waiter-auth", headers)
    assert status == 200 and body == "bob"


async def test_cookie_secret_shared_through_redis(make_router, issuer: Issuer, redis_server) -> None:
    one = await jwt_router(make_router, issuer, redis=redis_server.url)
    two = await jwt_router(make_router, issuer, redis=redis_server.url)
    _, _, resp = await call(one, "GET", "/waiter-auth", issuer.bearer("alice"))
    status, body, _ = await call(two, "GET", "/waiter-auth", {"cookie": f"{AUTH_COOKIE}={auth_cookie(resp)}"})
    assert status == 200 and body == "alice"


# -- every endpoint's policy ------------------------------------------------------------------------------------------

# Each route of the table, its expected policy and a concrete path to probe it with ({sid}: a service of alice's).
# A route added to the table without a line here fails test_every_route_is_in_the_policy_table.
EXPECTED: dict[tuple[str, str], tuple[Access, str]] = {
    ("/", "GET"): (Access.PUBLIC, "/"),
    ("/favicon.ico", "GET"): (Access.PUBLIC, "/favicon.ico"),
    ("/status", "GET"): (Access.PUBLIC, "/status"),
    ("/metrics", "GET"): (Access.PUBLIC, "/metrics"),
    ("/settings", "GET"): (Access.AUTHENTICATED, "/settings"),
    ("/service-id", "GET"): (Access.AUTHENTICATED, "/service-id"),
    ("/app-name", "GET"): (Access.AUTHENTICATED, "/app-name"),
    ("/waiter-auth", "GET"): (Access.AUTHENTICATED, "/waiter-auth"),
    ("/waiter-ping", "GET"): (Access.AUTHENTICATED, "/waiter-ping"),
    ("/apps", "GET"): (Access.AUTHENTICATED, "/apps"),
    ("/apps/instances", "GET"): (Access.AUTHENTICATED, "/apps/instances"),
    ("/dashboard", "GET"): (Access.AUTHENTICATED, "/dashboard"),
    ("/dashboard/", "GET"): (Access.AUTHENTICATED, "/dashboard/no-such-file"),
    ("/apps/", "GET"): (Access.AUTHENTICATED, "/apps/{sid}"),
    ("/apps/", "DELETE"): (Access.SERVICE_OWNER, "/apps/{sid}"),
    ("/apps/", "POST"): (Access.SERVICE_OWNER, "/apps/{sid}/instance/{sid}.i1/expire"),
    ("/state", "GET"): (Access.AUTHENTICATED, "/state"),
    ("/state/", "GET"): (Access.AUTHENTICATED, "/state/services"),
    ("/token", "GET"): (Access.AUTHENTICATED, "/token?token=nope"),
    ("/token", "POST"): (Access.AUTHENTICATED, "/token"),
    ("/token", "DELETE"): (Access.AUTHENTICATED, "/token?token=nope"),
    ("/tokens", "GET"): (Access.AUTHENTICATED, "/tokens"),
    ("/token-history", "GET"): (Access.AUTHENTICATED, "/token-history?token=nope"),
    ("/tokens/owners", "GET"): (Access.AUTHENTICATED, "/tokens/owners"),
    ("/tokens/reindex", "POST"): (Access.ADMIN, "/tokens/reindex"),
    ("/waiter-interstitial", "GET"): (Access.AUTHENTICATED, "/waiter-interstitial/page"),
    ("/waiter-async/", "GET"): (Access.AUTHENTICATED, "/waiter-async/status/c/r/{sid}/127.0.0.1/1/s"),
    ("/waiter-async/", "DELETE"): (Access.AUTHENTICATED, "/waiter-async/complete/c/r/{sid}/127.0.0.1/1/s"),
    ("/waiter-async/", "POST"): (Access.AUTHENTICATED, "/waiter-async/result/c/r/{sid}/127.0.0.1/1/s"),
}


def test_every_route_is_in_the_policy_table() -> None:
    table = {(path, method): policy_of(handler) for path, method, handler in admin_routes().routes()}
    missing = sorted(set(table) - set(EXPECTED))
    assert not missing, f"routes without a line in EXPECTED (add their policy and a probe path): {missing}"
    assert {key: policy for key, (policy, _) in EXPECTED.items() if key in table} == table


async def test_every_endpoint_is_authenticated_and_authorized_by_its_policy(make_router, issuer: Issuer) -> None:
    r = await jwt_router(make_router, issuer)
    for (route, method), (policy, probe) in EXPECTED.items():
        sid = await register(r, issuer, "alice")
        path = probe.replace("{sid}", sid)
        status, body, _ = await call(r, method, path)
        if policy is Access.PUBLIC:
            assert status not in (401, 403), (route, method, status, body)
            continue
        assert status == 401, (route, method, status, body)
        status, body, _ = await call(r, method, path, issuer.bearer("bob"))
        if policy in (Access.SERVICE_OWNER, Access.ADMIN):
            assert status == 403, (route, method, status, body)
        else:
            assert status not in (401, 403), (route, method, status, body)
        for who in ("alice", ADMIN) if policy is not Access.ADMIN else (ADMIN,):
            sid = await register(r, issuer, "alice")
            status, body, _ = await call(r, method, probe.replace("{sid}", sid), issuer.bearer(who))
            assert status not in (401, 403), (route, method, who, status, body)


async def test_token_owner_may_act_on_the_services_of_the_token(make_router, issuer: Issuer) -> None:
    token = backend_token("owned", owner="carol", **{"run-as-user": "carol", "permitted-user": "*"})
    r = await jwt_router(make_router, issuer, [token])
    headers = {**issuer.bearer("dave"), "x-waiter-token": "owned"}
    status, sid, _ = await call(r, "GET", "/service-id", headers)
    assert status == 200, sid
    assert (await call(r, "DELETE", f"/apps/{sid}", issuer.bearer("dave")))[0] == 403
    assert (await call(r, "DELETE", f"/apps/{sid}", issuer.bearer("carol")))[0] == 200


# -- what proxied requests may run ------------------------------------------------------------------------------------


async def test_run_as_user_permitted_user_and_run_as_requester(make_router, issuer: Issuer) -> None:
    tokens = [
        backend_token("mine", **{"run-as-user": "alice", "permitted-user": "alice"}),
        backend_token("open", **{"run-as-user": "alice", "permitted-user": "*"}),
        backend_token("anyone"),  # no run-as-user: runs as whoever calls
    ]
    r = await jwt_router(make_router, issuer, tokens)
    bob = issuer.bearer("bob")

    status, body, _ = await call(r, "GET", "/hello", {**bob, **on_the_fly_headers(**{"x-waiter-run-as-user": "alice"})})
    assert status == 403 and "Authenticated user 'bob' cannot run as user 'alice'" in body
    status, body, _ = await call(r, "GET", "/hello", {**bob, "x-waiter-token": "mine"})
    assert status == 403 and "isn't allowed to invoke this service" in body and "'alice'" in body
    status, body, _ = await call(
        r, "GET", "/hello", {**bob, **on_the_fly_headers(**{"x-waiter-permitted-user": "alice"})}
    )
    assert status == 403  # bob's own service, but only alice may call it
    assert r.router.registry.services == {}

    # an admin may run as anyone
    headers = {**issuer.bearer(ADMIN), **on_the_fly_headers(**{"x-waiter-run-as-user": "alice"})}
    status, sid, _ = await call(r, "GET", "/service-id", headers)
    assert status == 200 and r.router.registry.get(sid).resolved.core["run-as-user"] == "alice"

    # a token that names its users vouches for its callers
    status, sid, _ = await call(r, "GET", "/service-id", {**bob, "x-waiter-token": "open"})
    assert status == 200 and r.router.registry.get(sid).resolved.core["run-as-user"] == "alice"

    # run-as-requester: each caller gets a service of their own
    ids = {}
    for user in ("alice", "bob"):
        status, sid, _ = await call(r, "GET", "/service-id", {**issuer.bearer(user), "x-waiter-token": "anyone"})
        assert status == 200
        core = r.router.registry.get(sid).resolved.core
        assert core["run-as-user"] == user and core["permitted-user"] == user
        ids[user] = sid
    assert ids["alice"] != ids["bob"]
    status, body, resp = await call(r, "GET", "/headers", {**bob, "x-waiter-token": "anyone"})
    assert status == 200 and (await resp.json())["x-waiter-auth-principal"] == "bob"


async def test_what_a_caller_may_use_follows_each_token_change(make_router, issuer: Issuer) -> None:
    """The router remembers what a caller may use between requests (the request path's cache), only until a token
    changes: a new permitted-user applies to the very next request, both ways."""
    r = await jwt_router(make_router, issuer)
    alice, bob = issuer.bearer("alice"), issuer.bearer("bob")

    async def post_token(permitted: str) -> None:
        token = backend_token("shared", owner="alice", **{"run-as-user": "alice", "permitted-user": permitted})
        status, body, _ = await call(r, "POST", "/token", alice, json=token)
        assert status == 200, body

    await post_token("*")
    asking = {**bob, "x-waiter-token": "shared"}
    first, second = await call(r, "GET", "/service-id", asking), await call(r, "GET", "/service-id", asking)
    assert first[0] == second[0] == 200 and first[1] == second[1]
    await post_token("alice")
    status, body, _ = await call(r, "GET", "/service-id", asking)
    assert status == 403 and "isn't allowed to invoke this service" in body
    await post_token("*")
    assert (await call(r, "GET", "/service-id", asking))[0] == 200


async def test_authentication_disabled_token_serves_anonymous_callers(make_router, issuer: Issuer) -> None:
    token = backend_token("public", authentication="disabled", **{"run-as-user": "alice", "permitted-user": "*"})
    r = await jwt_router(make_router, issuer, [token])
    status, body, resp = await call(r, "GET", "/headers", {"x-waiter-token": "public"})
    assert status == 200, body
    seen = await resp.json()
    assert "x-waiter-auth-principal" not in seen
    assert AUTH_COOKIE not in resp.cookies
    # not for on-the-fly variations of it, and not for the API
    status, _, _ = await call(r, "GET", "/hello", {"x-waiter-token": "public", "x-waiter-version": "2"})
    assert status == 401
    assert (await call(r, "GET", "/apps"))[0] == 401


# -- other authenticators, the internal port, defaults -------------------------------------------------------------


async def test_trusted_header_only_from_trusted_networks(make_router) -> None:
    config = {"kind": ["trusted-header"], "trusted-header": {"header": "x-user", "trusted-cidrs": ["127.0.0.0/8"]}}
    r = await make_router(authenticator=config)
    status, body, _ = await call(r, "GET", "/waiter-auth", {"x-user": "erin@corp"})
    assert status == 200 and body == "erin"
    assert (await call(r, "GET", "/waiter-auth"))[0] == 401
    elsewhere = {"kind": "trusted-header", "trusted-header": {"header": "x-user", "trusted-cidrs": ["10.0.0.0/8"]}}
    r2 = await make_router(authenticator=elsewhere)
    status, body, _ = await call(r2, "GET", "/waiter-auth", {"x-user": "erin"})
    assert status == 401 and "not in them" in body


async def test_composite_tries_authenticators_in_order(make_router, issuer: Issuer) -> None:
    config = {
        "kind": ["jwt", "trusted-header"],
        "jwt": issuer.config()["jwt"],
        "trusted-header": {"header": "x-user", "trusted-cidrs": ["127.0.0.1/32"]},
    }
    r = await make_router(authenticator=config)
    assert (await call(r, "GET", "/waiter-auth", issuer.bearer("alice")))[1] == "alice"
    status, body, resp = await call(r, "GET", "/waiter-auth", {"x-user": "frank"})
    assert status == 200 and body == "frank" and resp.headers["x-waiter-auth-method"] == "trusted-header"
    status, body, resp = await call(r, "GET", "/waiter-auth", {"authorization": "Bearer junk", "x-user": "frank"})
    assert status == 401  # the first that recognises the request decides


async def test_internal_port_refuses_requests_that_bypass_the_front_door(make_router) -> None:
    r = await make_router()
    internal = f"http://127.0.0.1:{r.server.internal_port}"
    for path in ("/apps", "/status", "/token?token=x"):
        async with r.client.get(internal + path, headers={"x-router-internal-caller": "root root one-user"}) as resp:
            assert resp.status == 403, path
            assert "front door" in await resp.text()
    # and a client cannot smuggle the stamp through the front door
    status, body, resp = await call(r, "GET", "/waiter-auth", {"x-router-internal-caller": "mallory mallory x"})
    assert status == 200 and body == r.settings.run_as_user


async def test_one_user_default_sets_the_cookie(make_router) -> None:
    r = await make_router()
    status, body, resp = await call(r, "GET", "/waiter-auth")
    assert status == 200 and body == r.settings.run_as_user
    assert resp.headers["x-waiter-auth-method"] == "one-user"
    assert AUTH_COOKIE in resp.cookies
    status, _, resp = await call(r, "GET", "/status")
    assert status == 200 and AUTH_COOKIE not in resp.cookies  # public endpoints authenticate nobody


# -- CORS and https-redirect ----------------------------------------------------------------------------------------


async def test_cors_rules_per_token(make_router, issuer: Issuer) -> None:
    rules = [{"origin-regex": r"https://app\.example\.com", "target-path-regex": "/headers", "methods": ["GET"]}]
    token = backend_token("web", **{"cors-rules": rules})
    r = await jwt_router(make_router, issuer, [token])
    preflight = {
        "x-waiter-token": "web",
        "origin": "https://app.example.com",
        "access-control-request-method": "GET",
        "access-control-request-headers": "authorization",
    }
    status, _, resp = await call(r, "OPTIONS", "/headers", preflight)
    assert status == 204
    assert resp.headers["access-control-allow-origin"] == "https://app.example.com"
    assert resp.headers["access-control-allow-methods"] == "GET"
    assert resp.headers["access-control-allow-headers"] == "authorization"
    assert resp.headers["access-control-allow-credentials"] == "true"
    assert r.router.registry.services == {}  # answered by the router
    status, _, resp = await call(r, "OPTIONS", "/headers", {**preflight, "origin": "https://evil.example.com"})
    assert status == 401 and "access-control-allow-origin" not in resp.headers
    headers = {"x-waiter-token": "web", "origin": "https://app.example.com", **issuer.bearer("alice")}
    status, _, resp = await call(r, "GET", "/headers", headers)
    assert status == 200 and resp.headers["access-control-allow-origin"] == "https://app.example.com"
    status, _, resp = await call(r, "GET", "/hello", headers)
    assert status == 200 and "access-control-allow-origin" not in resp.headers  # the rule's path does not match


async def test_https_redirect_for_plain_http(make_router, issuer: Issuer) -> None:
    token = backend_token("secure", **{"https-redirect": True})
    r = await jwt_router(make_router, issuer, [token], **{"trusted-proxies": ["127.0.0.1/32"]})
    headers = {"x-waiter-token": "secure", "host": "svc.example.com:9091"}
    async with r.client.get(r.url + "/a?b=1", headers=headers, allow_redirects=False) as resp:
        assert resp.status == 301
        assert resp.headers["location"] == "https://svc.example.com/a?b=1"
    async with r.client.post(r.url + "/a", headers=headers, allow_redirects=False) as resp:
        assert resp.status == 307  # keeps the method and body
    forwarded = {**headers, "x-forwarded-proto": "https", **issuer.bearer("alice")}
    async with r.client.get(r.url + "/hello", headers=forwarded, allow_redirects=False) as resp:
        assert resp.status == 200
