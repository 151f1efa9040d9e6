"""TLS, when the URL is https: a certificate the client trusts for the host, TLS 1.2 or later, not expiring."""

from __future__ import annotations

import datetime
import socket
import ssl
from collections.abc import Callable
from urllib.parse import urlsplit

from verify.client import CheckFailed, CheckSkipped, WireClient

__all__ = ["CHECKS"]

_WARN_DAYS = 14


def check_tls(client: WireClient) -> str:
    """The TLS handshake: verified certificate for the host name, protocol TLS 1.2+, more than 14 days left."""
    parts = urlsplit(client.target.url)
    if parts.scheme != "https":
        raise CheckSkipped("the URL is http, so there is no TLS to check")
    host, port = parts.hostname or "", parts.port or 443
    context = ssl.create_default_context(cafile=client.target.ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        with (
            socket.create_connection((host, port), timeout=client.target.timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            version, certificate = tls.version(), tls.getpeercert()
    except ssl.SSLCertVerificationError as exc:
        raise CheckFailed(
            f"TLS {host}:{port}: the certificate is not trusted for {host}: {exc.verify_message}"
        ) from exc
    except (ssl.SSLError, OSError) as exc:
        raise CheckFailed(f"TLS {host}:{port}: handshake failed (TLS 1.2 or later required): {exc}") from exc
    if not certificate:
        raise CheckFailed(f"TLS {host}:{port}: the server sent no certificate")
    expires = datetime.datetime.fromtimestamp(ssl.cert_time_to_seconds(str(certificate["notAfter"])), datetime.UTC)
    left = (expires - datetime.datetime.now(datetime.UTC)).days
    if left < _WARN_DAYS:
        raise CheckFailed(f"TLS {host}:{port}: the certificate expires in {left} days ({expires:%Y-%m-%d})")
    return f"{version}, certificate valid {left} more days"


CHECKS: tuple[tuple[str, Callable[[WireClient], str]], ...] = (("tls.certificate", check_tls),)
