"""The subprotocols a WebSocket upgrade offers, and the credential one of them may carry.

A browser's ``WebSocket``, and the TS SDK's ``WebSocketClientTransport`` built on it, cannot set request headers:
the only thing such a client controls in its upgrade, besides the URL, is ``Sec-WebSocket-Protocol``. A URL would
carry a credential into every access log on its way, so the credential travels as Kubernetes carries it
(``ProtocolAuthenticator`` of k8s.io/apiserver): one more subprotocol, ``base64url.bearer.authorization.k8s.io.``
followed by the credential in base64url without padding, offered next to the subprotocol the client means to
speak. The rules are Kubernetes' own, so that a client written for one works with the other:

- every ``Sec-WebSocket-Protocol`` header is split on ``,`` and each value trimmed;
- a second bearer value is an error, and so is one that is not base64url or does not decode to UTF-8;
- a bearer value needs another subprotocol next to it (for us: ``mcp``), the one the server answers with: the
  answer names one of the offered values (RFC 6455), and must never be the one holding the credential.

The credential is what would follow ``Authorization: Bearer`` (an API key or a JWT). An upgrade that carries a
credential in a header too is refused rather than one of the two picked: which one a client meant is a guess, and
a guess about credentials is how one principal ends up acting as another.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["BEARER_PREFIX", "BadCredential", "BadOffer", "Offer", "admission_headers", "read_offer"]

BEARER_PREFIX = "base64url.bearer.authorization.k8s.io."
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")  # RFC 4648 §5 without padding ("=" cannot be in a subprotocol anyway)
_CREDENTIAL_HEADERS = ("authorization", "x-api-key")  # the headers a credential may come in (app/security/keys.py)


class BadOffer(ValueError):
    """Subprotocols the server cannot accept the upgrade with; the message says what was wrong, quoting no
    credential."""


class BadCredential(BadOffer):
    """A bearer subprotocol that carries no credential the server can read, or one that clashes with a header."""


@dataclass(frozen=True, slots=True)
class Offer:
    """What an upgrade offers: its subprotocols other than the bearer one, in order, and the credential the bearer
    one carries (None: there was none)."""

    protocols: tuple[str, ...]
    credential: str | None = None


def read_offer(headers: Iterable[str], required: str) -> Offer:
    """The offer of the ``Sec-WebSocket-Protocol`` header values ``headers``, which must hold ``required``: raises
    :class:`BadOffer` (or :class:`BadCredential`) saying what is wrong."""
    protocols: list[str] = []
    credential: str | None = None
    for header in headers:
        for value in (part.strip() for part in header.split(",")):
            if not value.startswith(BEARER_PREFIX):
                if value:
                    protocols.append(value)
                continue
            if credential is not None:
                raise BadCredential("Bad Request: two bearer subprotocols were offered; offer one")
            credential = _decoded(value.removeprefix(BEARER_PREFIX))
    if required not in protocols:
        alongside = " alongside the bearer one" if credential is not None else ""
        raise BadOffer(f"Bad Request: offer the {required} subprotocol{alongside} (Sec-WebSocket-Protocol: {required})")
    return Offer(tuple(protocols), credential)


def _decoded(encoded: str) -> str:
    """The credential of a bearer subprotocol, from its base64url (without padding)."""
    if not encoded:
        raise BadCredential(f"Bad Request: the bearer subprotocol carries no credential after {BEARER_PREFIX!r}")
    if not _BASE64URL.fullmatch(encoded) or len(encoded) % 4 == 1:  # 4n+1 characters: no whole byte
        raise BadCredential(
            "Bad Request: the bearer subprotocol is not base64url: encode the credential with the URL-safe alphabet "
            "(- and _ for + and /) and without = padding"
        )
    raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadCredential("Bad Request: the bearer subprotocol's credential is not UTF-8 once decoded") from None


def admission_headers(headers: Mapping[str, str], offer: Offer) -> Mapping[str, str]:
    """The headers to admit the upgrade with: ``headers`` as they are, or, when the offer carries a credential,
    with ``Authorization: Bearer <credential>`` added (the gate reads credentials from headers only). Raises
    :class:`BadCredential` when ``headers`` carry a credential too."""
    if offer.credential is None:
        return headers
    present = {name.lower() for name in headers}
    if any(name in present for name in _CREDENTIAL_HEADERS):
        raise BadCredential(
            "Bad Request: send one credential: a bearer subprotocol, or an Authorization or X-API-Key header, not both"
        )
    return {**headers, "authorization": f"Bearer {offer.credential}"}
