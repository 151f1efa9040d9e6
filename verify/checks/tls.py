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
# The alerts a server sends when it wants a client certificate it did not get, or does not trust the one it got.
_CLIENT_CERTIFICATE_REFUSED = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_HANDSHAKE_FAILURE",
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "TLSV1_ALERT_ACCESS_DENIED",
    }
)


def check_tls(client: WireClient) -> str:
    """The TLS handshake: verified certificate for the host name, protocol TLS 1.2+, more than 14 days left."""
    parts = urlsplit(client.target.url)
    if parts.scheme != "https":
        raise CheckSkipped("the URL is http, so there is no TLS to check")
    host, port = parts.hostname or "", parts.port or 443
    context = client.target.tls_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        with (
            socket.create_connection((host, port), timeout=client.target.timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            version, certificate = tls.version(), tls.getpeercert()
            # Under TLS 1.3 a server that wants a client certificate says so only after the handshake, when the
            # client first reads: ask for /livez so a missing or refused client certificate shows here.
            tls.sendall(f"GET /livez HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode())
            answered = tls.recv(1)
    except ssl.SSLCertVerificationError as exc:
        raise CheckFailed(
            f"TLS {host}:{port}: the certificate is not trusted for {host}: {exc.verify_message}"
        ) from exc
    except ssl.SSLError as exc:
        if exc.reason in _CLIENT_CERTIFICATE_REFUSED:
            given = (
                "the client certificate given was refused"
                if client.target.client_cert_file
                else ("the server requires a client certificate (mutual TLS): give --cert-file and --key-file")
            )
            raise CheckFailed(f"TLS {host}:{port}: {given} ({exc.reason})") from exc
        raise CheckFailed(f"TLS {host}:{port}: handshake failed (TLS 1.2 or later required): {exc}") from exc
    except OSError as exc:
        raise CheckFailed(f"TLS {host}:{port}: handshake failed (TLS 1.2 or later required): {exc}") from exc
    if not certificate:
        raise CheckFailed(f"TLS {host}:{port}: the server sent no certificate")
    if not answered:
        hint = (
            "it refused the client certificate given"
            if client.target.client_cert_file
            else ("does it require a client certificate (mutual TLS)? give --cert-file and --key-file")
        )
        raise CheckFailed(f"TLS {host}:{port}: the server closed the connection after the handshake: {hint}")
    expires = datetime.datetime.fromtimestamp(ssl.cert_time_to_seconds(str(certificate["notAfter"])), datetime.UTC)
    left = (expires - datetime.datetime.now(datetime.UTC)).days
    if left < _WARN_DAYS:
        raise CheckFailed(f"TLS {host}:{port}: the certificate expires in {left} days ({expires:%Y-%m-%d})")
    return f"{version}, certificate valid {left} more days"


CHECKS: tuple[tuple[str, Callable[[WireClient], str]], ...] = (("tls.certificate", check_tls),)
