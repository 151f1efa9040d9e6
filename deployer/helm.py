"""Rendering the chart with the real Helm 3 binary."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from deployer.errors import HelmError

__all__ = ["find_helm", "helm_template"]


def find_helm(explicit: str | None) -> str:
    """The Helm binary to run: the one given, else ``helm`` on PATH.

    Raises:
        HelmError: no Helm binary can be found.
    """
    candidate = explicit or "helm"
    found = shutil.which(candidate)
    if found is None:
        raise HelmError(
            f"cannot find Helm ({candidate!r}); run scripts/install-tools.sh and put .tools/bin on PATH, "
            "or pass --helm PATH"
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
) -> str:
    """Run ``helm template`` and return the rendered manifests.

    The values go through a private temporary file (they may hold generated secrets).

    Raises:
        HelmError: Helm fails; the message carries Helm's own error.
    """
    with tempfile.TemporaryDirectory(prefix="erlmcp-helm-") as tmp:
        values_file = Path(tmp, "values.yaml")
        values_file.touch(mode=0o600)
        values_file.write_text(yaml.safe_dump(dict(values), sort_keys=True), encoding="utf-8")
        env = {**os.environ}
        for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
            env.setdefault(var, str(Path(tmp, var.lower())))
        command = [helm, "template", release, str(chart), "--namespace", namespace, "--values", str(values_file)]
        result = subprocess.run([*command, *extra_args], capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise HelmError(f"helm template failed (exit {result.returncode}): {result.stderr.strip()}")
    return result.stdout
