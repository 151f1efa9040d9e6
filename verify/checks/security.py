"""Authentication as a client sees it: without the key, or with a wrong one, the MCP endpoint refuses."""

from __future__ import annotations

from collections.abc import Callable

from verify.client import CheckFailed, CheckSkipped, WireClient

__all__ = ["CHECKS"]

_PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}


def _refused(client: WireClient, headers: dict[str, str], what: str) -> str:
    if not client.target.api_key:
        raise CheckSkipped("no API key given (--api-key or --api-key-file), so authentication is not checked")
    response = client.post(_PING, with_key=False, headers=headers)
    if response.status_code != 401:
        raise CheckFailed(f"a request {what} must get 401, got {response.status_code}")
    if "bearer" not in response.headers.get("www-authenticate", "").lower():
        raise CheckFailed(f"the 401 for a request {what} must carry 'WWW-Authenticate: Bearer ...'")
    return f"{what} -> 401 with WWW-Authenticate"


def check_missing_key(client: WireClient) -> str:
    """No credentials: refused."""
    return _refused(client, {}, "without an API key")


def check_wrong_key(client: WireClient) -> str:
    """A wrong key: refused."""
    return _refused(client, {"Authorization": "Bearer wrong-" + "x" * 24}, "with a wrong API key")


CHECKS: tuple[tuple[str, Callable[[WireClient], str]], ...] = (
    ("auth.missing_key_refused", check_missing_key),
    ("auth.wrong_key_refused", check_wrong_key),
)
