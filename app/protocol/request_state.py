"""Tamper-proof ``requestState`` for multi-round requests (2026-07-28 ``InputRequiredResult``).

The server keeps no state between rounds: what a handler needs later travels to the client and back inside
``requestState``. The client must not be able to change it, so the state is sealed with HMAC-SHA256 over the
method, the tool or prompt name, an expiry and the handler's own text; anything else that comes back is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable

import orjson

__all__ = ["RequestStateError", "RequestStateSealer"]


class RequestStateError(ValueError):
    """The requestState was not issued by this server for this request, or it expired."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class RequestStateSealer:
    """Seals and opens request states with one secret key (shared by every replica of a deployment)."""

    def __init__(self, key: bytes, *, ttl_seconds: float = 3600.0, clock: Callable[[], float] = time.time) -> None:
        if len(key) < 32:
            raise ValueError("the request-state key must be at least 32 bytes")
        self._key = key
        self._ttl = ttl_seconds
        self._clock = clock

    def _mac(self, payload: bytes, scope: str) -> bytes:
        return hmac.new(self._key, scope.encode() + b"\x00" + payload, hashlib.sha256).digest()

    def seal(self, state: str, scope: str) -> str:
        """The opaque token for ``state``, valid only for requests of ``scope`` (method and name)."""
        payload = orjson.dumps({"s": state, "e": int(self._clock() + self._ttl)})
        return f"{_b64(payload)}.{_b64(self._mac(payload, scope))}"

    def open(self, token: str, scope: str) -> str:
        """The state sealed in ``token``.

        Raises:
            RequestStateError: the token was changed, belongs to another request, is malformed, or expired.
        """
        try:
            encoded, _, mac = token.partition(".")
            payload = _unb64(encoded)
            valid = hmac.compare_digest(_unb64(mac), self._mac(payload, scope))
        except (ValueError, TypeError) as exc:
            raise RequestStateError("requestState integrity check failed") from exc
        if not valid:
            raise RequestStateError("requestState integrity check failed")
        data = orjson.loads(payload)
        if not isinstance(data, dict) or not isinstance(data.get("s"), str) or not isinstance(data.get("e"), int):
            raise RequestStateError("requestState integrity check failed")
        if data["e"] < self._clock():
            raise RequestStateError("requestState expired; start the request again without it")
        return str(data["s"])
