"""What authenticating a request costs the router: waiter.auth.Gate.authenticate per authenticator, in process.

Cases: one-user (the default); a JWT bearer token (RS256, ES256, EdDSA), first ``-verify`` (a new token each time:
the signature is checked) then ``-repeat`` (the same token again: remembered once verified); the x-waiter-auth
cookie a JWT caller gets back (AES-GCM open); trusted-header. The reference, measured in the same run, is the
one-user case. One line per result:

    python benchmarks/auth_overhead.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from waiter.auth import Gate
from waiter.settings import load_settings

ISSUER, AUDIENCE = "https://issuer.bench", "waiter-bench"
KEYS: dict[str, tuple[Any, Any]] = {
    "RS256": (rsa.generate_private_key(public_exponent=65537, key_size=2048), RSAAlgorithm),
    "ES256": (ec.generate_private_key(ec.SECP256R1()), ECAlgorithm),
    "EdDSA": (ed25519.Ed25519PrivateKey.generate(), OKPAlgorithm),
}


class View:
    """The request as an authenticator sees it (waiter.auth.AuthRequest)."""

    def __init__(self, headers: dict[str, str], peer: str = "127.0.0.1") -> None:
        self.headers = headers
        self.peer = peer


def _config(workdir: Path, authenticator: dict[str, Any]) -> Path:
    config = workdir / f"router-{len(list(workdir.iterdir()))}.yaml"
    config.write_text(json.dumps({"authenticator": authenticator, "tokens-dir": None}))
    return config


async def gate_for(workdir: Path, authenticator: dict[str, Any]) -> Gate:
    gate = Gate(load_settings(_config(workdir, authenticator)))
    await gate.start()
    return gate


async def measure(name: str, gate: Gate, views: list[View], requests: int, reference: float | None) -> float:
    for i in range(min(100, requests)):
        await gate.authenticate(views[i % len(views)])
    start = time.process_time()
    for i in range(requests):
        await gate.authenticate(views[i % len(views)])
    per = (time.process_time() - start) / requests * 1e6
    ratio = f" vs_one_user={per / reference:.1f}" if reference else ""
    print(f"auth_overhead {name} cpu_us/request={per:.2f}{ratio}", flush=True)
    return per


async def main(requests: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        jwks = workdir / "jwks.json"
        keys = [{**cls.to_jwk(key.public_key(), as_dict=True), "kid": alg} for alg, (key, cls) in KEYS.items()]
        jwks.write_text(json.dumps({"keys": keys}))
        one_user = await gate_for(workdir, {"kind": "one-user"})
        reference = await measure("one-user", one_user, [View({})], requests, None)
        jwt_config = {
            "kind": "jwt",
            "jwt": {"jwks-file": str(jwks), "issuer": ISSUER, "audience": AUDIENCE, "algorithms": list(KEYS)},
        }
        bearer_gate = await gate_for(workdir, jwt_config)
        exp = int(time.time()) + 3600
        cookie = ""
        for alg, (key, _) in KEYS.items():
            fresh = [  # distinct tokens (jti): none is remembered while measuring
                View(
                    {
                        "authorization": "Bearer "
                        + jwt.encode(
                            {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "exp": exp, "jti": str(i)},
                            key,
                            algorithm=alg,
                            headers={"kid": alg},
                        )
                    }
                )
                for i in range(requests + 100)
            ]
            await measure(f"jwt-{alg}-verify", bearer_gate, fresh, requests, reference)
            await measure(f"jwt-{alg}-repeat", bearer_gate, fresh[:1], requests, reference)
            admission = await bearer_gate.authenticate(fresh[0])
            cookie = admission.response_lines.decode().split("x-waiter-auth=", 1)[1].split(";", 1)[0]
        cookie_view = [View({"cookie": f"x-waiter-auth={cookie}"})]
        await measure("cookie", bearer_gate, cookie_view, requests, reference)
        trusted = {"kind": "trusted-header", "trusted-header": {"header": "x-user", "trusted-cidrs": ["127.0.0.0/8"]}}
        header_gate = await gate_for(workdir, trusted)
        await measure("trusted-header", header_gate, [View({"x-user": "alice"})], requests, reference)
        for gate in (one_user, bearer_gate, header_gate):
            await gate.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000, help="authentications per case (default 20000)")
    asyncio.run(main(parser.parse_args().requests))
