"""In-cluster mode: the tester Pod Marketplace runs is given only ``NAMESPACE`` and ``APP_INSTANCE_NAME``; it
finds the app's Services and reads its API key from the app's Secret through the Kubernetes API, with the
Pod's own service-account token."""

from __future__ import annotations

import base64
import binascii
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from verify.client import key_from_lines

__all__ = ["SERVICE_ACCOUNT_DIR", "Discovered", "InClusterError", "discover"]

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
NAME_LABEL = "app.kubernetes.io/name"


class InClusterError(Exception):
    """The app cannot be found or read from inside the cluster; the message says what is missing."""


@dataclass(frozen=True, slots=True)
class Discovered:
    """Where the app answers, and its API key (None when it has no key Secret: auth is off)."""

    url: str
    metrics_url: str
    api_key: str | None


def _items(api: httpx.Client, base: str, namespace: str, kind: str, app: str) -> list[dict[str, Any]]:
    try:
        response = api.get(
            f"{base}/api/v1/namespaces/{namespace}/{kind}", params={"labelSelector": f"{NAME_LABEL}={app}"}
        )
    except httpx.HTTPError as exc:
        raise InClusterError(f"the Kubernetes API at {base} cannot be reached: {exc}") from exc
    if response.status_code != 200:
        raise InClusterError(
            f"listing {kind} in {namespace} was refused ({response.status_code}): {response.text[:200]}"
        )
    items = response.json().get("items") or []
    return [item for item in items if isinstance(item, dict)]


def _port(service: dict[str, Any], name: str) -> int | None:
    for port in (service.get("spec") or {}).get("ports") or []:
        if port.get("name") == name:
            return int(port["port"])
    return None


def _scheme(service: dict[str, Any], name: str) -> str:
    """https when the port declares ``appProtocol: https`` (the chart's end-to-end TLS), else http."""
    for port in (service.get("spec") or {}).get("ports") or []:
        if port.get("name") == name and str(port.get("appProtocol", "")).lower() == "https":
            return "https"
    return "http"


def discover(namespace: str, app: str, *, api_url: str, service_account_dir: Path, timeout: float) -> Discovered:
    """The app's MCP and metrics URLs (cluster DNS names) and its API key.

    Raises:
        InClusterError: no token, the API refuses, no Service with an ``http`` port, or an unreadable key.
    """
    try:
        token = (service_account_dir / "token").read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise InClusterError(f"no service-account token in {service_account_dir}: {exc.strerror or exc}") from exc
    ca = service_account_dir / "ca.crt"
    verify = ssl.create_default_context(cafile=str(ca) if ca.exists() else None)
    with httpx.Client(verify=verify, timeout=timeout, headers={"Authorization": f"Bearer {token}"}) as api:
        services = _items(api, api_url, namespace, "services", app)
        secrets = _items(api, api_url, namespace, "secrets", app)
    mcp = [(s, _port(s, "http")) for s in services if _port(s, "http")]
    metrics = [(s, _port(s, "metrics")) for s in services if _port(s, "metrics")]
    if not mcp:
        raise InClusterError(f"no Service labelled {NAME_LABEL}={app} with a port named http in namespace {namespace}")
    service, port = mcp[0]
    url = f"{_scheme(service, 'http')}://{service['metadata']['name']}.{namespace}.svc:{port}"
    if metrics:
        metrics_service, metrics_port = metrics[0]
        metrics_url = f"http://{metrics_service['metadata']['name']}.{namespace}.svc:{metrics_port}/metrics"
    else:
        metrics_url = f"http://{service['metadata']['name']}.{namespace}.svc:9090/metrics"
    api_key = None
    for secret in secrets:
        encoded = (secret.get("data") or {}).get("api-keys")
        if encoded:
            try:
                lines = base64.b64decode(encoded).decode().splitlines()
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise InClusterError(f"Secret {secret['metadata']['name']}: api-keys is not base64 text") from exc
            api_key = key_from_lines(lines)
            break
    return Discovered(url, metrics_url, api_key)
