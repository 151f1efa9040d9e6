"""Rendering the chart with the real Helm 3 binary.

Offline (``render``, ``demo``, ``install --dry-run``) this is plain ``helm template``: the chart's ``lookup`` finds
nothing. For a real cluster (:class:`KubeTarget`) it is ``helm template --dry-run=server``, and ``lookup`` reads that
cluster, so what the chart generated once and keeps through ``lookup`` (the request-state key, the server CA and
certificate) is kept. What Helm 3.18 does then (cmd/helm/template.go, pkg/action/install.go, pkg/action/action.go,
pkg/engine/lookup_func.go):

* ``helm template`` sets ``ClientOnly`` unless ``--validate``, and ``--dry-run=server`` leaves it so: Capabilities
  still come from ``--kube-version`` and ``--api-versions`` (on top of Helm's built-in defaults), no release is read
  from or written to the cluster, nothing is applied, and no "already exists" check is made.
* ``--dry-run=server`` only makes ``renderResources`` give the template engine the cluster's REST config
  (``interactWithRemote``), so ``lookup`` asks the API server: discovery of the group version (allowed to every
  authenticated account) and a ``get`` of the object named (the chart looks up Secrets only). A missing object is an
  empty dict; any other error (unreachable, forbidden) fails the render.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deployer.errors import HelmError, ValuesError

__all__ = ["KubeTarget", "find_helm", "helm_template"]

# How Helm reports a chart's ``fail`` and a values.schema.json violation: the values are refused, not Helm broken.
_REFUSED = re.compile(
    r"^Error: (?:execution error at \([^)]*\): (?P<fail>.*)|(?P<schema>values don't meet the specifications.*))$",
    re.DOTALL | re.MULTILINE,
)
# Helm's own log lines (``lookup_func.go:130: [ERROR] ...``) and its hint after a failed render: not the error.
_NOISE = re.compile(r"^(\S+\.go:\d+: \[[A-Z]+\] .*|Use --debug flag to render out invalid YAML)$")


@dataclass(frozen=True, slots=True)
class KubeTarget:
    """The cluster whose objects the chart's ``lookup`` reads: the kubeconfig and context the deployer was given.

    Neither given: Helm finds the cluster as the deployer's :meth:`Cluster.connect` does (``KUBECONFIG``,
    ``~/.kube/config``, else the Pod's service account).
    """

    kubeconfig: Path | None = None
    context: str | None = None

    def args(self) -> list[str]:
        """Helm's options for this cluster."""
        found = ["--dry-run=server"]
        if self.kubeconfig is not None:
            found.append(f"--kubeconfig={self.kubeconfig}")
        if self.context:
            found.append(f"--kube-context={self.context}")
        return found


# The Helm this repository pins and tests with: `make setup` (scripts/install-tools.sh) installs it here.
PINNED_HELM = Path(__file__).resolve().parents[2] / ".tools" / "bin" / "helm"


def find_helm(explicit: str | None) -> str:
    """The Helm binary to run: the one given; else the repository's pinned Helm (``.tools/bin/helm``) when
    ``make setup`` installed it, with no PATH change needed; else ``helm`` on PATH.

    Raises:
        HelmError: no Helm binary can be found.
    """
    if explicit is None and PINNED_HELM.is_file() and os.access(PINNED_HELM, os.X_OK):
        return str(PINNED_HELM)
    candidate = explicit or "helm"
    found = shutil.which(candidate)
    if found is None:
        raise HelmError(
            f"cannot find Helm ({candidate!r}); run `make setup` (scripts/install-tools.sh installs the pinned "
            "Helm into .tools/bin), or pass --helm PATH"
        )
    return found


def helm_template(
    helm: str,
    chart: Path,
    *,
    release: str,
    namespace: str,
    values: Mapping[str, Any],
    extra_args: Sequence[str] = (),
    cluster: KubeTarget | None = None,
) -> str:
    """Run ``helm template`` and return the rendered manifests; with ``cluster``, with the chart's ``lookup``
    reading that cluster (``--dry-run=server``).

    The values go through a private temporary file (they may hold generated secrets).

    Raises:
        HelmError: Helm fails; the message carries Helm's own error, and says so when Helm could not read the
            cluster.
    """
    with tempfile.TemporaryDirectory(prefix="erlmcp-helm-") as tmp:
        values_file = Path(tmp, "values.yaml")
        values_file.touch(mode=0o600)
        values_file.write_text(yaml.safe_dump(dict(values), sort_keys=True), encoding="utf-8")
        env = {**os.environ}
        if cluster is not None:  # the cluster is the one named here, not one HELM_KUBECONTEXT and the like name
            env = {key: value for key, value in env.items() if not key.startswith("HELM_KUBE")}
        for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
            env.setdefault(var, str(Path(tmp, var.lower())))
        command = [helm, "template", release, str(chart), "--namespace", namespace, "--values", str(values_file)]
        command += cluster.args() if cluster is not None else []
        result = subprocess.run([*command, *extra_args], capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        error = "\n".join(line for line in result.stderr.strip().splitlines() if not _NOISE.match(line)).strip()
        if cluster is not None and "error calling lookup" in error:
            hint = ""
            if "forbidden" in error:
                hint = f"; the account needs get on the objects the chart looks up in namespace {namespace}"
            raise HelmError(
                "Helm cannot read the Kubernetes cluster for the chart's lookup (which keeps the keys and "
                f"certificates it generated on an earlier install){hint}: {error}"
            )
        refused = _REFUSED.search(error)
        if refused:  # the chart's own checks (fail, values.schema.json) refuse the values: bad input, exit 2
            why = (refused.group("fail") or refused.group("schema")).strip()
            raise ValuesError(f"the chart refuses these values: {why}")
        raise HelmError(f"helm template failed (exit {result.returncode}): {error}")
    return result.stdout
