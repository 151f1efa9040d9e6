"""JWT bearer tokens: signatures checked against a public key file or a JWKS URL, claims checked strictly.

Only asymmetric algorithms from an allow-list are accepted (never ``none``, never an HMAC keyed with a public
key); ``exp``, ``iss`` and ``aud`` are required, with a small clock-skew leeway. A JWKS is fetched at the first
token, cached, and fetched again when a token names a key id it does not hold, at most once per
``min_refresh_seconds`` (so unknown key ids cannot make the server hammer the identity provider).

A token of any other shape (a header that is not an object, a ``kid`` that is not a string, an algorithm that
does not fit the key its ``kid`` names, bytes that are not base64) is refused like any invalid token, with a
short reason that quotes at most a short ``alg`` or ``kid`` of it. What a token grants is :func:`scopes_of`: its
``scope`` string, else its ``scp`` (a list of strings or a string), else every tool; an empty one grants none.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from app.security.keys import ALL_TOOLS

__all__ = ["ASYMMETRIC_ALGORITHMS", "JwtVerifier", "TokenRejected", "VerifiedToken", "scopes_of"]

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_MAX_JWKS_BYTES = 1024 * 1024


class TokenRejected(Exception):
    """A token that is not accepted: ``status`` 401 (the token is wrong) or 503 (it cannot be checked now)."""

    def __init__(self, message: str, *, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """Who a valid token speaks for."""

    principal: str  # jwt:<digest of iss and sub>: stable, and no personal data in logs
    subject: str
    scopes: frozenset[str]  # ALL_TOOLS when the token has no scope claim (see scopes_of)
    expires_at: float
    audiences: tuple[str, ...] = ()  # its aud claim (a string or a list): which audience's limits it is held to


def _fetch_url(url: str, timeout: float) -> bytes:
    # The URL's scheme is checked when the verifier is made: https, or http to a loopback address.
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        body: bytes = response.read(_MAX_JWKS_BYTES + 1)
    if len(body) > _MAX_JWKS_BYTES:
        raise ValueError(f"the JWKS is larger than {_MAX_JWKS_BYTES} bytes")
    return body


class JwtVerifier:
    """Checks JWT bearer tokens for one resource (this server)."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        algorithms: Sequence[str],
        leeway_seconds: float = 30.0,
        public_key_file: Path | None = None,
        jwks_url: str | None = None,
        min_refresh_seconds: float = 30.0,
        fetch_timeout: float = 5.0,
        fetch: Callable[[str, float], bytes] = _fetch_url,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        unsafe = sorted(set(algorithms) - ASYMMETRIC_ALGORITHMS)
        if unsafe:
            raise ValueError(
                f"JWT algorithms {', '.join(unsafe)} are not allowed; use {', '.join(sorted(ASYMMETRIC_ALGORITHMS))}"
            )
        if (public_key_file is None) == (jwks_url is None):
            raise ValueError("JWT checking needs exactly one of a public key file and a JWKS URL")
        if jwks_url is not None:
            parts = urlsplit(jwks_url)
            loopback = parts.hostname in {"127.0.0.1", "::1", "localhost"}
            if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
                raise ValueError(f"the JWKS URL must be https (http only to a loopback address), not {jwks_url!r}")
        self._issuer, self._audience, self._algorithms = issuer, audience, list(algorithms)
        self._leeway = leeway_seconds
        self._jwks_url, self._fetch, self._fetch_timeout = jwks_url, fetch, fetch_timeout
        self._min_refresh, self._clock = min_refresh_seconds, clock
        self._keys: dict[str | None, Any] = {}
        self._last_fetch: float | None = None
        self._lock = asyncio.Lock()
        if public_key_file is not None:
            try:
                self._keys[None] = serialization.load_pem_public_key(public_key_file.read_bytes())
            except (OSError, ValueError, TypeError) as exc:
                raise ValueError(f"cannot use the JWT public key file {public_key_file}: {exc}") from exc

    async def _refresh(self) -> None:
        """Fetch the JWKS again, unless that was done less than ``min_refresh_seconds`` ago."""
        assert self._jwks_url is not None
        async with self._lock:
            now = self._clock()
            if self._last_fetch is not None and now - self._last_fetch < self._min_refresh:
                return
            self._last_fetch = now
            try:
                body = await asyncio.to_thread(self._fetch, self._jwks_url, self._fetch_timeout)
                key_set = jwt.PyJWKSet.from_dict(orjson.loads(body))
            except (OSError, ValueError, jwt.PyJWKSetError, jwt.InvalidKeyError) as exc:
                if not self._keys:
                    raise TokenRejected(
                        f"the token cannot be checked: the JWKS at {self._jwks_url} cannot be read ({exc})",
                        status=503,
                    ) from exc
                return  # keep the keys we have; the next refresh may succeed
            self._keys = {key.key_id: key.key for key in key_set.keys}

    async def _key_for(self, kid: str | None) -> Any:
        if self._jwks_url is None:
            return self._keys[None]
        if kid not in self._keys:
            await self._refresh()
        if kid not in self._keys:
            shown = "" if kid is None else f" {_shown(kid)}"
            raise TokenRejected(f"the token's key id{shown} is not in the issuer's key set")
        return self._keys[kid]

    async def verify(self, token: str) -> VerifiedToken:
        """Check a token. A token of any shape is either accepted or refused with a short reason that quotes
        none of it beyond a short ``alg`` or ``kid``.

        Raises:
            TokenRejected: the token is not valid for this server (401) or cannot be checked now (503).
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:  # DecodeError (not base64, not a JSON object), a bad kid or crit
            raise TokenRejected(f"the token is not a valid JWT: {_short(str(exc))}") from None
        algorithm, kid = header.get("alg"), header.get("kid")
        if not isinstance(algorithm, str) or algorithm not in self._algorithms:
            raise TokenRejected(f"the token's algorithm {_shown(algorithm)} is not accepted")
        if kid is not None and not isinstance(kid, str):
            raise TokenRejected("the token's key id (kid) must be a string")
        key = await self._key_for(kid)
        if not _fits(algorithm, key):
            raise TokenRejected(f"the token's algorithm {algorithm} does not fit the key it names")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected("the token is not valid yet (nbf)") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRejected(f"the token has no {exc.claim!r} claim") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected(f"the token is not meant for this server (aud must be {self._audience!r})") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected(f"the token's issuer is not {self._issuer!r}") from None
        except (jwt.PyJWTError, TypeError, ValueError) as exc:  # any other flaw, e.g. a key PyJWT will not use
            raise TokenRejected(f"the token is not valid: {_short(str(exc))}") from None
        subject = str(claims.get("sub", ""))
        digest = hashlib.sha256(f"{claims['iss']}\0{subject}".encode()).hexdigest()[:16]
        audience = claims["aud"]
        audiences = tuple(a for a in ([audience] if isinstance(audience, str) else audience) if isinstance(a, str))
        return VerifiedToken(f"jwt:{digest}", subject, scopes_of(claims), float(claims["exp"]), audiences)


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """What a token's claims grant: its ``scope`` (RFC 8693/9068: one space-separated string), or, when it has
    none, its ``scp`` (a list of strings, as Okta and Entra ID write it, or a space-separated string); a token
    with neither may use every tool. An empty value grants no tool.

    Raises:
        TokenRejected: ``scope`` is not a string, or ``scp`` neither a string nor a list of strings.
    """
    if "scope" in claims:
        scope = claims["scope"]
        if not isinstance(scope, str):
            raise TokenRejected("the token's scope claim must be a string of space-separated scopes")
        return frozenset(scope.split())
    if "scp" in claims:
        scp = claims["scp"]
        if isinstance(scp, str):
            return frozenset(scp.split())
        if isinstance(scp, list) and all(isinstance(item, str) for item in scp):
            return frozenset(item for entry in scp for item in entry.split())
        raise TokenRejected("the token's scp claim must be a list of strings or a string of space-separated scopes")
    return ALL_TOOLS


_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}


def _fits(algorithm: str, key: Any) -> bool:
    """Whether ``key`` is of the kind ``algorithm`` signs with (an RS256 token naming an EC key does not)."""
    if algorithm.startswith(("RS", "PS")):
        return isinstance(key, rsa.RSAPublicKey)
    if algorithm in _CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _CURVES[algorithm])
    if algorithm == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


def _shown(value: object, limit: int = 40) -> str:
    """A value from a token as a refusal may quote it (in a header, in the log): its ASCII repr, cut to ``limit``
    characters."""
    text = ascii(value)
    return text if len(text) <= limit else f"{text[: limit - 4]}...'"


def _short(text: str, limit: int = 120) -> str:
    """PyJWT's reason, in ASCII without control characters and cut to ``limit`` (some reasons quote the input)."""
    text = ascii(text)[1:-1]
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
