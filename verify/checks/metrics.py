"""Prometheus metrics: the text format parses, and the traffic of the earlier checks was counted."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from verify.client import CheckFailed, WireClient

__all__ = ["CHECKS"]


def _samples(client: WireClient) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample on the metrics endpoint, by sample name."""
    response = client.http.get(client.target.metrics_url)
    if response.status_code != 200:
        raise CheckFailed(f"GET {client.target.metrics_url}: expected 200, got {response.status_code}")
    if not response.headers.get("content-type", "").startswith("text/plain"):
        raise CheckFailed(f"metrics: expected the Prometheus text format, got {response.headers.get('content-type')!r}")
    try:
        families = list(text_string_to_metric_families(response.text))
    except (ValueError, TypeError, IndexError) as exc:
        raise CheckFailed(f"metrics: the body is not the Prometheus text format: {exc}") from exc
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in families:
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return samples


def check_exposition(client: WireClient) -> str:
    """The endpoint serves parseable metrics with the families operators dashboard."""
    samples = _samples(client)
    needed = ("http_requests_total", "http_request_duration_seconds_count", "mcp_requests_total")
    missing = [name for name in needed if name not in samples]
    if missing:
        raise CheckFailed(f"metrics: missing {', '.join(missing)}")
    return f"{len(samples)} sample names"


def check_traffic_counted(client: WireClient) -> str:
    """tools/call and HTTP requests made by the earlier checks show in the counters."""
    samples = _samples(client)
    tool_calls = sum(
        value for labels, value in samples.get("mcp_requests_total", []) if labels.get("method") == "tools/call"
    )
    if tool_calls < 1:
        raise CheckFailed('metrics: mcp_requests_total{method="tools/call"} did not count the checks\' tool calls')
    posts = sum(value for labels, value in samples.get("http_requests_total", []) if labels.get("method") == "POST")
    if posts < 1:
        raise CheckFailed('metrics: http_requests_total{method="POST"} did not count the checks\' requests')
    return f"tools/call counted {tool_calls:g}, POST counted {posts:g}"


CHECKS: tuple[tuple[str, Callable[[WireClient], str]], ...] = (
    ("metrics.exposition", check_exposition),
    ("metrics.traffic_counted", check_traffic_counted),
)
