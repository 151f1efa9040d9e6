"""Security as a client sees it: credentials are required, foreign web pages are refused, oversized bodies are
refused before they are read, and the initialize limit answers 429 with Retry-After."""

from __future__ import annotations

from collections.abc import Callable

from verify.client import CheckFailed, CheckSkipped, WireClient

__all__ = ["CHECKS", "LIMIT_CHECKS"]

_PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}


def _refused(client: WireClient, headers: dict[str, str], what: str) -> str:
    if not client.target.api_key:
        raise CheckSkipped("no credentials given (--api-key-file or --token-file), so authentication is not checked")
    response = client.post(_PING, with_key=False, headers=headers)
    if response.status_code != 401:
        raise CheckFailed(f"a request {what} must get 401, got {response.status_code}")
    if "bearer" not in response.headers.get("www-authenticate", "").lower():
        raise CheckFailed(f"the 401 for a request {what} must carry 'WWW-Authenticate: Bearer ...'")
    return f"{what} -> 401 with WWW-Authenticate"


def check_missing_key(client: WireClient) -> str:
    """No credentials: refused."""
    return _refused(client, {}, "without credentials")


def check_wrong_key(client: WireClient) -> str:
    """Wrong credentials: refused."""
    return _refused(client, {"Authorization": "Bearer wrong-" + "x" * 24}, "with wrong credentials")


def check_foreign_origin(client: WireClient) -> str:
    """A browser page from another site (DNS rebinding) is refused with 403, credentials or not."""
    response = client.post(_PING, headers={"Origin": "http://verify.invalid"})
    if response.status_code != 403:
        raise CheckFailed(f"a request with Origin http://verify.invalid must get 403, got {response.status_code}")
    return "Origin http://verify.invalid -> 403"


def check_oversized_body(client: WireClient) -> str:
    """A body over the server's limit is refused with 413 (--max-request-bytes says what the limit is)."""
    limit = client.target.max_request_bytes
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"' + b"x" * limit + b'"}}'
    response = client.post(body)
    if response.status_code != 413:
        raise CheckFailed(f"a body of {len(body)} bytes (limit {limit}) must get 413, got {response.status_code}")
    return f"{len(body)} bytes -> 413"


def check_rate_limit(client: WireClient) -> str:
    """More initialize requests than the configured limit get 429 with Retry-After (--initialize-limit)."""
    limit = client.target.initialize_limit
    if limit is None:
        raise CheckSkipped("no --initialize-limit given, so the 429 is not checked (it uses up the limit)")
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "erlmcp-verify", "version": "1"},
        },
    }
    for attempt in range(1, limit + 2):
        response = client.post(body, with_session=False)
        if response.status_code == 429:
            retry = response.headers.get("retry-after", "")
            if not retry.isdigit():
                raise CheckFailed(f"the 429 after {attempt} initialize requests must carry Retry-After seconds")
            return f"429 after {attempt} initialize requests, Retry-After {retry}"
        if session := response.headers.get("mcp-session-id"):
            client.http.delete(
                client.target.mcp_url, headers={**client.headers(with_session=False), "Mcp-Session-Id": session}
            )
    raise CheckFailed(f"{limit + 1} initialize requests within a minute were all accepted (limit {limit})")


CHECKS: tuple[tuple[str, Callable[[WireClient], str]], ...] = (
    ("security.missing_credentials_refused", check_missing_key),
    ("security.wrong_credentials_refused", check_wrong_key),
    ("security.foreign_origin_refused", check_foreign_origin),
    ("security.oversized_body_refused", check_oversized_body),
)
# Last of all: it uses up the client's initialize budget.
LIMIT_CHECKS: tuple[tuple[str, Callable[[WireClient], str]], ...] = (("security.rate_limited", check_rate_limit),)
