"""Applying rendered manifests to a cluster with the real kubectl."""

from __future__ import annotations

import shutil
import subprocess

from deployer.errors import DeployerError

__all__ = ["apply_manifests"]


def apply_manifests(text: str, *, namespace: str, kubectl: str | None = None, context: str | None = None) -> str:
    """``kubectl apply`` the manifests into ``namespace``; returns kubectl's report.

    Raises:
        DeployerError: kubectl is missing, no cluster is reachable, or the apply fails.
    """
    binary = shutil.which(kubectl or "kubectl")
    if binary is None:
        raise DeployerError("cannot find kubectl; run scripts/install-tools.sh and put .tools/bin on PATH")
    base = [binary, *(["--context", context] if context else [])]
    probe = subprocess.run([*base, "version", "--request-timeout=10s"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise DeployerError(
            "no Kubernetes cluster is reachable (kubectl version failed); configure one with "
            f"'gcloud container clusters get-credentials' or KUBECONFIG. kubectl said: {probe.stderr.strip()}"
        )
    result = subprocess.run(
        [*base, "apply", "--namespace", namespace, "-f", "-"], input=text, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise DeployerError(f"kubectl apply failed (exit {result.returncode}): {result.stderr.strip()}")
    return result.stdout
