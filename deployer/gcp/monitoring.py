"""Cloud Monitoring as code: erlmcp's notification channels, six alert policies and four dashboards, planned and
applied idempotently (``python -m deployer monitoring plan|apply``).

The desired objects are built from the options alone and read only the five custom metrics the server exports
(``custom.googleapis.com/erlmcp/...``, see ``app/observability/cloud_monitoring.py``) on ``generic_task``. Every
object carries the user labels ``managed-by: erlmcp``, ``erlmcp-key`` (its stable name, e.g. ``error-rate``) and
``erlmcp-namespace`` (``--namespace``, or ``_all``, which no Kubernetes namespace can be called): the tool finds
its own objects by them and never reads or touches any other. ``plan`` compares the fields it sets (server-set
fields, and fields left at their default, are not compared) and says CREATE, UPDATE (with the fields that
differ), NO CHANGE or DELETE (an object of ours no longer desired). ``apply`` does exactly that, in an order that
keeps references valid: channels, then policies (they name the channels), then dashboards (their alert charts name
the policies), then deletions in reverse. Applying again writes nothing.

The six alert policies (p95, ratios and rates over 5-minute windows):

* ``error-rate`` (ERROR): 5xx answers above 5 % of ``http/requests`` over 5 minutes, for a minute.
* ``latency-p95`` (WARNING): p95 of ``http/latency`` above 1 s, for 5 minutes. 1 s is a bucket bound of the
  server's histogram, so the percentile is exact there; JSON-RPC answers take milliseconds and most tool calls well
  under a second, so a slow p95 means a slow tool or upstream, or a saturated CPU. A warning: slow is not down.
  (The histogram times whole responses, so long-lived SSE streams count their whole life.)
* ``memory`` (ERROR): a pod's resident memory above 90 % of ``--memory-limit-bytes`` (512 MiB, the chart's
  limit), for 5 minutes: the OOM kill is close. Tool worker processes count against the same limit.
* ``health`` (CRITICAL): no ``http/requests`` data at all for 5 minutes. The kubelet probes every healthy pod
  through the MCP listener (its metrics listener under mutual TLS) and the exporter writes every minute, so
  silence means no pod serves or exports. An uptime check would need a public URL and is out of scope.
* ``connections-saturation`` (WARNING, added): a pod holding more than 80 % of ``--max-connections`` (10 000,
  the server's default session limit) long-lived connections for 5 minutes: scale out before initialize is
  refused with 503.
* ``task-leak`` (WARNING, added): a pod's ``erlang/processes`` (asyncio tasks plus tool workers) up more than
  50 % in an hour while its ``connections/active`` rose less than 10 %, above 1 000 tasks, for 15 minutes. A
  healthy server's tasks follow its connections; tasks that grow on their own are leaking, and the pod ends in
  the memory alert a few hours later.

CRITICAL and ERROR notify every channel; WARNING every channel but PagerDuty (nobody is paged for slow). The four
dashboards: Overview, Latency & errors, Capacity, Alerts. Secrets (the PagerDuty key, the Slack token) are read
from files, never taken as arguments and never printed: the API does not give them back, so a
``erlmcp-secret`` label holds the first 12 hex digits of their SHA-256 and a changed file shows as a change.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

from google.api_core.exceptions import GoogleAPICallError
from google.cloud import monitoring_dashboard_v1, monitoring_v3
from google.cloud.monitoring_dashboard_v1.services.dashboards_service.transports import DashboardsServiceGrpcTransport
from google.cloud.monitoring_v3.services.alert_policy_service.transports import AlertPolicyServiceGrpcTransport
from google.cloud.monitoring_v3.services.notification_channel_service.transports import (
    NotificationChannelServiceGrpcTransport,
)

from deployer.errors import CloudError, ValuesError
from deployer.gcp.changes import (
    CREATE,
    DELETE,
    NO_CHANGE,
    UPDATE,
    Change,
    Names,
    Shown,
    differences,
    emit_desired,
    message_fields,
    render,
    run_mode,
)
from deployer.gcp.converge import Step, changes
from deployer.gcp.converge import apply as apply_steps
from deployer.gcp.grpc_clients import Connected, connect
from deployer.log import Log

__all__ = [
    "CREATE",
    "DELETE",
    "MANAGED_BY",
    "NO_CHANGE",
    "UPDATE",
    "Change",
    "Clients",
    "Desired",
    "MonitoringError",
    "Options",
    "command",
    "converge",
    "desired_channels",
    "desired_dashboards",
    "desired_policies",
]

MANAGED_BY, OWNER = "managed-by", "erlmcp"
KEY_LABEL, NAMESPACE_LABEL, SECRET_LABEL = "erlmcp-key", "erlmcp-namespace", "erlmcp-secret"
ALL_NAMESPACES = "_all"
METRIC = "custom.googleapis.com/erlmcp/"
MIB = 1024 * 1024
_SENSITIVE = frozenset({"auth_token", "service_key", "password"})  # labels the API does not give back
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_PROJECT = re.compile(r"([a-z][-a-z0-9.]*[a-z0-9]:)?[a-z][-a-z0-9]{4,28}[a-z0-9]")  # domain-scoped ones too
_PAGERDUTY_KEY = "pagerduty"


class MonitoringError(CloudError):
    """The Cloud Monitoring API refused a call or cannot be reached."""


@dataclass(frozen=True)
class Options:
    """What to manage: the project, the namespace the policies watch, the channels and two capacity figures."""

    project: str
    namespace: str | None = None
    emails: tuple[str, ...] = ()
    pagerduty_key_file: Path | None = None
    slack_channel: str | None = None
    slack_token_file: Path | None = None
    webhook_url: str | None = None
    memory_limit_bytes: int = 512 * MIB
    max_connections: int = 10_000

    def check(self) -> None:
        """Raises :class:`ValuesError` for options that cannot describe a setup."""
        if not _PROJECT.fullmatch(self.project):
            raise ValuesError(f"--project {self.project!r} is not a Google Cloud project ID")
        if self.namespace is not None and not _NAMESPACE.fullmatch(self.namespace):
            raise ValuesError(f"--namespace {self.namespace!r} is not a Kubernetes namespace name")
        if (self.slack_channel is None) != (self.slack_token_file is None):
            raise ValuesError("--slack-channel and --slack-token-file go together (the token is read from the file)")
        for address in self.emails:
            if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", address):
                raise ValuesError(f"--email {address!r} is not an email address")
        if self.webhook_url is not None and urlsplit(self.webhook_url).scheme not in ("https", "http"):
            raise ValuesError("--webhook-url must be an http(s) URL")
        if self.memory_limit_bytes < 64 * MIB:
            raise ValuesError("--memory-limit-bytes must be at least 64 MiB")
        if self.max_connections < 1:
            raise ValuesError("--max-connections must be at least 1")

    @property
    def scope(self) -> str:
        return self.namespace or ALL_NAMESPACES


@dataclass(frozen=True)
class Desired:
    """One object as it should be: the message (without a name) and, for the plan, where its secrets come from."""

    key: str
    message: Any
    secrets: Mapping[str, str] = field(default_factory=dict)  # label -> "(from FILE)"


# -- the desired state -------------------------------------------------------------------------------------------


def _read_secret(path: Path, option: str) -> str:
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValuesError(f"{option}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    if not secret:
        raise ValuesError(f"{option}: {path} is empty")
    return secret


def _fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


def _labels(options: Options, key: str, **more: str) -> dict[str, str]:
    return {MANAGED_BY: OWNER, KEY_LABEL: key, NAMESPACE_LABEL: options.scope, **more}


def _title(options: Options, text: str) -> str:
    return f"erlmcp ({options.namespace}): {text}" if options.namespace else f"erlmcp: {text}"


def _redacted_url(url: str) -> str:
    """A URL fit to print: no user info, no query (webhook URLs may carry a token there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "(query hidden)" if parts.query else "", ""))


def desired_channels(options: Options) -> dict[str, Desired]:
    """The notification channels the options ask for, by key; secret files are read here."""
    description = "Managed by `python -m deployer monitoring`; changes made elsewhere are undone by the next apply."
    found: dict[str, Desired] = {}

    def add(
        key: str,
        kind: str,
        title: str,
        labels: Mapping[str, str],
        secrets: Mapping[str, str] = {},
        fingerprint: str | None = None,
    ) -> None:
        user_labels = _labels(options, key, **({SECRET_LABEL: fingerprint} if fingerprint else {}))
        message = monitoring_v3.NotificationChannel(
            type_=kind,
            display_name=_title(options, title),
            description=description,
            labels=dict(labels),
            user_labels=user_labels,
            enabled=True,
        )
        found[key] = Desired(key, message, secrets)

    for address in dict.fromkeys(a.strip() for a in options.emails):
        add(f"email-{_fingerprint(address.lower())[:10]}", "email", f"email {address}", {"email_address": address})
    if options.pagerduty_key_file is not None:
        key = _read_secret(options.pagerduty_key_file, "--pagerduty-key-file")
        add(
            _PAGERDUTY_KEY,
            "pagerduty",
            "PagerDuty",
            {"service_key": key},
            {"service_key": f"(from {options.pagerduty_key_file})"},
            _fingerprint(key),
        )
    if options.slack_channel is not None and options.slack_token_file is not None:
        token = _read_secret(options.slack_token_file, "--slack-token-file")
        add(
            "slack",
            "slack",
            f"Slack {options.slack_channel}",
            {"channel_name": options.slack_channel, "auth_token": token},
            {"auth_token": f"(from {options.slack_token_file})"},
            _fingerprint(token),
        )
    if options.webhook_url is not None:
        add(
            "webhook",
            "webhook_tokenauth",
            f"webhook {_redacted_url(options.webhook_url)}",
            {"url": options.webhook_url},
        )
    return found


def _metric(name: str, options: Options, *extra: str) -> str:
    scope = [f'resource.label.namespace = "{options.namespace}"'] if options.namespace else []
    return " AND ".join([f'metric.type = "{METRIC}{name}"', 'resource.type = "generic_task"', *scope, *extra])


def _aggregation(
    seconds: int, aligner: str, reducer: str | None = None, group_by: Sequence[str] = ()
) -> dict[str, Any]:
    found: dict[str, Any] = {"alignment_period": {"seconds": seconds}, "per_series_aligner": aligner}
    if reducer is not None:
        found["cross_series_reducer"] = reducer
        found["group_by_fields"] = list(group_by)
    return found


_PER_INSTALL = ("resource.label.namespace",)  # every pod of one installation together


def _threshold(
    title: str, filter_: str, aggregation: dict[str, Any], comparison: str, value: float, duration: int, **more: Any
) -> dict[str, Any]:
    return {
        "display_name": title,
        "condition_threshold": {
            "filter": filter_,
            "aggregations": [aggregation],
            "comparison": comparison,
            "threshold_value": value,
            "duration": {"seconds": duration},
            "trigger": {"count": 1},
            "evaluation_missing_data": "EVALUATION_MISSING_DATA_INACTIVE",
            **more,
        },
    }


def _policy_specs(options: Options) -> list[tuple[str, str, str, list[dict[str, Any]], str, str]]:
    """(key, severity, title, conditions, combiner, documentation) of the six policies."""
    requests = _aggregation(300, "ALIGN_RATE", "REDUCE_SUM", _PER_INSTALL)
    memory_limit = float(options.memory_limit_bytes * 9 // 10)
    connections = float(options.max_connections * 8 // 10)
    return [
        (
            "error-rate",
            "ERROR",
            "HTTP 5xx above 5% of requests",
            [
                _threshold(
                    "5xx share of HTTP requests over 5 min > 5%",
                    _metric("http/requests", options, 'metric.label.code = starts_with("5")'),
                    requests,
                    "COMPARISON_GT",
                    0.05,
                    60,
                    denominator_filter=_metric("http/requests", options),
                    denominator_aggregations=[requests],
                )
            ],
            "OR",
            "More than 5% of HTTP answers were 5xx over the last 5 minutes. Look at the server log (5xx "
            "`httpRequest.status`) and at the Latency & errors dashboard; 503 on initialize means the session "
            "limit was reached.",
        ),
        (
            "latency-p95",
            "WARNING",
            "HTTP p95 latency above 1 s",
            [
                _threshold(
                    "p95 of HTTP latency over 5 min > 1 s",
                    _metric("http/latency", options),
                    _aggregation(300, "ALIGN_DELTA", "REDUCE_PERCENTILE_95", _PER_INSTALL),
                    "COMPARISON_GT",
                    1.0,
                    300,
                )
            ],
            "OR",
            "The 95th percentile of HTTP answer times stayed above 1 s for 5 minutes. Slow tools and "
            "upstreams show in `mcp_tool_duration_seconds` on /metrics; a busy CPU in the Capacity dashboard. "
            "Long-lived SSE streams are timed whole and raise the percentile too.",
        ),
        (
            "memory",
            "ERROR",
            f"memory above 90% of {options.memory_limit_bytes // MIB} MiB",
            [
                _threshold(
                    f"resident memory of a pod > {memory_limit / MIB:.0f} MiB",
                    _metric("memory/usage", options),
                    _aggregation(60, "ALIGN_MAX"),
                    "COMPARISON_GT",
                    memory_limit,
                    300,
                )
            ],
            "OR",
            "A server process has used more than 90% of its memory limit for 5 minutes: the kernel kills it "
            "soon. Look for a task leak (Capacity dashboard) and raise the limit if the load explains it.",
        ),
        (
            "health",
            "CRITICAL",
            "no erlmcp server reports",
            [
                {
                    "display_name": "no http/requests data for 5 min",
                    "condition_absent": {
                        "filter": _metric("http/requests", options),
                        "aggregations": [_aggregation(60, "ALIGN_RATE", "REDUCE_SUM", _PER_INSTALL)],
                        "duration": {"seconds": 300},
                        "trigger": {"count": 1},
                    },
                }
            ],
            "OR",
            "No erlmcp pod has written http/requests for 5 minutes. The kubelet probes keep a healthy pod "
            "answering, so every pod is down, crash-looping, or cannot write metrics (credentials, quota). Check "
            "`kubectl get pods` and the pods' logs.",
        ),
        (
            "connections-saturation",
            "WARNING",
            f"connections above 80% of {options.max_connections}",
            [
                _threshold(
                    f"open connections of a pod > {connections:.0f}",
                    _metric("connections/active", options),
                    _aggregation(60, "ALIGN_MAX"),
                    "COMPARISON_GT",
                    connections,
                    300,
                )
            ],
            "OR",
            "A pod holds more than 80% of the long-lived connections it is sized for. Add replicas before "
            "new sessions are refused.",
        ),
        (
            "task-leak",
            "WARNING",
            "asyncio tasks grow without connections",
            [
                _threshold(
                    "processes up > 50% in 1 h",
                    _metric("erlang/processes", options),
                    _aggregation(3600, "ALIGN_PERCENT_CHANGE"),
                    "COMPARISON_GT",
                    50.0,
                    900,
                ),
                _threshold(
                    "connections up < 10% in 1 h",
                    _metric("connections/active", options),
                    _aggregation(3600, "ALIGN_PERCENT_CHANGE"),
                    "COMPARISON_LT",
                    10.0,
                    900,
                ),
                _threshold(
                    "processes > 1000",
                    _metric("erlang/processes", options),
                    _aggregation(600, "ALIGN_MEAN"),
                    "COMPARISON_GT",
                    1000.0,
                    900,
                ),
            ],
            "AND_WITH_MATCHING_RESOURCE",
            "A pod's asyncio tasks (plus tool workers) grew by more than half in an "
            "hour while its connections did not: tasks are leaking. Restart the pod to recover and report it with "
            "the server log.",
        ),
    ]


def _routes(severity: str, channels: Mapping[str, str]) -> list[str]:
    """The channel names a policy of this severity notifies: every one, but PagerDuty only for CRITICAL, ERROR."""
    return sorted(name for key, name in channels.items() if severity != "WARNING" or key != _PAGERDUTY_KEY)


POLICY_KEYS = ("error-rate", "latency-p95", "memory", "health", "connections-saturation", "task-leak")


def desired_policies(options: Options, channels: Mapping[str, str]) -> dict[str, Desired]:
    """The six alert policies, by key; ``channels`` maps channel keys to resource names."""
    found: dict[str, Desired] = {}
    for key, severity, title, conditions, combiner, text in _policy_specs(options):
        message = monitoring_v3.AlertPolicy(
            {
                "display_name": _title(options, title),
                "user_labels": _labels(options, key),
                "severity": severity,
                "documentation": {"content": text, "mime_type": "text/markdown"},
                "conditions": conditions,
                "combiner": combiner,
                "enabled": True,
                "notification_channels": _routes(severity, channels),
                "alert_strategy": {"auto_close": {"seconds": 1800}},
            }
        )
        found[key] = Desired(key, message)
    return found


def _query(filter_: str, aggregation: dict[str, Any]) -> dict[str, Any]:
    return {"time_series_filter": {"filter": filter_, "aggregation": aggregation}}


def _line(query: dict[str, Any], legend: str = "", plot: str = "LINE") -> dict[str, Any]:
    return {
        "time_series_query": query,
        "plot_type": plot,
        "legend_template": legend,
        "min_alignment_period": {"seconds": 60},
    }


def _chart(title: str, *data_sets: dict[str, Any], label: str = "", limits: Sequence[tuple[str, float]] = ()) -> Any:
    return {
        "title": title,
        "xy_chart": {
            "data_sets": list(data_sets),
            "y_axis": {"label": label, "scale": "LINEAR"},
            "thresholds": [
                {"label": text, "value": value, "direction": "ABOVE", "color": "RED"} for text, value in limits
            ],
        },
    }


def _scorecard(title: str, query: dict[str, Any], red_above: float | None = None) -> dict[str, Any]:
    card: dict[str, Any] = {"time_series_query": query, "spark_chart_view": {"spark_chart_type": "SPARK_LINE"}}
    if red_above is not None:
        card["thresholds"] = [{"value": red_above, "direction": "ABOVE", "color": "RED"}]
    return {"title": title, "scorecard": card}


def _mosaic(widgets: Sequence[tuple[int, int, dict[str, Any]]]) -> dict[str, Any]:
    """Widgets laid out left to right on a 48-column grid: (width, height, widget)."""
    tiles, x, y, row = [], 0, 0, 0
    for width, height, widget in widgets:
        if x + width > 48:
            x, y, row = 0, y + row, 0
        tiles.append({"x_pos": x, "y_pos": y, "width": width, "height": height, "widget": widget})
        x, row = x + width, max(row, height)
    return {"columns": 48, "tiles": tiles}


def desired_dashboards(options: Options, policies: Mapping[str, str]) -> dict[str, Desired]:
    """The four dashboards, by key; ``policies`` maps policy keys to resource names (for the Alerts dashboard)."""
    m = options
    rate = _query(_metric("http/requests", m), _aggregation(60, "ALIGN_RATE", "REDUCE_SUM", _PER_INSTALL))
    by_code = _query(_metric("http/requests", m), _aggregation(60, "ALIGN_RATE", "REDUCE_SUM", ("metric.label.code",)))
    errors = {
        "time_series_filter_ratio": {
            "numerator": {
                "filter": _metric("http/requests", m, 'metric.label.code = starts_with("5")'),
                "aggregation": _aggregation(300, "ALIGN_RATE", "REDUCE_SUM", _PER_INSTALL),
            },
            "denominator": {
                "filter": _metric("http/requests", m),
                "aggregation": _aggregation(300, "ALIGN_RATE", "REDUCE_SUM", _PER_INSTALL),
            },
        }
    }

    def latency(reducer: str) -> dict[str, Any]:
        return _query(_metric("http/latency", m), _aggregation(60, "ALIGN_DELTA", reducer, _PER_INSTALL))

    def per_pod(name: str, aligner: str = "ALIGN_MEAN") -> dict[str, Any]:
        return _query(_metric(name, m), _aggregation(60, aligner))

    memory_limit = float(m.memory_limit_bytes)
    overview = [
        (12, 8, _scorecard("Requests/s", rate)),
        (12, 8, _scorecard("5xx share (5 min)", errors, 0.05)),
        (12, 8, _scorecard("p95 latency (s)", latency("REDUCE_PERCENTILE_95"), 1.0)),
        (
            12,
            8,
            _scorecard(
                "Open connections",
                _query(_metric("connections/active", m), _aggregation(60, "ALIGN_MEAN", "REDUCE_SUM", _PER_INSTALL)),
            ),
        ),
        (24, 16, _chart("Requests/s by status code", _line(by_code, "${metric.labels.code}", "STACKED_AREA"))),
        (24, 16, _chart("p95 latency", _line(latency("REDUCE_PERCENTILE_95")), label="s", limits=[("SLO", 1.0)])),
        (
            24,
            16,
            _chart(
                "Memory per pod",
                _line(per_pod("memory/usage", "ALIGN_MAX"), "${resource.labels.task_id}"),
                label="bytes",
                limits=[("90% of limit", memory_limit * 9 // 10)],
            ),
        ),
        (24, 16, _chart("Processes per pod", _line(per_pod("erlang/processes"), "${resource.labels.task_id}"))),
    ]
    latency_errors = [
        (
            24,
            16,
            _chart(
                "Latency percentiles",
                _line(latency("REDUCE_PERCENTILE_50"), "p50"),
                _line(latency("REDUCE_PERCENTILE_95"), "p95"),
                _line(latency("REDUCE_PERCENTILE_99"), "p99"),
                label="s",
                limits=[("p95 SLO", 1.0)],
            ),
        ),
        (
            24,
            16,
            _chart(
                "Latency heatmap",
                _line(
                    _query(_metric("http/latency", m), _aggregation(60, "ALIGN_DELTA", "REDUCE_SUM", _PER_INSTALL)),
                    plot="HEATMAP",
                ),
            ),
        ),
        (24, 16, _chart("Requests/s by status code", _line(by_code, "${metric.labels.code}", "STACKED_BAR"))),
        (24, 16, _chart("5xx share over 5 min", _line(errors), limits=[("alert", 0.05)])),
    ]
    capacity = [
        (
            24,
            16,
            _chart(
                "Open connections per pod",
                _line(per_pod("connections/active", "ALIGN_MAX"), "${resource.labels.task_id}"),
                limits=[("80% of capacity", m.max_connections * 8 // 10)],
            ),
        ),
        (
            24,
            16,
            _chart(
                "Processes (asyncio tasks + tool workers) per pod",
                _line(per_pod("erlang/processes", "ALIGN_MAX"), "${resource.labels.task_id}"),
            ),
        ),
        (
            24,
            16,
            _chart(
                "Resident memory per pod",
                _line(per_pod("memory/usage", "ALIGN_MAX"), "${resource.labels.task_id}"),
                label="bytes",
                limits=[("90% of limit", memory_limit * 9 // 10), ("limit", memory_limit)],
            ),
        ),
        (
            24,
            16,
            _chart(
                "Requests/s per pod",
                _line(
                    _query(
                        _metric("http/requests", m),
                        _aggregation(60, "ALIGN_RATE", "REDUCE_SUM", ("resource.label.task_id",)),
                    ),
                    "${resource.labels.task_id}",
                ),
            ),
        ),
    ]
    names = [policies[key] for key in POLICY_KEYS]
    alerts = [(16, 12, {"title": key, "alert_chart": {"name": policies[key]}}) for key in POLICY_KEYS]
    alerts.append((48, 16, {"title": "Incidents", "incident_list": {"policy_names": names}}))
    found: dict[str, Desired] = {}
    boards = (
        ("overview", "Overview", overview),
        ("latency-errors", "Latency & errors", latency_errors),
        ("capacity", "Capacity", capacity),
        ("alerts", "Alerts", alerts),
    )
    for key, title, widgets in boards:
        message = monitoring_dashboard_v1.Dashboard(
            {"display_name": _title(m, title), "labels": _labels(m, key), "mosaic_layout": _mosaic(widgets)}
        )
        found[key] = Desired(key, message)
    return found


# -- the API -----------------------------------------------------------------------------------------------------


@dataclass
class Clients:
    """The three API clients; :meth:`connect` makes them, tests may pass their own."""

    channels: monitoring_v3.NotificationChannelServiceClient
    policies: monitoring_v3.AlertPolicyServiceClient
    dashboards: monitoring_dashboard_v1.DashboardsServiceClient
    _connection: Connected | None = None

    @classmethod
    def connect(cls, endpoint: str | None = None, *, insecure: bool = False) -> Clients:
        """See :func:`deployer.gcp.grpc_clients.connect`."""
        connected = connect(
            [
                (monitoring_v3.NotificationChannelServiceClient, NotificationChannelServiceGrpcTransport),
                (monitoring_v3.AlertPolicyServiceClient, AlertPolicyServiceGrpcTransport),
                (monitoring_dashboard_v1.DashboardsServiceClient, DashboardsServiceGrpcTransport),
            ],
            endpoint,
            insecure=insecure,
            error=MonitoringError,
        )
        return cls(connected.clients[0], connected.clients[1], connected.clients[2], _connection=connected)

    def close(self) -> None:
        (self._connection or Connected((self.channels, self.policies, self.dashboards))).close()


def _view(message: Any, *, rest_names: bool = False) -> dict[str, Any]:
    """The fields a message sets, as a dict with enum names (defaults left out); never a sensitive label.
    ``rest_names``: the REST API's camelCase field names (else the protocol buffer's)."""
    found = message_fields(message, rest_names=rest_names)
    if isinstance(message, monitoring_v3.NotificationChannel) and "labels" in found:
        found["labels"] = {k: v for k, v in found["labels"].items() if k not in _SENSITIVE}
    return found


@dataclass(frozen=True)
class _Kind:
    """One kind of object and the calls that list, create, update and delete it."""

    title: str
    labels: Callable[[Any], Mapping[str, str]]
    list: Callable[[], Iterable[Any]]
    create: Callable[[Any], Any]
    update: Callable[[Any, Any], Any]  # (desired with its name, actual) -> the updated object
    delete: Callable[[Any], None]


def _kinds(clients: Clients, project: str) -> tuple[_Kind, _Kind, _Kind]:
    parent = f"projects/{project}"
    channel_fields = ["display_name", "description", "labels", "user_labels", "enabled"]
    policy_fields = [
        "display_name",
        "documentation",
        "user_labels",
        "conditions",
        "combiner",
        "enabled",
        "notification_channels",
        "alert_strategy",
        "severity",
    ]

    def update_dashboard(desired: Any, actual: Any) -> Any:
        desired.etag = actual.etag  # refused if someone changed it since it was read
        return clients.dashboards.update_dashboard(request={"dashboard": desired})

    channels = _Kind(
        "notification channel",
        lambda m: m.user_labels,
        lambda: clients.channels.list_notification_channels(name=parent),
        lambda m: clients.channels.create_notification_channel(name=parent, notification_channel=m),
        lambda m, _: clients.channels.update_notification_channel(
            notification_channel=m, update_mask={"paths": channel_fields}
        ),
        lambda m: clients.channels.delete_notification_channel(name=m.name, force=False),
    )
    policies = _Kind(
        "alert policy",
        lambda m: m.user_labels,
        lambda: clients.policies.list_alert_policies(name=parent),
        lambda m: clients.policies.create_alert_policy(name=parent, alert_policy=m),
        lambda m, _: clients.policies.update_alert_policy(alert_policy=m, update_mask={"paths": policy_fields}),
        lambda m: clients.policies.delete_alert_policy(name=m.name),
    )
    dashboards = _Kind(
        "dashboard",
        lambda m: m.labels,
        lambda: clients.dashboards.list_dashboards(parent=parent),
        lambda m: clients.dashboards.create_dashboard(parent=parent, dashboard=m),
        update_dashboard,
        lambda m: clients.dashboards.delete_dashboard(name=m.name),
    )
    return channels, policies, dashboards


def _call(what: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except GoogleAPICallError as exc:
        raise MonitoringError(f"{what}: {exc.message or exc}") from exc


def _ours(kind: _Kind, options: Options) -> dict[str, list[Any]]:
    """Our objects of this kind in scope, by key (oldest name first: a second one of a key is a leftover)."""
    found: dict[str, list[Any]] = {}
    for message in _call(f"cannot list {kind.title}s in {options.project}", lambda: list(kind.list())):
        labels = kind.labels(message)
        if labels.get(MANAGED_BY) == OWNER and labels.get(NAMESPACE_LABEL) == options.scope and KEY_LABEL in labels:
            found.setdefault(labels[KEY_LABEL], []).append(message)
    return {key: sorted(messages, key=lambda m: m.name) for key, messages in found.items()}


def _step(
    action: str,
    kind: _Kind,
    key: str,
    display_name: str,
    name: str | None,
    *,
    want: Desired | None = None,
    actual: Any = None,
    found: list[tuple[str, Any, Any]] | None = None,
) -> Step:
    """One plan line and its write. The line: the object's key in the name column; its display name, the sources
    of its secrets (CREATE) and its resource name (DELETE) in the note; in the JSON its key, display name, resource
    name and secrets. The write: create (the resource name the API gives is kept in the line), update (the
    desired object under the actual's name) or delete."""
    secrets = dict(want.secrets) if want is not None else {}
    note = display_name
    if action == CREATE and secrets:
        note += "  [" + ", ".join(f"{label} {source}" for label, source in secrets.items()) + "]"
    if action == DELETE:
        note += f"  ({name})"
    about = {"key": key, "displayName": display_name, "name": name, "secrets": secrets}
    desired: Any = want.message if want is not None else None
    change = Change(action, kind.title, key, found or [], desired, actual, note, about)
    what = f"{kind.title} {key}"

    def create() -> str:
        made = _call(f"cannot create {what}", partial(kind.create, desired))
        about["name"] = made.name
        return f"created {what}: {made.name}"

    def update() -> str:
        named = type(desired)(desired)
        named.name = name
        _call(f"cannot update {what}", partial(kind.update, named, actual))
        return f"updated {what}: " + ", ".join(path for path, _, _ in change.differences)

    def delete() -> str:
        _call(f"cannot delete {what} ({name})", partial(kind.delete, actual))
        return f"deleted {what}: {name}"

    return Step(change, {CREATE: create, UPDATE: update, DELETE: delete}.get(action))


def _resource(change: Change) -> str | None:
    """The object's resource name: None for one not created yet."""
    name: str | None = (change.about or {}).get("name")
    return name


def _plan(kind: _Kind, desired: Mapping[str, Desired], actual: Mapping[str, list[Any]]) -> list[Step]:
    steps = []
    for key, want in desired.items():
        found = actual.get(key, [])
        title = want.message.display_name
        if not found:
            steps.append(_step(CREATE, kind, key, title, None, want=want))
            continue
        shown = [_shown(d, want) for d in differences(_view(want.message), _view(found[0]))]
        action = UPDATE if shown else NO_CHANGE
        steps.append(_step(action, kind, key, title, found[0].name, want=want, actual=found[0], found=shown))
    for key, messages in actual.items():
        for message in messages[0 if key not in desired else 1 :]:
            steps.append(_step(DELETE, kind, key, message.display_name, message.name, actual=message))
    return steps


def _names_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _shown(difference: tuple[str, Any, Any], want: Desired) -> tuple[str, Any, Any]:
    """A difference as printed: ``type`` not ``type_``; the secret fingerprint label as the secret's file, without
    the value; a webhook URL without its query; two lists of resource names as what goes and what comes."""
    path, actual, desired = difference
    if path == f"user_labels.{SECRET_LABEL}" and want.secrets:
        return ", ".join(want.secrets), Shown("(changed)"), Shown(", ".join(want.secrets.values()))
    if path == "labels.url":
        hidden = [Shown(_redacted_url(v)) if isinstance(v, str) else v for v in (actual, desired)]
        return path, hidden[0], hidden[1]
    if _names_list(actual) and _names_list(desired):
        actual, desired = Names(actual), Names(desired)
    return ".".join(part.rstrip("_") for part in path.split(".")), actual, desired


def _placeholder(title: str, key: str) -> str:
    return f"(new {title} {key})"


def _names(kind: _Kind, planned: Sequence[Change]) -> dict[str, str]:
    """The names the desired objects have, or will have once created (a placeholder, for the plan)."""
    return {c.name: _resource(c) or _placeholder(kind.title, c.name) for c in planned if c.action != DELETE}


def rendered(options: Options) -> dict[str, Any]:
    """Every object apply would make, offline: the channels (never a secret label: where it comes from instead),
    the alert policies and the dashboards, each naming the objects it refers to by the placeholder a plan shows
    for an object not created yet."""
    channels = desired_channels(options)
    channel_names = {key: _placeholder("notification channel", key) for key in channels}
    policies = desired_policies(options, channel_names)
    policy_names = {key: _placeholder("alert policy", key) for key in policies}
    dashboards = desired_dashboards(options, policy_names)

    def listed(desired: Mapping[str, Desired]) -> list[dict[str, Any]]:
        return [
            {
                "key": key,
                **_view(d.message, rest_names=True),
                **({"secretLabels": dict(d.secrets)} if d.secrets else {}),
            }
            for key, d in desired.items()
        ]

    return {
        "project": options.project,
        "namespace": options.namespace,
        "notificationChannels": listed(channels),
        "alertPolicies": listed(policies),
        "dashboards": listed(dashboards),
    }


def converge(clients: Clients, options: Options, *, apply: bool, log: Log = lambda _: None) -> list[Change]:
    """The plan (``apply`` False: nothing is written) or its application; returns the changes, in order. Each kind
    is planned once the names of the objects it refers to are known (created, when applying); deletions come last,
    in reverse order, once nothing desired refers to them."""
    channels, policies, dashboards = _kinds(clients, options.project)
    stages: list[list[Step]] = []

    def stage(kind: _Kind, desired: Mapping[str, Desired]) -> dict[str, str]:
        steps = _plan(kind, desired, _ours(kind, options))
        stages.append(steps)
        if apply:
            apply_steps([s for s in steps if s.change.action != DELETE], log=log)
        return _names(kind, changes(steps))

    channel_names = stage(channels, desired_channels(options))
    policy_names = stage(policies, desired_policies(options, channel_names))
    stage(dashboards, desired_dashboards(options, policy_names))
    if apply:
        for steps in reversed(stages):
            apply_steps([s for s in steps if s.change.action == DELETE], log=log)
    return [change for steps in stages for change in changes(steps)]


# -- the command -------------------------------------------------------------------------------------------------


def command(args: argparse.Namespace, *, log: Log, out: TextIO | None = None) -> int:
    """``monitoring plan|apply|render`` (render: offline): 0 when done, :class:`ValuesError` for bad options,
    MonitoringError if refused."""
    options = Options(
        project=args.project,
        namespace=args.namespace,
        emails=tuple(args.email),
        pagerduty_key_file=args.pagerduty_key_file,
        slack_channel=args.slack_channel,
        slack_token_file=args.slack_token_file,
        webhook_url=args.webhook_url,
        memory_limit_bytes=args.memory_limit_bytes,
        max_connections=args.max_connections,
    )
    options.check()
    if args.action == "render":  # offline: no credentials, no call
        emit_desired(rendered(options), out=out or sys.stdout, as_json=args.json)
        return 0
    if args.insecure and not args.endpoint:
        raise ValuesError("--insecure needs --endpoint HOST:PORT")
    out = out or sys.stdout
    mode = run_mode(args.action, args.dry_run)
    desired_channels(options)  # read the secret files before any call: a bad file is bad input
    clients = Clients.connect(args.endpoint, insecure=args.insecure)
    try:
        changes = converge(clients, options, apply=mode == "apply", log=log)
    finally:
        clients.close()
    where = f"project {options.project}" + (f", namespace {options.namespace}" if options.namespace else "")
    heading = {"project": options.project, "namespace": options.namespace}
    render("Cloud Monitoring", changes, mode=mode, out=out, as_json=args.json, scope=where, heading=heading)
    return 0
