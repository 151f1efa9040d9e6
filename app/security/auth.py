"""Authentication for the MCP endpoint: API keys and JWT bearer tokens.

JWT support (:mod:`app.security.tokens`: PyJWT, cryptography) is loaded only by whoever configures tokens; this
module needs none of it to check API keys.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from app.file_stamp import file_stamp
from app.security.keys import ALL_TOOLS, ApiKey, KeyFileError, KeySet, read_key_file
from app.security.limits import NO_OVERRIDES, LimitOverrides

if TYPE_CHECKING:
    from app.security.tokens import JwtVerifier

__all__ = ["ApiKeyAuthenticator", "Authenticator", "Verdict", "limits_of", "looks_like_jwt"]

log = structlog.get_logger(__name__)


def limits_of(keys: Iterable[ApiKey]) -> dict[str, str]:
    """The keys that set limits of their own, and those limits as written (for the log: no key is in them)."""
    return {key.name: str(key.limits) for key in keys if str(key.limits)}


def looks_like_jwt(credential: str) -> bool:
    """Whether a bearer credential has the shape of a JWT (three base64url parts)."""
    return credential.count(".") == 2 and all(credential.split("."))


class ApiKeyAuthenticator:
    """Accepts a request that carries one of the configured keys, and says whose key it is.

    The key travels as ``Authorization: Bearer KEY`` (what MCP clients send) or ``X-API-Key: KEY``. Only the
    keys' SHA-256 digests are kept; a presented key is found by its digest in a table of them (see
    :meth:`KeySet.match`). With ``source``, the file is read again when it changes (checked at most once a
    second), so a rotated Secret takes effect without a restart: each version read is a new :class:`KeySet`
    with the next generation. A file that breaks while the server runs keeps the keys it had, and the log says why.
    """

    def __init__(
        self, keys: Iterable[ApiKey], *, source: Path | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        # The keys as last read, without looking at the file: for what follows a :meth:`current` of the same request
        # or message (an attribute, not a property: read at every request; only this class sets it).
        self.loaded = KeySet.of(keys, 0)
        self._source, self._clock = source, clock
        self._checked = clock() if source is not None else 0.0
        self._stamp = file_stamp(source) if source is not None else None

    def _reload_if_changed(self) -> None:
        assert self._source is not None  # (asked by current() when the file is due to be looked at)
        self._checked = self._clock()
        stamp = file_stamp(self._source)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            keys = read_key_file(self._source)
        except KeyFileError as exc:
            log.error("the API key file changed but cannot be used; the previous keys stay", reason=str(exc))
            return
        if not keys:
            log.error("the API key file changed and holds no key; the previous keys stay", path=str(self._source))
            return
        self.loaded = KeySet.of(keys, self.loaded.generation + 1)
        log.info("API keys reloaded", names=[key.name for key in keys], limits=limits_of(keys))

    def current(self) -> KeySet:
        """The keys as the file holds them now: the file's freshness is checked (a clock read; at most once a second
        it is looked at, and read again when it changed). Once per request or message is enough."""
        if self._source is not None and self._clock() - self._checked >= 1.0:  # (due: one frame more)
            self._reload_if_changed()
        return self.loaded

    @property
    def enabled(self) -> bool:
        """False when no key is configured, which means authentication is off."""
        return bool(self.loaded.keys)

    def presented_key(self, headers: Mapping[str, str]) -> str | None:
        """The key a request presents, or None."""
        authorization = headers.get("authorization", "")
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
        api_key = headers.get("x-api-key", "").strip()
        return api_key or None

    def limits(self, name: str) -> LimitOverrides | None:
        """The limits the key named ``name`` sets now (the file is read again if it changed); None: no such key."""
        key = self.current().by_name.get(name)
        return None if key is None else key.limits

    def holds(self, name: str, digest: str) -> bool:
        """Whether the key named ``name`` with this digest is still accepted (the file is read again if it changed):
        False once it was taken out of the file, or given another secret."""
        return self.current().holds(name, digest)

    def match(self, headers: Mapping[str, str]) -> ApiKey | None:
        """The configured key the request presents, or None."""
        held = self.current()
        presented = self.presented_key(headers)
        return None if presented is None else held.match(presented)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of authenticating one request: a principal, or the refusal to send."""

    principal: str | None  # None: refused
    scopes: frozenset[str] = ALL_TOOLS  # what the principal may use (tools:NAME, tools:*, *)
    limits: LimitOverrides = NO_OVERRIDES  # what its key or token audience sets instead of the defaults
    status: int = 200
    message: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    credential: str | None = field(default=None, repr=False)  # an API key's digest: is it still in the file?
    expires_at: float | None = None  # a token's exp (with the clock leeway), in seconds since the epoch
    key: ApiKey | None = field(default=None, repr=False)  # the API key it presented
    generation: int = -1  # the version of the key file (KeySet.generation) that key was found in


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
        audience_limits: Sequence[tuple[str, LimitOverrides]] = (),
        token_leeway_seconds: float = 0.0,
    ) -> None:
        self._keys, self._tokens, self._metadata_url = keys, tokens, metadata_url
        self._leeway = token_leeway_seconds  # a token is accepted this long past its exp (clock skew)
        self._audience_limits = tuple(audience_limits)  # in order: the first audience a token carries applies
        # The verdict of each API key (by digest) of one version of the key file: the same for every request that
        # presents the key, so it is made once (at most one per key in the file).
        self._verdicts_of: KeySet | None = None
        self._verdicts: dict[str, Verdict] = {}

    @property
    def enabled(self) -> bool:
        """False when neither keys nor tokens are configured: authentication is off."""
        return self._keys.enabled or self._tokens is not None

    @property
    def api_keys(self) -> ApiKeyAuthenticator:
        """The API keys (no key at all when only tokens are accepted)."""
        return self._keys

    def presented_key(self, headers: Mapping[str, str]) -> str | None:
        """The credential a request presents, or None."""
        return self._keys.presented_key(headers)

    def key_limits(self, principal: str) -> LimitOverrides | None:
        """The limits an API key principal's key sets now; None for other principals and keys no longer there."""
        name = principal.removeprefix("key:")
        return self._keys.limits(name) if name != principal and self._keys.enabled else None

    def key_revoked(self, principal: str, digest: str) -> bool:
        """Whether the API key a connection of ``principal`` was admitted with (its ``digest``) is no longer
        accepted: taken out of the key file, or given another secret."""
        name = principal.removeprefix("key:")
        return name != principal and not self._keys.holds(name, digest)

    def token_limits(self, audiences: Sequence[str]) -> LimitOverrides:
        """The limits of the first configured audience among a token's ``aud`` values (none: the defaults)."""
        return next((limits for audience, limits in self._audience_limits if audience in audiences), NO_OVERRIDES)

    def challenge(self, error: str | None = None, description: str = "") -> dict[str, str]:
        """The ``WWW-Authenticate`` header of a 401 (RFC 6750), with ``error`` when a credential was refused."""
        parts = ['Bearer realm="erlmcp"']
        if self._metadata_url:
            parts.append(f'resource_metadata="{self._metadata_url}"')
        if error:
            parts.append(f'error="{error}"')
            if description:
                parts.append('error_description="' + description.replace('"', "'") + '"')
        return {"WWW-Authenticate": ", ".join(parts)}

    def _wanted(self) -> str:
        """What a refused request should have sent, for its 401."""
        if self._tokens is None:
            return "a valid API key"
        return "an API key or a bearer token" if self._keys.enabled else "a bearer token"

    def _key_verdict(self, key: ApiKey, held: KeySet) -> Verdict:
        """The verdict of a request that presents ``key``, found in ``held``: made at the key's first request under
        this version of the key file, then the same object."""
        if held is not self._verdicts_of:
            self._verdicts_of, self._verdicts = held, {}
        verdict = self._verdicts.get(key.digest)
        if verdict is None:
            verdict = self._verdicts[key.digest] = Verdict(
                key.principal, key.scopes, key.limits, credential=key.digest, key=key, generation=held.generation
            )
        return verdict

    async def authenticate(self, headers: Mapping[str, str]) -> Verdict:
        """Who is calling, or why not. The key file's freshness is checked once (:meth:`ApiKeyAuthenticator.current`),
        and the verdict carries the key found and the version of the file it was found in."""
        keys = self._keys
        enabled = keys.enabled
        if not enabled and self._tokens is None:
            return _ANONYMOUS
        credential = keys.presented_key(headers)
        if credential is None:
            why = f"Unauthorized: send {self._wanted()} as 'Authorization: Bearer ...'"
            return Verdict(None, status=401, message=why, headers=self.challenge())
        if enabled:
            held = keys.current()
            key = held.match(credential)
            if key is not None:
                return self._key_verdict(key, held)
        if self._tokens is not None and looks_like_jwt(credential):
            from app.security.tokens import TokenRejected  # loaded already: whoever made the verifier imported it

            try:
                verified = await self._tokens.verify(credential)
            except TokenRejected as rejected:
                if rejected.status == 503:
                    return Verdict(None, status=503, message=f"Service Unavailable: {rejected}",
                                   headers={"Retry-After": "30"})  # fmt: skip
                log.info("bearer token refused", reason=str(rejected))  # short, and quotes none of the token
                return Verdict(None, status=401, message=f"Unauthorized: {rejected}",
                               headers=self.challenge("invalid_token", str(rejected)))  # fmt: skip
            limits = self.token_limits(verified.audiences)
            expires_at = verified.expires_at + self._leeway
            return Verdict(verified.principal, verified.scopes, limits, expires_at=expires_at)  # no scope: ALL_TOOLS
        return Verdict(None, status=401, message=f"Unauthorized: the credential sent is not {self._wanted()}",
                       headers=self.challenge("invalid_token", "the credential is not accepted"))  # fmt: skip


_ANONYMOUS = Verdict("anonymous")  # authentication is off: every request is this
