"""The one gate every message passes, whatever its transport and protocol era.

Each transport calls the gate at the same points: :meth:`Gate.admit` when a caller connects (or sends an HTTP
request): Host/Origin and credentials; :meth:`Gate.oversized` when a message is over the size limit; and
:meth:`Gate.screen` for every message it read: the caller's request rate (one token per request, batch items
included; over HTTP every request to the server takes at least one) and its scopes (a tools/call of a tool the
caller may not use). The protocol core asks :meth:`Gate.may_initialize` before it opens a session, passes
:meth:`Gate.session_quota` to the session store, and asks :meth:`Gate.quota_exceeded` when the store refuses one
for the caller's quota.

Each principal is held to its own limits (:meth:`Gate.limits`): the server's defaults, with what its API key (the
key file as it is now) or its token's audience sets instead.

A long-lived connection (a legacy SSE stream, a GET /mcp stream, a WebSocket, an authenticated TCP connection)
holds one of its client's connection slots from its admission until it ends (:meth:`Gate.hold`, and
:meth:`Slot.release` in the transport's ``finally``): a client holds at most ``max_connections`` at once on this
replica. A connection's credential is checked again at each message it sends (:meth:`Gate.revoked`, within
:meth:`Gate.screen`): once its API key left the key file or its token's ``exp`` passed, the message is refused
with a refusal that ends the connection (:attr:`Refusal.closes`), which the transport closes and reports
(:meth:`Gate.cut`).

The caller is resolved once per request (an HTTP request) or message (on a connection): the key file's freshness
is checked once (:meth:`ApiKeyAuthenticator.current`; at most once a second it is looked at), at admission for an
HTTP request, whose one message is then screened against the file as admission found it, and at each message of a
connection that holds a slot. A :class:`Caller` carries the key it was admitted with and the version of the key
file it was found in: while that version is current, its key is still there and its limits are the ones built for
that key when the version was read; only after the file changed is the key looked up again by name.

A refusal is one :class:`Refusal`: an HTTP status and headers for HTTP, and the same JSON-RPC error for every
transport, carrying the id of the message it answers.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from app.jsonrpc import InvalidParams, InvalidRequest, JsonRpcError, Message, RateLimited, RequestId, error_response
from app.security.auth import Authenticator, Verdict
from app.security.clients import Network, client_address
from app.security.keys import ALL_TOOLS, ApiKey, KeySet, allows_tool
from app.security.limits import NO_OVERRIDES, LimitOverrides, Limits
from app.security.origin import OriginPolicy
from app.security.ratelimit import LimiterUnavailable, RateLimiter, WindowLimiter
from app.sessions import SessionQuotaError

if TYPE_CHECKING:
    from app.observability.metrics import Metrics  # the metrics' owner has loaded prometheus_client

__all__ = ["Caller", "Gate", "Refusal"]

log = structlog.get_logger(__name__)

_LIMITER_RETRY_SECONDS = 1.0  # while the shared budget cannot be read, it is tried again this often
# A client at its connection cap gets a slot back only when one of its own connections ends: it is told to try
# again after this long (a guess; nothing is reserved for it).
_CAP_RETRY_SECONDS = 5
_SAME_LOOK_SECONDS = 1.0  # an admission's look at the key file stands for its request's screening this long
_MOST_OVERRIDES = 256  # distinct limit overrides (token audiences, keys gone from the file) kept applied


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a message: the principal (``key:NAME``, a token's subject, ``anonymous``), what it may use, the
    client's address (after trusted proxies), and the limits its credential set when it was admitted."""

    principal: str
    scopes: frozenset[str] = ALL_TOOLS
    address: str | None = None
    limits: LimitOverrides = NO_OVERRIDES
    credential: str | None = field(default=None, repr=False)  # the digest of its API key, checked at each message
    expires_at: float | None = None  # its token's exp (with the leeway), seconds since the epoch
    key: ApiKey | None = field(default=None, repr=False, compare=False)  # the API key it was admitted with
    generation: int = -1  # the version of the key file (KeySet.generation) its key was found in; -1: none

    @property
    def client(self) -> str:
        """Whose budget and session quota a message counts against: the principal, the address when anonymous."""
        return self.principal if self.principal != "anonymous" else f"ip:{self.address or '-'}"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a message (or a connection) is refused: the HTTP status and headers, and the JSON-RPC error."""

    status: int
    error: JsonRpcError
    headers: Mapping[str, str] = field(default_factory=dict)
    # Set when the refusal ends the connection it answers (its credential is gone): the reason, as counted in
    # erlmcp_connections_refused_total (credential_revoked, credential_expired).
    closes: str | None = None

    def answer(self, request_id: RequestId | None) -> dict[str, Any]:
        """The JSON-RPC error response to the message with ``request_id``."""
        return error_response(request_id, self.error)


def _retry(wait: float) -> int:
    return max(1, math.ceil(wait))


class Slot:
    """One long-lived connection a client holds open (:meth:`Gate.hold`): :meth:`release` it when the connection
    ends (again: nothing happens), so that the client may open another."""

    __slots__ = ("_client", "_held", "_released")

    def __init__(self, held: dict[str, int], client: str) -> None:
        self._held, self._client, self._released = held, client, False
        held[client] = held.get(client, 0) + 1

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        left = self._held.get(self._client, 0) - 1
        if left > 0:
            self._held[self._client] = left
        else:
            self._held.pop(self._client, None)


class Gate:
    """Authentication, Origin/Host, rate tokens, the initialize limit, session quotas, size and scope checks."""

    def __init__(
        self,
        *,
        authenticator: Authenticator,
        origins: OriginPolicy,
        metrics: Metrics,
        max_message_bytes: int,
        defaults: Limits,
        limiter: RateLimiter | None = None,
        trusted_proxies: Sequence[Network] = (),
        max_connections: int = 0,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.authenticator = authenticator
        self._clock = clock
        self._keys = authenticator.api_keys
        # The caller admitted last, and when, until its first screen or hold: an HTTP request's one message is
        # screened against the key file as its admission found it (no second look) when the admission was less
        # than a second ago (how often the file is looked at anyway); a connection looks at each message.
        self._admitted: Caller | None = None
        self._admitted_at = 0.0
        # The caller made last, and the verdict it was made from: the next admission with the same verdict (the
        # same object: an API key's is made once per version of the key file, the anonymous one once) from the same
        # address is the same caller, not a new one. A caller that holds a connection slot is not handed out again
        # (:meth:`hold`), so a connection's caller is never an HTTP request's.
        self._made: Caller | None = None
        self._made_from: Verdict | None = None
        self._origins = origins
        self._metrics = metrics
        self.max_message_bytes = max_message_bytes
        self._limiter = limiter
        self._limiter_failing, self._limiter_retry_at = False, 0.0
        self._defaults = defaults
        # The limits of each key of one version of the key file, built when that version is first used.
        self._key_limits_of: KeySet | None = None
        self._key_limits: dict[str, Limits] = {}
        self._applied: dict[LimitOverrides, Limits] = {NO_OVERRIDES: defaults}  # other overrides: token audiences
        self._initialize_limit = WindowLimiter(defaults.initialize)
        self._trusted_proxies = tuple(trusted_proxies)
        self._max_connections = max_connections  # per client, on this replica; 0: no cap
        self._held: dict[str, int] = {}  # open long-lived connections per client (Caller.client)
        self._wall_clock = wall_clock  # tokens expire by the epoch

    # -- connecting ------------------------------------------------------------------------------------------

    async def admit(self, headers: Mapping[str, str], peer: str | None, *, browser: bool = True) -> Caller | Refusal:
        """Who is calling (Host/Origin first, for what a browser can reach; then the credentials the headers
        carry), or why not."""
        refused = self._origins.check(headers) if browser else None
        if refused is not None:
            return Refusal(refused.status, InvalidRequest(refused.message))
        verdict = await self.authenticator.authenticate(headers)
        if verdict.principal is None:
            self._metrics.auth_failures.inc()
            return Refusal(verdict.status, InvalidRequest(verdict.message), verdict.headers)
        address = client_address(peer, headers, self._trusted_proxies) if verdict.principal == "anonymous" else peer
        caller = self._made
        if caller is None or verdict is not self._made_from or address != caller.address:
            caller = self._made = Caller(
                verdict.principal,
                verdict.scopes,
                address,
                verdict.limits,
                credential=verdict.credential,
                expires_at=verdict.expires_at,
                key=verdict.key,
                generation=verdict.generation,
            )
            self._made_from = verdict
        self._admitted_at = self._clock()
        self._admitted = caller
        return caller

    async def admit_key(self, key: str | None, peer: str | None) -> Caller | Refusal:
        """The same for a transport without headers (TCP), whose client presents its key in the first message; no
        browser reaches it, so there is no Host or Origin to check."""
        return await self.admit({"authorization": f"Bearer {key}"} if key else {}, peer, browser=False)

    # -- long-lived connections -----------------------------------------------------------------------------

    def hold(self, caller: Caller, transport: str) -> Slot | Refusal:
        """A connection slot for a long-lived connection of the caller's client (its principal; its address when
        anonymous), or the 429 of a client that holds ``max_connections`` already (counted and logged). The
        transport releases the slot when the connection ends, whatever ends it. From now on, each message the
        caller sends looks at the key file (the connection may last long after its admission)."""
        if self._admitted is caller:
            self._admitted = None
        if self._made is caller:
            self._made = None
        cap = self._max_connections
        if cap and self._held.get(caller.client, 0) >= cap:
            self._metrics.connection_refused(transport, "per_principal_cap")
            log.info("connection refused: over the per-principal cap", transport=transport, client=caller.client,
                     limit=cap)  # fmt: skip
            why = (
                f"Too Many Requests: this client holds {cap} open connections (event streams, WebSockets, TCP "
                "connections), the most it may hold on this server; close one before opening another"
            )
            limited = RateLimited(why, data={"limit": cap, "retryAfter": _CAP_RETRY_SECONDS})
            return Refusal(429, limited, {"Retry-After": str(_CAP_RETRY_SECONDS)})
        return Slot(self._held, caller.client)

    def revoked(self, caller: Caller) -> Refusal | None:
        """The refusal of a connection whose credential is gone since it was admitted: its API key is no longer
        in the key file (or has another secret now), or its token's ``exp`` (with the leeway) has passed. The key
        file's freshness is checked; the key is looked up only when the file changed since the caller's admission."""
        return self._revoked(caller, self._keys.current())

    def _revoked(self, caller: Caller, keys: KeySet) -> Refusal | None:
        if caller.credential is not None and caller.generation != keys.generation and self._key_gone(caller, keys):
            why = "Unauthorized: the API key of this connection was revoked; connect again with a valid key"
            challenge = self.authenticator.challenge("invalid_token", "the API key was revoked")
            return Refusal(401, InvalidRequest(why), challenge, closes="credential_revoked")
        if caller.expires_at is not None and self._wall_clock() >= caller.expires_at:
            why = "Unauthorized: the bearer token of this connection has expired; connect again with a fresh token"
            challenge = self.authenticator.challenge("invalid_token", "the token has expired")
            return Refusal(401, InvalidRequest(why), challenge, closes="credential_expired")
        return None

    def cut(self, transport: str, refusal: Refusal) -> None:
        """Count and log a connection ended by a refusal that closes it (:attr:`Refusal.closes`)."""
        reason = refusal.closes or "refused"
        self._metrics.connection_refused(transport, reason)
        log.info("connection cut", transport=transport, reason=reason)

    # -- limits ----------------------------------------------------------------------------------------------

    @staticmethod
    def _key_gone(caller: Caller, keys: KeySet) -> bool:
        assert caller.credential is not None
        key = caller.key
        name = key.name if key is not None else caller.principal.removeprefix("key:")
        return (key is not None or name != caller.principal) and not keys.holds(name, caller.credential)

    def limits(self, caller: Caller) -> Limits:
        """The limits the caller is held to now: the server's defaults, with what its key sets instead (as the key
        file says now, so a changed file applies to connections already open) or its token's audience set. The
        key file's freshness is checked; within a request, :meth:`take`, :meth:`may_initialize` and
        :meth:`session_quota` use the file as the request's admission or screening found it."""
        self._keys.current()
        return self._limits(caller)

    def _limits(self, caller: Caller) -> Limits:
        """:meth:`limits` without a look at the key file: each key's limits are built once per version of it."""
        keys = self._keys.loaded
        if keys is not self._key_limits_of:
            self._key_limits_of = keys
            self._key_limits = {key.name: key.limits.applied_to(self._defaults) for key in keys.keys}
        key = caller.key
        if key is not None:
            found = self._key_limits.get(key.name)
        elif caller.principal.startswith("key:"):
            found = self._key_limits.get(caller.principal[4:])
        else:
            found = None
        return found if found is not None else self._applied_overrides(caller.limits)

    def _applied_overrides(self, overrides: LimitOverrides) -> Limits:
        """The defaults with ``overrides`` (a token audience's, a key's gone from the file) applied, built once."""
        applied = self._applied.get(overrides)
        if applied is None:
            if len(self._applied) >= _MOST_OVERRIDES:
                self._applied = {NO_OVERRIDES: self._defaults}
            applied = self._applied[overrides] = overrides.applied_to(self._defaults)
        return applied

    # -- every message ---------------------------------------------------------------------------------------

    def oversized(self) -> Refusal:
        """The refusal of a message over the size limit."""
        limit = self.max_message_bytes
        return Refusal(413, InvalidRequest(f"Invalid Request: the message is too large (the limit is {limit} bytes)"))

    async def screen(self, caller: Caller, message: Message) -> Refusal | None:
        """The checks of one message the caller sent: its rate token (every request takes one, ``initialize``
        included; notifications and responses go free) and its scopes for a tools/call. First of all, whether the
        caller's credential is still valid: a connection admitted once sends many messages (the message of an HTTP
        request is checked against the key file as its admission found it, no second look, unless its body took a
        second or more to come)."""
        recent = False
        if self._admitted is caller:
            self._admitted = None
            recent = self._clock() - self._admitted_at < _SAME_LOOK_SECONDS
        gone = self._revoked(caller, self._keys.loaded if recent else self._keys.current())
        if gone is not None:
            return gone
        if not (message.is_notification or message.is_response):
            limits = self._budget(caller)
            if limits is not None:  # (no budget to take from: no coroutine to await for it)
                limited = await self._take(caller, 1, limits)
                if limited is not None:
                    return limited
        return self.out_of_scope(caller, message)

    async def take(self, caller: Caller, cost: int = 1) -> Refusal | None:
        """Take ``cost`` request tokens from the caller's budget, or the 429 saying when to come back. Should the
        shared budget in Redis be unreachable, requests go on unlimited and the log says so. The caller's limits
        are those of the key file as the request's admission (or the message's screening) found it."""
        limits = self._budget(caller)
        return None if limits is None else await self._take(caller, cost, limits)

    def _budget(self, caller: Caller) -> Limits | None:
        """The caller's limits when it has a request budget to take tokens from; None when nothing limits its rate
        (no limiter, or a rate of 0)."""
        limits = self._limits(caller)
        return None if self._limiter is None or limits.rate <= 0 else limits

    async def _take(self, caller: Caller, cost: int, limits: Limits) -> Refusal | None:
        assert self._limiter is not None  # (a budget is only found with one)
        loop = asyncio.get_running_loop()
        if loop.time() < self._limiter_retry_at:  # it failed a moment ago: no request waits on it again yet
            return None
        try:
            wait = await self._limiter.take(caller.client, cost, rate=limits.rate, burst=limits.burst)
        except (LimiterUnavailable, OSError) as exc:
            if not self._limiter_failing:
                log.warning("rate limit not enforced: the shared budget cannot be read", error=str(exc))
            self._limiter_failing, self._limiter_retry_at = True, loop.time() + _LIMITER_RETRY_SECONDS
            return None
        if self._limiter_failing:
            log.info("rate limit enforced again: the shared budget can be read")
            self._limiter_failing = False
        if wait <= 0:
            return None
        self._metrics.rate_limited.inc()
        if math.isinf(wait):  # no wait would let it through: too large, as a batch over the item limit is
            message = f"Invalid Request: a batch of {cost} requests is more than the {limits.burst} this client may "
            return Refusal(
                413,
                InvalidRequest(f"{message}send at once; send smaller batches", data={"maxBatchItems": limits.burst}),
            )
        retry = _retry(wait)
        limited = RateLimited(
            f"Too Many Requests: this client is over its request rate; retry in {retry} s", data={"retryAfter": retry}
        )
        return Refusal(429, limited, {"Retry-After": str(retry)})

    def out_of_scope(self, caller: Caller, message: Message) -> Refusal | None:
        """403 ``insufficient_scope`` (RFC 6750) for a tools/call of a tool the caller's scopes do not cover. Whether
        the tool exists or not, the refusal is the same: a scoped key learns nothing of the tools it may not use."""
        if message.method != "tools/call" or "*" in caller.scopes:
            return None
        name = message.params.get("name")
        if not isinstance(name, str) or allows_tool(caller.scopes, name):
            return None
        challenge = f'Bearer realm="erlmcp", error="insufficient_scope", scope="tools:{name}"'
        why = f"Unknown tool: {name!r}: this client's scopes do not include tools:{name}"
        forbidden = InvalidParams(why, data={"name": name})
        return Refusal(403, forbidden, {"WWW-Authenticate": challenge})

    # -- sessions --------------------------------------------------------------------------------------------

    def may_initialize(self, caller: Caller) -> Refusal | None:
        """The per-caller initialize limit: None when the caller may open a session now (it is counted). Asked
        after the initialize was screened, so the key file is as that found it."""
        wait = self._initialize_limit.allow(
            f"{caller.principal}@{caller.address or '-'}", self._limits(caller).initialize
        )
        if wait <= 0:
            return None
        retry = _retry(wait)
        limited = RateLimited(
            f"Too Many Requests: initialize is limited per client; retry in {retry} s", data={"retryAfter": retry}
        )
        return Refusal(429, limited, {"Retry-After": str(retry)})

    def session_quota(self, caller: Caller) -> int:
        """The most sessions the caller's principal may hold at once (0: no quota), for the session store to enforce
        (the key file as the initialize's screening found it)."""
        return self._limits(caller).sessions

    @staticmethod
    def quota_exceeded(exc: SessionQuotaError) -> Refusal:
        """The refusal of a session over the caller's quota."""
        return Refusal(429, RateLimited(f"Too Many Requests: {exc}", data={"limit": exc.limit}))
