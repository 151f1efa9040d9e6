"""The catalogue as the chart delivers it: a ConfigMap the server accepts, hot-reloadable (no checksum rolls the
Pods), with the Secrets and ConfigMaps its entries read mounted where the catalogue says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.catalog.loader import load_catalog
from tests.chart.rendering import render
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def one(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [found] = [d for d in documents if d["kind"] == kind and d["metadata"]["name"].startswith("r1")]
    return found


def test_the_catalogue_the_chart_writes_is_one_the_server_accepts(helm: str, tmp_path: Path) -> None:
    documents = render(helm, values=ROOT / "chart" / "ci" / "catalog-values.yaml")
    path = tmp_path / "catalog.yaml"
    path.write_text(one(documents, "ConfigMap")["data"]["catalog.yaml"])
    catalog = load_catalog(path)
    assert [tool.name for tool in catalog.tools] == ["forecast"]
    spec = one(documents, "Deployment")["spec"]["template"]["spec"]
    mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert "/etc/erlmcp/catalog-secrets/weather-api" in mounts
    assert "/etc/erlmcp/catalog-files/mcp-docs" in mounts
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["catalog-secret-weather-api"]["secret"]["secretName"] == "weather-api"
    assert volumes["catalog-files-mcp-docs"]["configMap"]["name"] == "mcp-docs"


def test_a_changed_catalogue_does_not_roll_the_pods(helm: str) -> None:
    tool = ("catalog.tools[0].builtin=echo", "catalog.tools[0].description=d")
    before = one(render(helm, "catalog.tools[0].name=a", *tool), "Deployment")
    after = one(render(helm, "catalog.tools[0].name=b", *tool), "Deployment")
    assert before["spec"]["template"] == after["spec"]["template"]


def test_without_a_catalogue_the_server_serves_its_built_in_one(helm: str) -> None:
    documents = render(helm)
    assert not one(documents, "ConfigMap").get("data")
    env = {e["name"] for e in one(documents, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "ERLMCP_CATALOG" not in env
    assert {"ERLMCP_TOOL_WORKERS", "ERLMCP_TOOL_WORKER_MEMORY_MB"} <= env


def test_a_secret_name_with_dots_makes_a_valid_volume_name(helm: str) -> None:
    spec = one(render(helm, "catalogSecrets={api.weather.example}"), "Deployment")["spec"]["template"]["spec"]
    assert "catalog-secret-api-weather-example" in {v["name"] for v in spec["volumes"]}
