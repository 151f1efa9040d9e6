"""Health endpoints: what Kubernetes probes and the seed design's load balancers call."""

from __future__ import annotations

from collections.abc import Callable

from verify.client import CheckFailed, WireClient

__all__ = ["CHECKS"]


def _probe(path: str) -> Callable[[WireClient], str]:
    def check(client: WireClient) -> str:
        response = client.http.get(client.target.url.rstrip("/") + path)
        if response.status_code != 200:
            raise CheckFailed(f"GET {path}: expected 200, got {response.status_code}")
        return f"GET {path} -> 200"

    return check


CHECKS: tuple[tuple[str, Callable[[WireClient], str]], ...] = (
    ("health.livez", _probe("/livez")),
    ("health.readyz", _probe("/readyz")),
    ("health.health", _probe("/health")),
)
