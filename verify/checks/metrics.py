"""Prometheus metrics: the text format parses, the families operators dashboard exist, and the counters moved
with the traffic of the other checks (read before them, and after).

The metrics URL is usually a Service in front of several replicas, and each scrape reaches one of them. So each read
is several scrapes, each on a new connection, grouped by replica (erlmcp names itself in
``erlmcp_build_info{replica}``; another server is told apart by ``process_start_time_seconds``, or counts as one),
and the counters are compared replica by replica: the other checks' traffic lands wherever the Service sent it."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from verify.client import CheckFailed, WireClient

__all__ = ["BASELINE", "CHECKS", "REQUIRED_FAMILIES", "SCRAPES"]

# Families that must be there: the HTTP ones GKE's dashboards read and the MCP request counters. A family is there
# when the endpoint declares it, even before a replica has a sample of it (a replica that has served no tool call yet).
REQUIRED_FAMILIES = (
    "http_requests",
    "http_request_duration_seconds",
    "mcp_requests",
    "mcp_tool_calls",
)
_MOVING = (("mcp_requests_total", "method", "tools/call"), ("http_requests_total", "method", "POST"))
# Scrapes per read: with three replicas picked at random, each is missed by ten scrapes 1.7 % of the time, and
# the traffic check needs only the replicas seen both before and after to have moved, taken together.
SCRAPES = 10

Samples = dict[str, list[tuple[dict[str, str], float]]]


def _scrape(client: WireClient) -> tuple[set[str], Samples]:
    """One scrape on a new connection (so that the Service may pick another replica): family names and samples."""
    response = client.http.get(client.target.metrics_url, headers={"Connection": "close"})
    if response.status_code != 200:
        raise CheckFailed(f"GET {client.target.metrics_url}: expected 200, got {response.status_code}")
    if not response.headers.get("content-type", "").startswith("text/plain"):
        raise CheckFailed(f"metrics: expected the Prometheus text format, got {response.headers.get('content-type')!r}")
    try:
        families = list(text_string_to_metric_families(response.text))
    except (ValueError, TypeError, IndexError) as exc:
        raise CheckFailed(f"metrics: the body is not the Prometheus text format: {exc}") from exc
    samples: Samples = {}
    for family in families:
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return {family.name for family in families}, samples


def _replica(samples: Samples) -> str:
    """Which replica answered: erlmcp names itself in ``erlmcp_build_info{replica}``; another server is told apart by
    its start time, or counts as one."""
    named = [labels["replica"] for labels, _ in samples.get("erlmcp_build_info", []) if labels.get("replica")]
    if named:
        return named[0]
    started = samples.get("process_start_time_seconds")
    return f"started at {started[0][1]:.2f}" if started else "the server"


def _totals(samples: Samples) -> dict[str, float]:
    return {
        f"{name}{{{label}={value!r}}}": sum(v for labels, v in samples.get(name, []) if labels.get(label) == value)
        for name, label, value in _MOVING
    }


def _read(client: WireClient) -> dict[str, dict[str, float]]:
    """The moving counters of each replica the scrapes reached (counters only grow: the largest reading wins)."""
    replicas: dict[str, dict[str, float]] = {}
    for _ in range(SCRAPES):
        _, samples = _scrape(client)
        seen = replicas.setdefault(_replica(samples), {})
        for name, value in _totals(samples).items():
            seen[name] = max(seen.get(name, 0.0), value)
    return replicas


def check_baseline(client: WireClient) -> str:
    """Read the counters before the other checks send traffic (metrics.traffic_counted compares)."""
    client.baseline_by_replica = _read(client)
    return "; ".join(
        f"{replica}: " + ", ".join(f"{name} {value:g}" for name, value in totals.items())
        for replica, totals in client.baseline_by_replica.items()
    )


def check_exposition(client: WireClient) -> str:
    """The endpoint serves parseable metrics with the families operators dashboard."""
    names, samples = _scrape(client)
    missing = [name for name in REQUIRED_FAMILIES if name not in names]
    if missing:
        raise CheckFailed(f"metrics: missing {', '.join(missing)}")
    return f"{len(samples)} sample names"


def check_traffic_counted(client: WireClient) -> str:
    """The tools/call and HTTP requests of the other checks made the counters move, on the replicas read both
    before and after them, taken together."""
    before, after = client.baseline_by_replica, _read(client)
    both = [replica for replica in after if replica in before]
    if not both:
        raise CheckFailed(
            f"metrics: no replica was read both before ({', '.join(before)}) and after "
            f"({', '.join(after)}) the checks' traffic"
        )
    moved = {name: sum(after[r][name] - before[r].get(name, 0.0) for r in both) for name in after[both[0]]}
    still = [name for name, delta in moved.items() if delta <= 0]
    if still:
        raise CheckFailed(
            f"metrics: {', '.join(still)} did not move with the checks' traffic "
            f"(read on {len(both)} replica{'s' if len(both) > 1 else ''})"
        )
    return ", ".join(f"{name} +{delta:g}" for name, delta in moved.items()) + f" on {len(both)} replica(s)"


BASELINE: tuple[tuple[str, Callable[[WireClient], str]], ...] = (("metrics.baseline", check_baseline),)
CHECKS: tuple[tuple[str, Callable[[WireClient], str]], ...] = (
    ("metrics.exposition", check_exposition),
    ("metrics.traffic_counted", check_traffic_counted),
)
