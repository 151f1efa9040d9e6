"""The Kubernetes API, as the deployer uses it: discovery, server-side apply, reads, patches, deletes, logs.

Built on the official ``kubernetes`` client's dynamic client, so every kind the server serves (custom resources
such as the Application included) is reached through the server's own discovery, at the versions it has.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import DynamicApiError, ResourceNotFoundError, ResourceNotUniqueError
from urllib3.exceptions import HTTPError

from deployer.errors import ClusterError

__all__ = ["FIELD_MANAGER", "Cluster"]

FIELD_MANAGER = "erlmcp-deployer"
_CLUSTER_SCOPED = frozenset(
    {
        "Namespace",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "StorageClass",
        "PriorityClass",
        "PersistentVolume",
        "APIService",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "Node",
        "PodSecurityPolicy",
        "CertificateSigningRequest",
        "VolumeAttachment",
        "RuntimeClass",
        "IngressClass",
        "CSIDriver",
        "CSINode",
        "ClusterIssuer",
    }
)


def _reason(exc: Exception) -> str:
    """What the API server said, in one line."""
    if isinstance(exc, DynamicApiError | ApiException):
        body = getattr(exc, "body", None) or b""
        try:
            import orjson

            status = orjson.loads(body)
            if isinstance(status, dict) and status.get("message"):
                return f"{exc.status} {status.get('reason', '')}: {status['message']}".strip()
        except (ValueError, TypeError):
            pass
        return f"{exc.status} {exc.reason}"
    return str(exc) or type(exc).__name__


@contextmanager
def _api(what: str) -> Iterator[None]:
    """Turn the client's exceptions into a ClusterError that says what was being done."""
    try:
        yield
    except (DynamicApiError, ApiException) as exc:
        raise ClusterError(f"{what}: {_reason(exc)}", status=exc.status) from exc
    except (HTTPError, OSError) as exc:
        raise ClusterError(f"{what}: the Kubernetes API server cannot be reached ({exc})") from exc


def is_cluster_scoped(kind: str) -> bool:
    """Whether objects of ``kind`` live outside namespaces (the built-in list Google's tools use)."""
    return kind in _CLUSTER_SCOPED


class Cluster:
    """One Kubernetes API server."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._api_client = api_client
        self._dynamic: DynamicClient | None = None

    @classmethod
    def connect(cls, *, kubeconfig: Path | None = None, context: str | None = None) -> Cluster:
        """The cluster of a kubeconfig (``--kubeconfig``, ``KUBECONFIG``, ``~/.kube/config``), or the one this Pod
        runs in (the Marketplace deployer Job) when there is no kubeconfig.

        Raises:
            ClusterError: no configuration is found or it cannot be read.
        """
        path = kubeconfig or (Path(os.environ["KUBECONFIG"]) if os.environ.get("KUBECONFIG") else None)
        default = Path.home() / ".kube" / "config"
        try:
            if path is None and not default.exists() and os.environ.get("KUBERNETES_SERVICE_HOST"):
                configuration = client.Configuration()
                config.load_incluster_config(client_configuration=configuration)
                return cls(client.ApiClient(configuration))
            return cls(config.new_client_from_config(config_file=str(path or default), context=context))
        except (ConfigException, OSError, yaml.YAMLError) as exc:
            raise ClusterError(
                f"no Kubernetes cluster is configured ({exc}); use 'gcloud container clusters get-credentials', "
                "KUBECONFIG or --kubeconfig"
            ) from exc

    @property
    def _client(self) -> DynamicClient:
        if self._dynamic is None:
            with _api("reading the API server's discovery"):
                self._dynamic = DynamicClient(self._api_client)
        return self._dynamic

    def close(self) -> None:
        """Let go of the connection pool."""
        self._api_client.close()

    def _find(self, what: str, **search: Any) -> Any:
        for attempt in range(2):
            try:
                with _api(f"looking up {what}"):
                    return self._client.resources.get(**search)
            except ResourceNotFoundError:
                if attempt == 0:  # a custom resource defined since discovery was read: read it again
                    with _api("reading the API server's discovery"):
                        self._client.resources.invalidate_cache()
                    continue
            except ResourceNotUniqueError as exc:
                raise ClusterError(f"{what} is served more than once; name its version") from exc
        raise ClusterError(
            f"the cluster does not serve {what}; install its CustomResourceDefinition first "
            "or turn off the chart feature that needs it"
        )

    def _resource(self, api_version: str, kind: str) -> Any:
        return self._find(f"{kind} ({api_version})", api_version=api_version, kind=kind)

    def api_version_of(self, group: str, kind: str) -> str:
        """The version the server prefers for ``kind`` in ``group`` (an Application's componentKinds name a
        group, or a group/version such as ``apps/v1``, or ``v1`` for the core group)."""
        name = group.split("/")[0] if "/" in group else ("" if group in {"", "v1", "core"} else group)
        return str(self._find(f"{kind} ({group or 'core'})", group=name, kind=kind, preferred=True).group_version)

    def _namespace_for(self, resource: Any, namespace: str | None) -> str | None:
        return namespace if getattr(resource, "namespaced", True) else None

    # -- discovery --------------------------------------------------------------------------------------------

    def version(self) -> str:
        """The server's Kubernetes version, e.g. ``1.20.2``."""
        with _api("reading the server version"):
            info = client.VersionApi(self._api_client).get_code()
        return str(info.git_version).lstrip("v").split("-")[0].split("+")[0]

    def api_versions(self) -> list[str]:
        """Every group/version the server serves (what Helm's ``--api-versions`` takes)."""
        with _api("reading the server's API groups"):
            core = client.CoreApi(self._api_client).get_api_versions()
            groups = client.ApisApi(self._api_client).get_api_versions()
        versions = list(core.versions)
        for group in groups.groups:
            versions += [found.group_version for found in group.versions]
        return sorted(set(versions))

    # -- objects ----------------------------------------------------------------------------------------------

    def get(self, api_version: str, kind: str, name: str, namespace: str | None) -> dict[str, Any] | None:
        """One object, or None when it does not exist."""
        resource = self._resource(api_version, kind)
        try:
            with _api(f"reading {kind} {name}"):
                found = resource.get(name=name, namespace=self._namespace_for(resource, namespace))
        except ClusterError as exc:
            if exc.status == 404:
                return None
            raise
        return dict(found.to_dict())

    def list(self, api_version: str, kind: str, namespace: str, *, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """The objects of a kind in a namespace that carry every one of ``labels``."""
        resource = self._resource(api_version, kind)
        selector = ",".join(f"{key}={value}" for key, value in labels.items())
        with _api(f"listing {kind} in {namespace}"):
            found = resource.get(namespace=namespace, label_selector=selector)
        return [dict(item) for item in found.to_dict().get("items", [])]

    def apply(self, manifest: Mapping[str, Any], namespace: str) -> dict[str, Any]:
        """Server-side apply of one object (this deployer owns the fields it sets; conflicts are taken over)."""
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        resource = self._resource(manifest["apiVersion"], kind)
        with _api(f"applying {kind} {name}"):
            applied = resource.server_side_apply(
                body=dict(manifest),
                name=name,
                namespace=self._namespace_for(resource, namespace),
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
            )
        return dict(applied.to_dict())

    def patch(
        self, api_version: str, kind: str, name: str, namespace: str, patch: Mapping[str, Any], *, status: bool = False
    ) -> dict[str, Any]:
        """A JSON merge patch of one object (or of its status subresource)."""
        resource = self._resource(api_version, kind)
        if status:
            resource = resource.subresources["status"]
        with _api(f"patching {kind} {name}"):
            patched = resource.patch(
                body=dict(patch), name=name, namespace=namespace, content_type="application/merge-patch+json"
            )
        return dict(patched.to_dict())

    def delete(
        self, api_version: str, kind: str, name: str, namespace: str, *, propagation: str = "Background"
    ) -> bool:
        """Delete one object; False when it was already gone."""
        resource = self._resource(api_version, kind)
        try:
            with _api(f"deleting {kind} {name}"):
                resource.delete(
                    name=name,
                    namespace=self._namespace_for(resource, namespace),
                    body={"propagationPolicy": propagation},
                )
        except ClusterError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def pod_log(self, name: str, namespace: str) -> str:
        """A Pod's log (its first container).

        Raises:
            ClusterError: the log cannot be read (no node runs the Pod, or the kubelet is unreachable).
        """
        with _api(f"reading the log of Pod {name}"):
            return str(client.CoreV1Api(self._api_client).read_namespaced_pod_log(name, namespace))
