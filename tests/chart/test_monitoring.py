"""The chart's monitoring objects: off by default; PodMonitoring (Managed Service for Prometheus), ServiceMonitor
(Prometheus operator) and the Grafana dashboard ConfigMap when turned on."""

from __future__ import annotations

import json

import pytest

from tests.chart.rendering import render
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_nothing_for_monitoring_is_rendered_by_default(helm: str) -> None:
    kinds = {doc["kind"] for doc in render(helm)}
    assert not kinds & {"PodMonitoring", "ServiceMonitor"}
    assert not [d for d in render(helm) if d["metadata"]["name"] == "r1-dashboard"]


def test_the_toggles_render_scrapes_of_the_metrics_port_and_the_dashboard(helm: str) -> None:
    documents = render(helm, "podMonitoring.enabled=true", "serviceMonitor.enabled=true",
                       "serviceMonitor.interval=15s", "grafanaDashboard.enabled=true")  # fmt: skip
    [pod_monitoring] = [d for d in documents if d["kind"] == "PodMonitoring"]
    assert pod_monitoring["apiVersion"] == "monitoring.googleapis.com/v1"
    assert pod_monitoring["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    [service_monitor] = [d for d in documents if d["kind"] == "ServiceMonitor"]
    assert service_monitor["spec"]["endpoints"][0]["interval"] == "15s"
    assert service_monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "metrics"
    [dashboard] = [d for d in documents if d["metadata"]["name"] == "r1-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((ROOT / "chart" / "dashboards" / "erlmcp.json").read_text())
    assert json.loads(dashboard["data"]["erlmcp.json"]) == shipped
    [application] = [d for d in documents if d["kind"] == "Application"]
    kinds = {k["kind"] for k in application["spec"]["componentKinds"]}
    assert {"PodMonitoring", "ServiceMonitor", "ConfigMap"} <= kinds
