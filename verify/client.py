"""A small HTTP client for the checks. It never imports the server: it speaks the wire protocol itself."""

from __future__ import annotations

import itertools
import json
import ssl
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = [
    "key_from_lines",
    "CheckFailed",
    "CheckSkipped",
    "Target",
    "WireClient",
    "json_body",
    "response_message",
    "sse_messages",
]

PROTOCOL_VERSION = "2025-11-25"


def key_from_lines(lines: list[str]) -> str | None:
    """The first usable key of an erlmcp API key file: lines are ``KEY`` or ``NAME SCOPES KEY`` (``#`` comments);
    a ``sha256:`` digest cannot be sent, so such lines are passed over."""
    for raw in lines:
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        key = line.split()[-1]
        if not key.startswith("sha256:"):
            return key
    return None


class CheckFailed(AssertionError):
    """A check saw the server do something wrong; the message says what was expected and what came."""


class CheckSkipped(Exception):
    """A check that does not apply to this target; the message says why."""


@dataclass(frozen=True, slots=True)
class Target:
    """The server under test, and what the checks may assume about its configuration."""

    url: str  # base URL, e.g. http://127.0.0.1:8080
    metrics_url: str
    mcp_path: str = "/mcp"
    api_key: str | None = None  # an API key or a bearer token: both go in Authorization: Bearer
    timeout: float = 10.0
    ca_file: str | None = None  # trust this CA bundle for https (e.g. Marketplace's self-signed certificate)
    client_cert_file: str | None = None  # present this certificate (PEM, with its key) to a mutual-TLS server
    client_key_file: str | None = None
    max_request_bytes: int = 4 * 1024 * 1024  # the server's body limit (ERLMCP_MAX_REQUEST_BYTES)
    initialize_limit: int | None = None  # the server's initialize-per-minute limit, when the 429 is to be checked

    @property
    def mcp_url(self) -> str:
        """The MCP endpoint."""
        return self.url.rstrip("/") + self.mcp_path

    def tls_context(self) -> ssl.SSLContext:
        """How to speak TLS to the server: the system's CAs or ``ca_file``, and the client certificate if any."""
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.ca_file is not None:
            # What ca_file holds is trusted as it is, also a certificate that is not a self-signed root: the very
            # certificate (chain) the server presents, e.g. from Secret Manager (as Python 3.13 does by default).
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        if self.client_cert_file is not None:
            context.load_cert_chain(self.client_cert_file, self.client_key_file)
        return context


class WireClient:
    """JSON-RPC over streamable HTTP: the API key when one is given, the session once initialized."""

    def __init__(self, target: Target, http: httpx.Client) -> None:
        self.target = target
        self.http = http
        self._ids = itertools.count(1)
        self.session_id: str | None = None
        self.protocol_version: str | None = None
        self.baseline_by_replica: dict[str, dict[str, float]] = {}  # counters per replica, before the other checks

    def headers(self, *, with_key: bool = True, with_session: bool = True) -> dict[str, str]:
        """Headers of an MCP request."""
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if with_key and self.target.api_key:
            headers["Authorization"] = f"Bearer {self.target.api_key}"
        if with_session and self.session_id:
            headers["Mcp-Session-Id"] = self.session_id
        if with_session and self.protocol_version:
            headers["MCP-Protocol-Version"] = self.protocol_version
        return headers

    def post(
        self,
        body: bytes | dict[str, Any],
        *,
        with_key: bool = True,
        with_session: bool = True,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """POST a raw body (bytes) or a JSON object to the MCP endpoint."""
        merged = {**self.headers(with_key=with_key, with_session=with_session), **(headers or {})}
        if isinstance(body, bytes):
            return self.http.post(self.target.mcp_url, content=body, headers=merged)
        return self.http.post(self.target.mcp_url, json=body, headers=merged)

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a request and return the JSON-RPC response object, checking the envelope."""
        request_id = next(self._ids)
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            body["params"] = params
        message = response_message(self.post(body), request_id, f"{method} response")
        if message.get("jsonrpc") != "2.0":
            raise CheckFailed(f"{method}: response envelope is wrong (jsonrpc): {message}")
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
        """The initialize handshake's result; keeps the session id and the negotiated revision."""
        self.session_id = self.protocol_version = None
        params = {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "erlmcp-verify", "version": "1"},
        }
        request_id = next(self._ids)
        response = self.post({"jsonrpc": "2.0", "id": request_id, "method": "initialize", "params": params})
        message = response_message(response, request_id, "initialize response")
        result = message.get("result")
        if not isinstance(result, dict):
            raise CheckFailed(f"initialize: expected a result, got {message}")
        self.session_id = response.headers.get("mcp-session-id")
        version = result.get("protocolVersion")
        self.protocol_version = version if isinstance(version, str) else None
        return result


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


def sse_messages(text: str) -> list[dict[str, Any]]:
    """The JSON-RPC messages in an SSE body (events with data; priming events have none)."""
    messages: list[dict[str, Any]] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(line[5:].lstrip() for line in block.split("\n") if line.startswith("data:"))
        if not data.strip():
            continue
        try:
            parsed = json.loads(data)
        except ValueError as exc:
            raise CheckFailed(f"an SSE event's data is not JSON: {data[:200]!r}") from exc
        if isinstance(parsed, dict):
            messages.append(parsed)
    return messages


def response_message(response: httpx.Response, request_id: int, what: str) -> dict[str, Any]:
    """The response to ``request_id``, from a JSON body or from an SSE stream."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for message in sse_messages(response.text):
            if message.get("id") == request_id and ("result" in message or "error" in message):
                return message
        raise CheckFailed(f"{what}: the event stream ended without the response to request {request_id}")
    message = json_body(response, what)
    if message.get("id") != request_id and message.get("id") is not None:
        raise CheckFailed(f"{what}: the response's id {message.get('id')!r} is not the request's {request_id}")
    return message
