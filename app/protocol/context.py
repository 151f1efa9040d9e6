"""What a handler may do while it answers one request: progress, log messages, requests to the client."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from app.jsonrpc import RequestId
from app.security.keys import ALL_TOOLS
from app.sessions import Session

__all__ = ["EMPTY", "LOG_LEVELS", "Announce", "ClientRequestError", "RequestContext", "Send"]

# RFC 5424 severities, lowest first, as MCP logging names them.
LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")

Send = Callable[[dict[str, Any]], Awaitable[None]]
Announce = Callable[[str, Mapping[str, Any]], Awaitable[int]]

# The _meta of a request that has none, and the per-request capabilities of a handshake-era one, as the protocol core
# builds their contexts: one shared empty mapping, read-only, rather than a new dict per request.
EMPTY: Mapping[str, Any] = MappingProxyType({})


class ClientRequestError(Exception):
    """A request to the client could not be made or was answered with an error."""

    def __init__(self, message: str, error: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.error = dict(error or {})


@dataclass
class RequestContext:
    """The request being answered and the channel back to the client.

    ``send`` writes a message on the request's own stream; it is None when the client cannot take a stream
    (it did not accept text/event-stream), and then related messages are left out.
    """

    request_id: RequestId
    method: str
    meta: Mapping[str, Any] = field(default_factory=dict)
    session: Session | None = None
    send: Send | None = None
    protocol_version: str | None = None
    client_request_timeout: float = 60.0
    # Ends the HTTP connection of the request's stream; the client resumes it with Last-Event-ID.
    end_connection: Callable[[], Awaitable[None]] | None = None
    # 2026-07-28 (stateless): the capabilities and log level come with each request, the client cannot be sent
    # requests, and multi-round handlers get the client's inputResponses and their own opened requestState.
    stateless: bool = False
    request_client_capabilities: Mapping[str, Any] = field(default_factory=dict)
    request_log_level: str | None = None
    input_responses: Mapping[str, Any] | None = None
    request_state: str | None = None
    # Publishes a change notification (list_changed, resources/updated) to every client that listens for it.
    announce: Announce | None = None
    # What the caller may use: * (everything), tools:* or tools:NAME, from its API key or token.
    scopes: frozenset[str] = ALL_TOOLS
    # Who is calling (the API key's or token's name), filled by the transport; None without authentication.
    # Tasks are bound to it: another principal's task is unknown.
    principal: str | None = None

    @property
    def client_capabilities(self) -> Mapping[str, Any]:
        """What the client declared: at initialize, or (stateless) on this request."""
        if self.stateless or self.session is None:
            return self.request_client_capabilities
        return self.session.client_capabilities

    @property
    def progress_token(self) -> str | int | None:
        """The token the client asked progress under, if any."""
        token = self.meta.get("progressToken")
        return token if isinstance(token, str | int) and not isinstance(token, bool) else None

    async def notify(self, method: str, params: Mapping[str, Any]) -> bool:
        """Send a notification related to this request; whether it could be sent."""
        if self.send is None:
            return False
        await self.send({"jsonrpc": "2.0", "method": method, "params": dict(params)})
        return True

    async def progress(self, progress: float, total: float | None = None, message: str | None = None) -> bool:
        """Report progress, when the client asked for it with a progress token."""
        token = self.progress_token
        if token is None:
            return False
        params: dict[str, Any] = {"progressToken": token, "progress": progress}
        if total is not None:
            params["total"] = total
        if message is not None:
            params["message"] = message
        return await self.notify("notifications/progress", params)

    async def log(self, level: str, data: Any, logger: str | None = None) -> bool:
        """Send a log message at ``level`` unless the client set a higher minimum level."""
        if self.stateless:
            minimum = self.request_log_level  # no logLevel in _meta: no log messages at all
        else:
            minimum = self.session.log_level if self.session and self.session.log_level else "debug"
        if minimum not in LOG_LEVELS or LOG_LEVELS.index(level) < LOG_LEVELS.index(minimum):
            return False
        params: dict[str, Any] = {"level": level, "data": data}
        if logger is not None:
            params["logger"] = logger
        return await self.notify("notifications/message", params)

    async def close_stream(self) -> bool:
        """Close the connection carrying this request's stream (SSE polling); whether there was one."""
        if self.end_connection is None:
            return False
        await self.end_connection()
        return True

    async def notify_change(self, method: str, params: Mapping[str, Any] | None = None) -> int:
        """Tell every listening client that something changed; how many were told."""
        if self.announce is None:
            return 0
        return await self.announce(method, params or {})

    def client_supports(self, capability: str) -> bool:
        """Whether the client declared a capability (sampling, elicitation, roots) at initialize."""
        return capability in self.client_capabilities

    async def request(self, method: str, params: Mapping[str, Any], *, capability: str) -> dict[str, Any]:
        """Send a request to the client and wait for its result.

        Raises:
            ClientRequestError: the client lacks the capability, cannot be reached on a stream, answers
                with an error, or does not answer in time.
        """
        if self.stateless:
            raise ClientRequestError(f"{method} cannot be sent to a stateless (2026-07-28) client; ask for input")
        if not self.client_supports(capability):
            raise ClientRequestError(f"the client did not declare the {capability!r} capability")
        if self.session is None or self.send is None:
            raise ClientRequestError("the client cannot receive requests on this response (no event stream)")
        request_id = self.session.next_request_id()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.session.pending[request_id] = future
        try:
            await self.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": dict(params)})
            async with asyncio.timeout(self.client_request_timeout):
                response = await future
        except TimeoutError as exc:
            raise ClientRequestError(
                f"the client did not answer {method} in {self.client_request_timeout:g} s"
            ) from exc
        finally:
            self.session.pending.pop(request_id, None)
        if "error" in response:
            raise ClientRequestError(f"the client answered {method} with an error", response["error"])
        result = response.get("result")
        if not isinstance(result, dict):
            raise ClientRequestError(f"the client's result for {method} is not an object")
        return result
