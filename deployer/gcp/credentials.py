"""Application Default Credentials for the commands that call Google's APIs, the one error every command gives
when there are none, and the root URL of a REST API from an ``--endpoint``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from deployer.errors import CloudError

__all__ = ["default_credentials", "no_credentials", "rest_root"]


def no_credentials(exc: Exception, error: type[CloudError] = CloudError) -> CloudError:
    """The error a command raises when Google's auth library finds no credentials (``exc`` says why)."""
    return error(
        f"no Google Cloud credentials ({exc}); run `gcloud auth application-default login`, or run where a service "
        "account is attached"
    )


def default_credentials(scopes: Sequence[str]) -> Any:
    """Application Default Credentials with ``scopes``.

    Raises:
        CloudError: there are none (:func:`no_credentials`).
    """
    import google.auth
    from google.auth.exceptions import GoogleAuthError

    try:
        credentials, _ = google.auth.default(scopes=list(scopes))
    except GoogleAuthError as exc:
        raise no_credentials(exc) from exc
    return credentials


def rest_root(endpoint: str, *, insecure: bool) -> str:
    """A REST API's root URL from an endpoint (``HOST[:PORT]``, or a URL with its scheme, kept as given):
    ``http://`` for a local server of the API (``insecure``), else ``https://``."""
    if "://" in endpoint:
        return endpoint
    return f"{'http' if insecure else 'https'}://{endpoint}"
