"""The deployer's errors::

DeployerError       anything the deployer refuses or fails at; the message says what to change
├── SchemaError     schema.yaml breaks a Marketplace rule
├── ValuesError     a value is unknown to the schema, missing, or of the wrong type
├── HelmError       Helm is missing or failed to render
├── ClusterError    the Kubernetes API refused a request or cannot be reached
├── InstallError    the installation failed: an invalid chart output, a component not ready, a tester failed
├── LocalRunError   the rendered Deployment cannot be run as a local process
└── CloudError      a Google Cloud API refused a call or cannot be reached
"""

from __future__ import annotations

__all__ = [
    "CloudError",
    "ClusterError",
    "DeployerError",
    "HelmError",
    "InstallError",
    "LocalRunError",
    "SchemaError",
    "ValuesError",
]


class DeployerError(Exception):
    """The deployer cannot go on; the message says why."""


class SchemaError(DeployerError):
    """schema.yaml breaks a Marketplace schema v2 rule."""


class ValuesError(DeployerError):
    """The values do not fit the schema."""


class HelmError(DeployerError):
    """Helm is missing or failed."""


class LocalRunError(DeployerError):
    """The rendered Deployment cannot be run locally."""


class ClusterError(DeployerError):
    """The Kubernetes API refused a request or cannot be reached; ``status`` is the HTTP status, if any."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class InstallError(DeployerError):
    """The installation failed after it started: the Application is marked Failed."""


class CloudError(DeployerError):
    """A Google Cloud API refused a call, or cannot be reached, or has no credentials; the message says which."""
