"""Identity providers the auth tests run for real: a JWT issuer serving its JWKS on loopback, an MIT Kerberos KDC."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from tests.support import eventually, free_port

ISSUER = "https://issuer.test"
AUDIENCE = "waiter-router"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if self.alg == "RS256":
            data = RSAAlgorithm.to_jwk(public, as_dict=True)
        elif self.alg == "ES256":
            data = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            data = OKPAlgorithm.to_jwk(public, as_dict=True)
        return {**data, "kid": self.kid, "use": "sig"}

    def public_pem(self) -> bytes:
        return bytes(
            self.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


def new_key(kid: str, alg: str = "RS256") -> SigningKey:
    if alg == "RS256":
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"no test key for {alg}")
    return SigningKey(kid, alg, private)


class Issuer:
    """Signs tokens with its keys and publishes the public half of the ``published`` ones as a JWKS."""

    def __init__(self) -> None:
        self.keys: dict[str, SigningKey] = {}
        self.published: list[str] = []
        self.fetches = 0
        self.url = ""

    def add(self, kid: str, alg: str = "RS256", *, publish: bool = True) -> SigningKey:
        key = self.keys[kid] = new_key(kid, alg)
        if publish:
            self.published.append(kid)
        return key

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.keys[kid].jwk() for kid in self.published]}

    def claims(self, subject: str, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {"sub": subject, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, subject: str, kid: str | None = None, **overrides: Any) -> str:
        key = self.keys[kid or self.published[0]]
        return jwt.encode(self.claims(subject, **overrides), key.private, algorithm=key.alg, headers={"kid": key.kid})

    def bearer(self, sub: str, kid: str | None = None, **overrides: Any) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token(sub, kid, **overrides)}"}

    def unsigned(self, sub: str) -> str:
        """alg none: no signature at all."""
        return _compact({"alg": "none", "typ": "JWT"}, self.claims(sub), b"")

    def hmac_with_public_key(self, sub: str, kid: str) -> str:
        """The algorithm-confusion attack: HS256 keyed with the RSA public key the JWKS publishes."""
        header = {"alg": "HS256", "typ": "JWT", "kid": kid}
        signing_input = _b64(json.dumps(header).encode()) + b"." + _b64(json.dumps(self.claims(sub)).encode())
        signature = hmac.new(self.keys[kid].public_pem(), signing_input, hashlib.sha256).digest()
        return (signing_input + b"." + _b64(signature)).decode()

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[Issuer]:
        async def jwks(request: web.Request) -> web.Response:
            self.fetches += 1
            return web.json_response(self.jwks())

        app = web.Application()
        app.router.add_get("/jwks", jwks)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        self.url = f"http://127.0.0.1:{port}/jwks"
        try:
            yield self
        finally:
            await runner.cleanup()

    def config(self) -> dict[str, Any]:
        """The router's authenticator section for this issuer (the keys scripts outside the project use)."""
        return {"kind": "jwt", "jwt": {"jwks-url": self.url, "issuer": ISSUER, "audience": AUDIENCE}}


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _compact(header: dict[str, Any], claims: dict[str, Any], signature: bytes) -> str:
    parts = [_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()), _b64(signature)]
    return b".".join(parts).decode()


# -- Kerberos ---------------------------------------------------------------------------------------------------------

REALM = "WAITER.TEST"
KDC_BINARIES = ("krb5kdc", "kdb5_util", "kadmin.local", "kinit")


def kdc_missing() -> str | None:
    """Why a test KDC cannot run here, or None."""
    missing = [b for b in KDC_BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        return f"MIT Kerberos is not installed (missing {', '.join(missing)}); tests/install-system-packages.sh adds it"
    return None


def _tool(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


@dataclass
class Kdc:
    """A KDC on a free loopback port with its own realm, database, keytab and credential cache, in ``root``."""

    root: Path
    port: int
    env: dict[str, str]  # KRB5_CONFIG, KRB5_KDC_PROFILE, KRB5CCNAME for clients and tools
    keytab: Path
    process: subprocess.Popen[bytes] | None = None

    def run(self, *args: str, stdin: str | None = None) -> None:
        subprocess.run(args, env={**os.environ, **self.env}, input=stdin, text=True, check=True, capture_output=True)

    def add_user(self, name: str, password: str) -> None:
        self.run(_tool("kadmin.local"), "-r", REALM, "-q", f"addprinc -pw {password} {name}@{REALM}")

    def kinit(self, name: str, password: str, cache: Path) -> None:
        env = {**self.env, "KRB5CCNAME": f"FILE:{cache}"}
        done = subprocess.run(
            [_tool("kinit"), f"{name}@{REALM}"],
            env={**os.environ, **env},
            input=password + "\n",
            text=True,
            capture_output=True,
        )
        if done.returncode != 0:
            raise AssertionError(f"kinit {name} failed: {done.stderr} {_tail(self.root / 'kdc.log')}")


@contextmanager
def running_kdc(root: Path, service_host: str = "127.0.0.1") -> Iterator[Kdc]:
    """Create a realm, an HTTP/<service_host> service principal in a keytab, and start krb5kdc on loopback."""
    port = free_port()
    conf, kdc_conf, keytab = root / "krb5.conf", root / "kdc.conf", root / "http.keytab"
    conf.write_text(
        "[libdefaults]\n"
        f" default_realm = {REALM}\n dns_lookup_kdc = false\n dns_lookup_realm = false\n rdns = false\n"
        " dns_canonicalize_hostname = false\n udp_preference_limit = 1\n"
        f"[realms]\n {REALM} = {{\n  kdc = 127.0.0.1:{port}\n }}\n"
    )
    kdc_conf.write_text(
        f"[kdcdefaults]\n kdc_ports = {port}\n kdc_tcp_ports = {port}\n"
        f"[realms]\n {REALM} = {{\n  database_name = {root}/principal\n  key_stash_file = {root}/stash\n"
        f"  acl_file = {root}/kadm5.acl\n  kdc_listen = 127.0.0.1:{port}\n  kdc_tcp_listen = 127.0.0.1:{port}\n }}\n"
        f"[logging]\n kdc = FILE:{root}/kdc.log\n"
    )
    (root / "kadm5.acl").write_text("")
    env = {"KRB5_CONFIG": str(conf), "KRB5_KDC_PROFILE": str(kdc_conf), "KRB5CCNAME": f"FILE:{root}/ccache"}
    kdc = Kdc(root, port, env, keytab)
    kdc.run(_tool("kdb5_util"), "-r", REALM, "create", "-s", "-P", "master-password")
    service = f"HTTP/{service_host}@{REALM}"
    kdc.run(_tool("kadmin.local"), "-r", REALM, "-q", f"addprinc -randkey {service}")
    kdc.run(_tool("kadmin.local"), "-r", REALM, "-q", f"ktadd -k {keytab} {service}")
    kdc.process = subprocess.Popen(
        [_tool("krb5kdc"), "-n", "-r", REALM],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield kdc
    finally:
        kdc.process.terminate()
        kdc.process.wait(timeout=10)


async def kdc_listening(kdc: Kdc) -> None:
    import socket

    def accepts() -> bool:
        assert kdc.process is not None
        if kdc.process.poll() is not None:
            raise AssertionError(f"krb5kdc exited with {kdc.process.returncode}: {_tail(kdc.root / 'kdc.log')}")
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", kdc.port)) == 0

    await eventually(accepts, "the KDC to listen", timeout=15)


def _tail(path: Path) -> str:
    return path.read_text()[-2000:] if path.exists() else "(no log)"
