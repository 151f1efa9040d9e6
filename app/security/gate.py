"""The one gate every message passes, whatever its transport and protocol era.

Each transport calls the gate at the same points: :meth:`Gate.admit` when a caller connects (or sends an HTTP
request): Host/Origin and credentials; :meth:`Gate.oversized` when a message is over the size limit; and
:meth:`Gate.screen` for every message it read: the caller's request rate (one token per request, batch items
included; over HTTP every request to the server takes at least one) and its scopes (a tools/call of a tool the
caller may not use). The protocol core asks :meth:`Gate.may_initialize` before it opens a session and
:meth:`Gate.quota_exceeded` when the session store refuses one for the caller's quota.

A refusal is one :class:`Refusal`: an HTTP status and headers for HTTP, and the same JSON-RPC error for every
transport, carrying the id of the message it answers.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from redis.exceptions import RedisError

from app.jsonrpc import InvalidParams, InvalidRequest, JsonRpcError, Message, RateLimited, RequestId, error_response
from app.observability.metrics import Metrics
from app.security.auth import Authenticator
from app.security.clients import Network, client_address
from app.security.keys import ALL_TOOLS, allows_tool
from app.security.origin import OriginPolicy
from app.security.ratelimit import RateLimiter, WindowLimiter
from app.sessions import SessionQuotaError

__all__ = ["Caller", "Gate", "Refusal"]

log = structlog.get_logger(__name__)

_LIMITER_RETRY_SECONDS = 1.0  # while the shared budget cannot be read, it is tried again this often


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a message: the principal (``key:NAME``, a token's subject, ``anonymous``), what it may use, and
    the client's address (after trusted proxies)."""

    principal: str
    scopes: frozenset[str] = ALL_TOOLS
    address: str | None = None

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

    def answer(self, request_id: RequestId | None) -> dict[str, Any]:
        """The JSON-RPC error response to the message with ``request_id``."""
        return error_response(request_id, self.error)


def _retry(wait: float) -> int:
    return max(1, math.ceil(wait))


class Gate:
    """Authentication, Origin/Host, rate tokens, the initialize limit, session quotas, size and scope checks."""

    def __init__(
        self,
        *,
        authenticator: Authenticator,
        origins: OriginPolicy,
        metrics: Metrics,
        max_message_bytes: int,
        limiter: RateLimiter | None = None,
        initialize_per_minute: int = 60,
        trusted_proxies: Sequence[Network] = (),
    ) -> None:
        self.authenticator = authenticator
        self._origins = origins
        self._metrics = metrics
        self.max_message_bytes = max_message_bytes
        self._limiter = limiter
        self._limiter_failing, self._limiter_retry_at = False, 0.0
        self._initialize_limit = WindowLimiter(initialize_per_minute)
        self._trusted_proxies = tuple(trusted_proxies)

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
        return Caller(verdict.principal, verdict.scopes, address)

    async def admit_key(self, key: str | None, peer: str | None) -> Caller | Refusal:
        """The same for a transport without headers (TCP), whose client presents its key in the first message; no
        browser reaches it, so there is no Host or Origin to check."""
        return await self.admit({"authorization": f"Bearer {key}"} if key else {}, peer, browser=False)

    # -- every message ---------------------------------------------------------------------------------------

    def oversized(self) -> Refusal:
        """The refusal of a message over the size limit."""
        limit = self.max_message_bytes
        return Refusal(413, InvalidRequest(f"Invalid Request: the message is too large (the limit is {limit} bytes)"))

    async def screen(self, caller: Caller, message: Message) -> Refusal | None:
        """The checks of one message the caller sent: its rate token (every request takes one, ``initialize``
        included; notifications and responses go free) and its scopes for a tools/call."""
        if not (message.is_notification or message.is_response):
            limited = await self.take(caller)
            if limited is not None:
                return limited
        return self.out_of_scope(caller, message)

    async def take(self, caller: Caller, cost: int = 1) -> Refusal | None:
        """Take ``cost`` request tokens from the caller's budget, or the 429 saying when to come back. Should the
        shared budget in Redis be unreachable, requests go on unlimited and the log says so."""
        if self._limiter is None:
            return None
        loop = asyncio.get_running_loop()
        if loop.time() < self._limiter_retry_at:  # it failed a moment ago: no request waits on it again yet
            return None
        try:
            wait = await self._limiter.take(caller.client, cost)
        except (RedisError, OSError) as exc:
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
        if math.isinf(wait):
            message = f"Too Many Requests: a batch of {cost} requests is more than this client may send at once"
            return Refusal(429, RateLimited(f"{message}; send smaller batches"))
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
        """The per-caller initialize limit: None when the caller may open a session now (it is counted)."""
        wait = self._initialize_limit.allow(f"{caller.principal}@{caller.address or '-'}")
        if wait <= 0:
            return None
        retry = _retry(wait)
        limited = RateLimited(
            f"Too Many Requests: initialize is limited per client; retry in {retry} s", data={"retryAfter": retry}
        )
        return Refusal(429, limited, {"Retry-After": str(retry)})

    @staticmethod
    def quota_exceeded(exc: SessionQuotaError) -> Refusal:
        """The refusal of a session over the caller's quota."""
        return Refusal(429, RateLimited(f"Too Many Requests: {exc}", data={"limit": exc.limit}))
