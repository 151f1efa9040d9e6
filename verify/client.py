"""A small HTTP client for the checks. It never imports the server: it speaks the wire protocol itself."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = ["CheckFailed", "CheckSkipped", "Target", "WireClient", "json_body"]

PROTOCOL_VERSION = "2025-11-25"


class CheckFailed(AssertionError):
    """A check saw the server do something wrong; the message says what was expected and what came."""


class CheckSkipped(Exception):
    """A check that does not apply to this target; the message says why."""


@dataclass(frozen=True, slots=True)
class Target:
    """The server under test."""

    url: str  # base URL, e.g. http://127.0.0.1:8080
    metrics_url: str
    mcp_path: str = "/mcp"
    api_key: str | None = None
    timeout: float = 10.0

    @property
    def mcp_url(self) -> str:
        """The MCP endpoint."""
        return self.url.rstrip("/") + self.mcp_path


class WireClient:
    """JSON-RPC over HTTP POST, with the API key when one is given."""

    def __init__(self, target: Target, http: httpx.Client) -> None:
        self.target = target
        self.http = http
        self._ids = itertools.count(1)

    def headers(self, *, with_key: bool = True) -> dict[str, str]:
        """Headers of an MCP request."""
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if with_key and self.target.api_key:
            headers["Authorization"] = f"Bearer {self.target.api_key}"
        return headers

    def post(
        self, body: bytes | dict[str, Any], *, with_key: bool = True, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """POST a raw body (bytes) or a JSON object to the MCP endpoint."""
        merged = {**self.headers(with_key=with_key), **(headers or {})}
        if isinstance(body, bytes):
            return self.http.post(self.target.mcp_url, content=body, headers=merged)
        return self.http.post(self.target.mcp_url, json=body, headers=merged)

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a request and return the JSON-RPC response object, checking the envelope."""
        request_id = next(self._ids)
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            body["params"] = params
        response = self.post(body)
        message = json_body(response, f"{method} response")
        if message.get("jsonrpc") != "2.0" or message.get("id") != request_id:
            raise CheckFailed(f"{method}: response envelope is wrong (jsonrpc/id): {message}")
        if ("result" in message) == ("error" in message):
            raise CheckFailed(f"{method}: a response holds exactly one of result and error: {message}")
        return message

    def result(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a request that must succeed; return its result."""
        message = self.request(method, params)
        if "error" in message:
            raise CheckFailed(f"{method}: expected a result, got error {message['error']}")
        result = message["result"]
        if not isinstance(result, dict):
            raise CheckFailed(f"{method}: result must be an object, got {result!r}")
        return result

    def initialize(self) -> dict[str, Any]:
        """The initialize handshake's result."""
        return self.result(
            "initialize",
            {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "erlmcp-verify", "version": "1"},
            },
        )


def json_body(response: httpx.Response, what: str) -> dict[str, Any]:
    """The JSON object in a response, or a failure that says what came instead."""
    content_type = response.headers.get("content-type", "")
    if "application/json" not in content_type:
        raise CheckFailed(f"{what}: expected application/json, got {content_type!r} (HTTP {response.status_code})")
    try:
        data = response.json()
    except ValueError as exc:
        raise CheckFailed(f"{what}: body is not JSON: {response.text[:200]!r}") from exc
    if not isinstance(data, dict):
        raise CheckFailed(f"{what}: body must be a JSON object, got {data!r}")
    return data
