"""API-key authentication for the MCP endpoint."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping

from pydantic import SecretStr

__all__ = ["ApiKeyAuthenticator"]


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
