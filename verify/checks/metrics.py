"""Prometheus metrics: the text format parses, the families operators dashboard exist, and the counters moved
with the traffic of the other checks (read once before them, once after)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from verify.client import CheckFailed, WireClient

__all__ = ["BASELINE", "CHECKS", "REQUIRED_FAMILIES"]

# Sample names that must be there: the HTTP names GKE's dashboards read and the MCP request counters.
REQUIRED_FAMILIES = (
    "http_requests_total",
    "http_request_duration_seconds_count",
    "mcp_requests_total",
    "mcp_tool_calls_total",
)
_MOVING = (("mcp_requests_total", "method", "tools/call"), ("http_requests_total", "method", "POST"))


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


def _totals(samples: dict[str, list[tuple[dict[str, str], float]]]) -> dict[str, float]:
    return {
        f"{name}{{{label}={value!r}}}": sum(v for labels, v in samples.get(name, []) if labels.get(label) == value)
        for name, label, value in _MOVING
    }


def check_baseline(client: WireClient) -> str:
    """Read the counters before the other checks send traffic (metrics.traffic_counted compares)."""
    client.baseline = _totals(_samples(client))
    return ", ".join(f"{name} {value:g}" for name, value in client.baseline.items())


def check_exposition(client: WireClient) -> str:
    """The endpoint serves parseable metrics with the families operators dashboard."""
    samples = _samples(client)
    missing = [name for name in REQUIRED_FAMILIES if name not in samples]
    if missing:
        raise CheckFailed(f"metrics: missing {', '.join(missing)}")
    return f"{len(samples)} sample names"


def check_traffic_counted(client: WireClient) -> str:
    """The tools/call and HTTP requests of the other checks made the counters move."""
    after = _totals(_samples(client))
    still = [name for name, value in after.items() if value <= client.baseline.get(name, 0.0)]
    if still:
        raise CheckFailed(f"metrics: {', '.join(still)} did not move with the checks' traffic")
    return ", ".join(f"{name} +{after[name] - client.baseline.get(name, 0.0):g}" for name in after)


BASELINE: tuple[tuple[str, Callable[[WireClient], str]], ...] = (("metrics.baseline", check_baseline),)
CHECKS: tuple[tuple[str, Callable[[WireClient], str]], ...] = (
    ("metrics.exposition", check_exposition),
    ("metrics.traffic_counted", check_traffic_counted),
)
