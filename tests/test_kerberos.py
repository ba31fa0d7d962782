"""SPNEGO against a real MIT KDC started on loopback: tickets from kinit, accepted with the router's keytab."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FAKE, on_the_fly_headers
from tests.identity import REALM, Kdc, kdc_listening, kdc_missing, running_kdc
from tests.test_error_words import assert_our_words
from waiter.auth.cookie import AUTH_COOKIE

# Instances only need to answer HTTP here (tests.fakes); real processes: test_router_e2e.py and the scheduler tests.
pytestmark = pytest.mark.schedulers(FAKE)

SPNEGO = "1.3.6.1.5.5.2"


@pytest.fixture
async def kdc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Kdc]:
    missing = kdc_missing()
    if missing:
        pytest.skip(missing)
    root = tmp_path / "kdc"
    root.mkdir()
    try:
        context = running_kdc(root)
        kdc = context.__enter__()
    except (OSError, subprocess.CalledProcessError) as exc:
        output = getattr(exc, "stderr", "") or ""
        pytest.skip(f"the test KDC cannot start on this machine: {exc} {output}")
    try:
        await kdc_listening(kdc)
        for name, value in kdc.env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("KRB5RCACHETYPE", "none")  # no replay cache files outside the test's directory
        kdc.add_user("alice", "alice-password")
        kdc.add_user("bob", "bob-password")
        yield kdc
    finally:
        context.__exit__(None, None, None)


def client_context(kdc: Kdc, user: str, password: str, service: str = "HTTP@127.0.0.1") -> Any:
    """A SPNEGO initiator for ``user``: kinit into a cache of its own, then a security context."""
    import gssapi

    cache = kdc.root / f"{user}.ccache"
    kdc.kinit(user, password, cache)
    creds = gssapi.Credentials(usage="initiate", store={"ccache": f"FILE:{cache}"})
    name = gssapi.Name(service, gssapi.NameType.hostbased_service)
    return gssapi.SecurityContext(name=name, creds=creds, usage="initiate", mech=gssapi.OID.from_int_seq(SPNEGO))


def negotiate(kdc: Kdc, user: str, password: str, service: str = "HTTP@127.0.0.1", context: Any = None) -> str:
    """An Authorization header value for ``user``."""
    context = context or client_context(kdc, user, password, service)
    token = context.step()
    assert token
    return "Negotiate " + base64.b64encode(token).decode()


async def test_kerberos_tickets_authenticate_callers(make_router, kdc: Kdc) -> None:
    config = {"kind": "kerberos", "kerberos": {"keytab": str(kdc.keytab)}}
    r = await make_router(authenticator=config)

    async with r.client.get(r.url + "/waiter-auth") as resp:
        assert resp.status == 401
        assert resp.headers["www-authenticate"] == "Negotiate"

    context = client_context(kdc, "alice", "alice-password")
    header = negotiate(kdc, "alice", "alice-password", context=context)
    async with r.client.get(r.url + "/waiter-auth", headers={"authorization": header}) as resp:
        assert resp.status == 200
        assert await resp.text() == "alice"
        # mutual authentication: the router proves it holds the service's key
        scheme, _, reply = resp.headers["www-authenticate"].partition(" ")
        assert scheme == "Negotiate"
        context.step(base64.b64decode(reply))
        assert context.complete
        assert resp.headers["x-waiter-auth-principal"] == f"alice@{REALM}"
        assert resp.headers["x-waiter-auth-method"] == "kerberos"
        cookie = resp.cookies[AUTH_COOKIE].value
    async with r.client.get(r.url + "/waiter-auth", headers={"cookie": f"{AUTH_COOKIE}={cookie}"}) as resp:
        assert resp.status == 200 and await resp.text() == "alice"

    # a proxied request: the backend learns the principal, not the ticket
    headers = {"authorization": negotiate(kdc, "bob", "bob-password"), **on_the_fly_headers()}
    async with r.client.get(r.url + "/headers", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        seen = await resp.json()
    assert seen["x-waiter-auth-principal"] == "bob"
    assert seen["x-waiter-authenticated-principal"] == f"bob@{REALM}"
    assert "authorization" not in seen

    for bad, message in (
        ("Negotiate !!!", "not base64"),
        ("Negotiate " + base64.b64encode(b"junk").decode(), "not accepted: it is malformed, or for a service whose"),
    ):
        async with r.client.get(r.url + "/waiter-auth", headers={"authorization": bad}) as resp:
            assert resp.status == 401
            body = await resp.text()
        assert message in body, body
        assert_our_words(body)


async def test_ticket_for_another_service_is_refused(make_router, kdc: Kdc) -> None:
    kdc.run("kadmin.local", "-r", REALM, "-q", f"addprinc -randkey HTTP/elsewhere@{REALM}")
    r = await make_router(authenticator={"kind": "kerberos", "kerberos": {"keytab": str(kdc.keytab)}})
    header = negotiate(kdc, "alice", "alice-password", service="HTTP@elsewhere")
    async with r.client.get(r.url + "/waiter-auth", headers={"authorization": header}) as resp:
        assert resp.status == 401
        body = await resp.text()
    assert "not accepted: it is malformed, or for a service whose key is not in this router's keytab" in body, body
    assert_our_words(body)


async def test_kerberos_and_jwt_side_by_side(make_router, kdc: Kdc, tmp_path: Path) -> None:
    import json

    from tests.identity import AUDIENCE, ISSUER, Issuer

    issuer = Issuer()
    issuer.add("k1")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    config = {
        "kind": ["kerberos", "jwt"],
        "kerberos": {"keytab": str(kdc.keytab), "service-principal": f"HTTP/127.0.0.1@{REALM}"},
        "jwt": {"jwks-file": str(jwks), "issuer": ISSUER, "audience": AUDIENCE},
    }
    r = await make_router(authenticator=config)
    async with r.client.get(r.url + "/waiter-auth") as resp:
        assert resp.status == 401
        assert resp.headers["www-authenticate"] == 'Negotiate, Bearer realm="waiter"'
    for header, user, method in (
        (negotiate(kdc, "alice", "alice-password"), "alice", "kerberos"),
        (f"Bearer {issuer.token('carol@example.com')}", "carol", "jwt"),
    ):
        async with r.client.get(r.url + "/waiter-auth", headers={"authorization": header}) as resp:
            assert resp.status == 200 and await resp.text() == user
            assert resp.headers["x-waiter-auth-method"] == method
