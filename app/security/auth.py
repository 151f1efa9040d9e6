"""Authentication for the MCP endpoint: API keys and JWT bearer tokens."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pydantic import SecretStr

from app.security.tokens import JwtVerifier, TokenRejected, VerifiedToken, looks_like_jwt

__all__ = ["ApiKeyAuthenticator", "Authenticator", "Verdict"]


class ApiKeyAuthenticator:
    """Accepts a request that carries one of the configured keys.

    The key travels as ``Authorization: Bearer KEY`` (what MCP clients send) or ``X-API-Key: KEY``.
    Every configured key is compared in constant time, so timing does not reveal which prefix matched.
    """

    def __init__(self, keys: Iterable[SecretStr]) -> None:
        self._keys = tuple(key.get_secret_value().encode() for key in keys)

    @property
    def enabled(self) -> bool:
        """False when no key is configured, which means authentication is off."""
        return bool(self._keys)

    def presented_key(self, headers: Mapping[str, str]) -> str | None:
        """The key a request presents, or None."""
        authorization = headers.get("authorization", "")
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
        api_key = headers.get("x-api-key", "").strip()
        return api_key or None

    def principal(self, headers: Mapping[str, str]) -> str:
        """Who is calling, for binding sessions: a digest of the key (never the key), or ``anonymous``."""
        presented = self.presented_key(headers) if self.enabled else None
        if presented is None:
            return "anonymous"
        return "key:" + hashlib.sha256(presented.encode()).hexdigest()[:16]

    def accepts(self, headers: Mapping[str, str]) -> bool:
        """Whether the request may call the MCP endpoint."""
        if not self.enabled:
            return True
        presented = self.presented_key(headers)
        if presented is None:
            return False
        candidate = presented.encode()
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        return matched


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of authenticating one request: a principal, or the refusal to send."""

    principal: str | None  # None: refused
    status: int = 200
    message: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)


class Authenticator:
    """API keys and JWT bearer tokens (either or both); the refusals follow RFC 6750 and RFC 9728.

    A bearer credential that is one of the API keys is accepted as such; one shaped like a JWT is checked as a
    token. A 401 carries ``WWW-Authenticate: Bearer`` with the protected-resource metadata URL when tokens
    are accepted, and ``error="invalid_token"`` when a credential was sent but refused. A token that cannot
    be checked now (its issuer's keys are unreachable) is a 503 with ``Retry-After``.
    """

    def __init__(
        self,
        keys: ApiKeyAuthenticator,
        tokens: JwtVerifier | None = None,
        *,
        metadata_url: str | None = None,
        max_cached_tokens: int = 10_000,
    ) -> None:
        self._keys, self._tokens, self._metadata_url = keys, tokens, metadata_url
        self._verified: dict[str, VerifiedToken] = {}  # token -> who it speaks for, until it expires
        self._max_cached = max_cached_tokens

    @property
    def enabled(self) -> bool:
        """False when neither keys nor tokens are configured: authentication is off."""
        return self._keys.enabled or self._tokens is not None

    def presented_key(self, headers: Mapping[str, str]) -> str | None:
        """The credential a request presents, or None."""
        return self._keys.presented_key(headers)

    def _challenge(self, error: str | None = None, description: str = "") -> dict[str, str]:
        parts = ['Bearer realm="erlmcp"']
        if self._metadata_url:
            parts.append(f'resource_metadata="{self._metadata_url}"')
        if error:
            parts.append(f'error="{error}"')
            if description:
                parts.append('error_description="' + description.replace('"', "'") + '"')
        return {"WWW-Authenticate": ", ".join(parts)}

    async def authenticate(self, headers: Mapping[str, str]) -> Verdict:
        """Who is calling, or why not."""
        if not self.enabled:
            return Verdict("anonymous")
        credential = self.presented_key(headers)
        what = "an API key or a bearer token" if self._tokens and self._keys.enabled else (
            "a bearer token" if self._tokens else "a valid API key")  # fmt: skip
        if credential is None:
            return Verdict(None, 401, f"Unauthorized: send {what} as 'Authorization: Bearer ...'", self._challenge())
        if self._keys.enabled and self._keys.accepts(headers):
            return Verdict(self._keys.principal(headers))
        if self._tokens is not None and looks_like_jwt(credential):
            try:
                verified = await self._tokens.verify(credential)
            except TokenRejected as rejected:
                if rejected.status == 503:
                    return Verdict(None, 503, f"Service Unavailable: {rejected}", {"Retry-After": "30"})
                return Verdict(None, 401, f"Unauthorized: {rejected}", self._challenge("invalid_token", str(rejected)))
            self._remember(credential, verified)
            return Verdict(verified.principal)
        return Verdict(None, 401, f"Unauthorized: the credential sent is not {what}",
                       self._challenge("invalid_token", "the credential is not accepted"))  # fmt: skip

    def _remember(self, token: str, verified: VerifiedToken) -> None:
        if len(self._verified) >= self._max_cached:
            now = time.time()
            for stale in [t for t, v in self._verified.items() if v.expires_at <= now] or [next(iter(self._verified))]:
                del self._verified[stale]
        self._verified[token] = verified

    def principal(self, headers: Mapping[str, str]) -> str:
        """Who is calling, for binding sessions (after :meth:`authenticate` accepted the request)."""
        credential = self.presented_key(headers) if self.enabled else None
        if credential is None:
            return "anonymous"
        verified = self._verified.get(credential)
        if verified is not None:
            return verified.principal
        return self._keys.principal(headers)
