"""Encrypted, caller-bound ``requestState`` for multi-round requests (2026-07-28 ``InputRequiredResult``).

The server keeps no state between rounds: what a handler needs later travels to the client and back inside
``requestState``. The client must neither read it (a handler may keep what a user answered) nor change it, nor hand
it to someone else. So the state is encrypted with AES-256-GCM under a key derived (HKDF-SHA256) from the
configured request-state key, with a random nonce; the associated data binds it to the method, the value of the
method's name field (the tool, prompt or resource), the principal (the API key's or token's name), the session when
there is one, and an expiry. Anything else that comes back is refused: another caller's state, another tool's, an
expired one, or one changed by a single bit.

Token: ``v1.<expiry, unix seconds>.<base64url(nonce ‖ ciphertext ‖ tag)>``. The expiry is in clear so that an
expired state can be named as such; changing it breaks the tag.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["RequestStateError", "RequestStateSealer", "StateBinding"]

_VERSION = "v1"
_NONCE_BYTES = 12  # AES-GCM's standard nonce; random, so a key seals at most about 2**32 states safely
_HKDF_INFO = b"erlmcp requestState v1 AES-256-GCM"
_NOT_OURS = (
    "requestState was not issued for this request: it belongs to another caller, or to another method, tool, "
    "prompt or resource, or it was changed; start the request again without it"
)


class RequestStateError(ValueError):
    """The requestState was not issued by this server for this caller and request, or it expired."""


@dataclass(frozen=True, slots=True)
class StateBinding:
    """What a requestState is sealed to: the request's method, the value of its name field (``name`` of a tool or
    prompt, ``uri`` of a resource), the caller's principal (None: no authentication) and session (None: none, as
    in the stateless 2026-07-28 revision)."""

    method: str
    name: str
    principal: str | None
    session: str | None = None

    def associated_data(self, expires: int) -> bytes:
        """The AEAD's associated data: every field, length-prefixed so that no two bindings encode alike."""
        fields = (
            _VERSION,
            self.method,
            self.name,
            _optional(self.principal),
            _optional(self.session),
            str(expires),
        )
        return b"".join(len(data).to_bytes(4, "big") + data for data in (f.encode() for f in fields))


def _optional(value: str | None) -> str:
    # "-" alone marks None; a present value is prefixed, so a principal named "-" differs from no principal.
    return "-" if value is None else f"+{value}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    """The bytes of a token's base64url, spelled exactly as :func:`_b64` spells them: the last character's unused bits
    would otherwise let several spellings stand for one token (ValueError for any other)."""
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("not the canonical base64url of its bytes")
    return data


class RequestStateSealer:
    """Seals and opens request states with one secret key (shared by every replica of a deployment).

    Every server makes one at start, yet only a multi-round request of the 2026-07-28 revision uses it: the
    cipher (and the ``cryptography`` package) is made at the first seal or open, not before.

    Raises:
        ValueError: (at construction) the key is shorter than 32 bytes.
    """

    def __init__(self, key: bytes, *, ttl_seconds: float = 3600.0, clock: Callable[[], float] = time.time) -> None:
        if len(key) < 32:
            raise ValueError("the request-state key must be at least 32 bytes")
        self._key: bytes | None = key
        self._cipher: AESGCM | None = None
        self._ttl = ttl_seconds
        self._clock = clock

    @property
    def derived(self) -> bool:
        """Whether the cipher has been made (the key derived): not before the first seal or open."""
        return self._cipher is not None

    def _aead(self) -> AESGCM:
        """The AES-256-GCM cipher under the key derived (HKDF-SHA256) from the configured one; made once."""
        if self._cipher is None:
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
            from cryptography.hazmat.primitives.kdf.hkdf import HKDF

            assert self._key is not None
            derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(self._key)
            self._cipher, self._key = AESGCM(derived), None  # the configured key is not kept once derived
        return self._cipher

    def seal(self, state: str, binding: StateBinding) -> str:
        """The opaque token for ``state``, valid only for requests of ``binding`` until the expiry."""
        expires = int(self._clock() + self._ttl)
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead().encrypt(nonce, state.encode(), binding.associated_data(expires))
        return f"{_VERSION}.{expires}.{_b64(nonce + sealed)}"

    def open(self, token: str, binding: StateBinding) -> str:
        """The state sealed in ``token``.

        Raises:
            RequestStateError: the token is malformed, expired, was changed, or belongs to another binding.
        """
        not_ours = RequestStateError(_NOT_OURS)
        version, _, rest = token.partition(".")
        expiry, _, encoded = rest.partition(".")
        if version != _VERSION or not expiry.isascii() or not expiry.isdigit() or not encoded:
            raise not_ours
        expires = int(expiry)
        try:
            data = _unb64(encoded)
        except (binascii.Error, ValueError):
            raise not_ours from None
        if len(data) <= _NONCE_BYTES:
            raise not_ours
        if expires < self._clock():
            raise RequestStateError("requestState expired; start the request again without it")
        aead = self._aead()
        from cryptography.exceptions import InvalidTag  # loaded with the cipher, just above

        try:
            plain = aead.decrypt(data[:_NONCE_BYTES], data[_NONCE_BYTES:], binding.associated_data(expires))
        except InvalidTag:
            raise not_ours from None
        try:
            return plain.decode()
        except UnicodeDecodeError:  # only this server seals, and only text: cannot happen without the key
            raise not_ours from None
