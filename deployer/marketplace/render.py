"""Schema + values -> rendered manifests: the deployer's core step, shared by every command."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployer.marketplace.expand import expand, nest
from deployer.marketplace.helm import KubeTarget, helm_template
from deployer.marketplace.manifests import Manifest, parse_manifests
from deployer.marketplace.schema import Schema

__all__ = ["Rendered", "render"]


@dataclass(frozen=True, slots=True)
class Rendered:
    """The outcome of one render: who and where, the Helm values, the manifests as text and as objects."""

    release: str
    namespace: str
    values: Mapping[str, Any]  # the final values by property name (generated and projected ones included)
    helm_values: Mapping[str, Any]
    text: str
    manifests: list[Manifest]


def render(
    schema: Schema,
    values: Mapping[str, Any],
    *,
    chart: Path,
    helm: str,
    app_uid: str | None = None,
    kube_version: str | None = None,
    api_versions: Sequence[str] = (),
    cluster: KubeTarget | None = None,
) -> Rendered:
    """Expand the values against the schema and render the chart with Helm, as Marketplace's deployer does.

    ``kube_version`` and ``api_versions`` describe the target cluster (Helm's ``--kube-version`` and
    ``--api-versions``), so that the chart picks the API versions that cluster serves. ``cluster``, when given,
    is the cluster the chart's ``lookup`` reads (Helm's server dry-run), so that what the chart generated on an
    earlier install is kept; without it the render touches no cluster.

    Raises:
        ValuesError: the values do not fit the schema.
        HelmError: Helm fails.
        DeployerError: Helm's output is not a list of Kubernetes objects.
    """
    final = expand(values, schema, app_uid=app_uid)
    release = str(final[schema.property_of_type("NAME").name])
    namespace = str(final[schema.property_of_type("NAMESPACE").name])
    helm_values = nest(final)
    extra = [f"--kube-version={kube_version}"] if kube_version else []
    extra += [f"--api-versions={version}" for version in api_versions]
    text = helm_template(
        helm, chart, release=release, namespace=namespace, values=helm_values, extra_args=extra, cluster=cluster
    )
    return Rendered(release, namespace, final, helm_values, text, parse_manifests(text))
