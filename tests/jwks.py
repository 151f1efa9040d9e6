"""An identity provider for the tests of JWT bearer tokens: its key set (JWKS) on a real loopback HTTP server, and
the tokens it signs for the issuer and resource the tests configure the server with."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ISSUER = "https://issuer.test"
RESOURCE = "https://mcp.example.test"

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    """A P-256 key (ES256)."""
    return ec.generate_private_key(ec.SECP256R1())


def claims(**changes: Any) -> dict[str, Any]:
    """A valid token's claims for ``ISSUER`` and ``RESOURCE`` (subject ``alice``, ten minutes to live), with
    ``changes``; a claim changed to None is left out."""
    now = int(time.time())
    body = {"iss": ISSUER, "aud": RESOURCE, "sub": "alice", "exp": now + 600, "iat": now, **changes}
    return {name: value for name, value in body.items() if value is not None}


def public_jwk(kid: str, key: SigningKey) -> dict[str, Any]:
    """The JWK of ``key``'s public half, named ``kid``, as a key set lists it."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(public)
    else:
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(public)
    return {**json.loads(jwk), "kid": kid, "use": "sig"}


class Jwks:
    """An identity provider's key set on a real loopback HTTP server, at ``url``. Each fetch serves the public half
    of ``keys`` as they are then, so a test rotates a key by adding it; while ``up`` is False a fetch is a 503;
    ``fetches`` counts them. A context manager: the server stops at the end."""

    def __init__(self, keys: Mapping[str, SigningKey]) -> None:
        self.keys: dict[str, SigningKey] = dict(keys)
        self.up = True
        self.fetches = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.fetches += 1
                if not owner.up:
                    self.send_error(503)
                    return
                body = json.dumps({"keys": [public_jwk(kid, key) for kid, key in owner.keys.items()]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, kid: str | None = None, **changes: Any) -> str:
        """A token of :func:`claims` with ``changes``, signed by the key ``kid`` (the first of ``keys`` by default):
        RS256 with an RSA key, ES256 with an EC one."""
        kid = next(iter(self.keys)) if kid is None else kid
        key = self.keys[kid]
        algorithm = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
        return jwt.encode(claims(**changes), key, algorithm=algorithm, headers={"kid": kid})

    def server_args(self) -> list[str]:
        """The command-line flags of a server that takes this provider's tokens for ``RESOURCE``."""
        return ["--jwt-jwks-url", self.url, "--jwt-issuer", ISSUER, "--resource-url", RESOURCE]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Jwks:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
