"""What to apply to one cluster: values (with those generated before), the chart rendered for that cluster's
Kubernetes version, with its ``lookup`` reading that cluster, checked and split by Marketplace's rules."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deployer.marketplace.application import Prepared, prepare
from deployer.marketplace.cluster import Cluster
from deployer.marketplace.expand import IMAGE_REPO_PREFIX, flatten_values
from deployer.marketplace.generated import keep, recall
from deployer.marketplace.helm import KubeTarget
from deployer.marketplace.render import Rendered, render
from deployer.marketplace.schema import Schema

__all__ = ["plan"]


def plan(
    cluster: Cluster,
    schema: Schema,
    values: Mapping[str, Any],
    *,
    target: KubeTarget,
    chart: Path,
    helm: str,
    test: bool = False,
) -> tuple[Rendered, Prepared]:
    """Render and prepare the app for ``cluster``; ``target`` names the same cluster for Helm (the kubeconfig and
    context ``cluster`` was connected with), whose server dry-run lets the chart's ``lookup`` keep what it generated
    on an earlier install (the request-state key, the server CA and certificate).

    Raises:
        ValuesError, HelmError, InstallError, ClusterError: as the steps do; nothing has been applied yet.
    """
    given = flatten_values(values, schema)
    explicit = {name for name, value in given.items() if value is not None and name != IMAGE_REPO_PREFIX}
    name = str(given.get(schema.property_of_type("NAME").name) or "")
    namespace = str(given.get(schema.property_of_type("NAMESPACE").name) or "")
    live = cluster.get("app.k8s.io/v1beta1", "Application", name, namespace) if name and namespace else None
    remembered = recall(cluster, schema, name, namespace) if name and namespace else {}
    rendered = render(
        schema,
        {**remembered, **given},
        chart=chart,
        helm=helm,
        app_uid=(live or {}).get("metadata", {}).get("uid"),
        kube_version=cluster.version(),
        api_versions=cluster.api_versions(),
        cluster=target,
    )
    kept = keep(schema, rendered.values, explicit, rendered.release, rendered.namespace)
    prepared = prepare([*rendered.manifests, kept], release=rendered.release, schema=schema, test=test)
    return rendered, prepared
