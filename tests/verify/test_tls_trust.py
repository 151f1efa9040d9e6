"""``--ca-file`` trusts what it holds as it is: a CA's certificate, or the very certificate (chain) the server
presents, such as the chart's test Pod takes from Secret Manager (tls-cert) when the server's certificate is there."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from tests.certificates import tls_files
from verify.client import Target


def handshake(client: ssl.SSLContext, cert: Path, key: Path, host: str) -> None:
    """A TLS handshake in memory between ``client`` and a server presenting ``cert``; raises what the client says."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_side = client.wrap_bio(to_client, to_server, server_hostname=host)
    server_side = server.wrap_bio(server_in, server_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, side in (("client", client_side), ("server", server_side)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError:
                    if name == "client":
                        raise
        server_in.write(to_server.read())
        to_client.write(server_out.read())
        if all(done.values()):
            return
    raise AssertionError("the handshake did not finish")


def test_a_ca_file_holding_the_servers_own_certificate_is_trusted_without_its_ca(tmp_path: Path) -> None:
    _, cert, key = tls_files(tmp_path, host="r1.ns1.svc", days=30)  # a certificate a CA signed, without the CA
    context = Target(url="https://r1.ns1.svc", metrics_url="", ca_file=str(cert)).tls_context()
    handshake(context, cert, key, "r1.ns1.svc")


def test_a_ca_file_holding_the_ca_is_trusted_as_before(tmp_path: Path) -> None:
    ca, cert, key = tls_files(tmp_path, host="r1.ns1.svc", days=30)
    handshake(Target(url="https://r1.ns1.svc", metrics_url="", ca_file=str(ca)).tls_context(), cert, key, "r1.ns1.svc")


def test_the_servers_own_certificate_is_still_checked_against_the_name_asked_for(tmp_path: Path) -> None:
    _, cert, key = tls_files(tmp_path, host="r1.ns1.svc", days=30)
    context = Target(url="https://other.ns1.svc", metrics_url="", ca_file=str(cert)).tls_context()
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        handshake(context, cert, key, "other.ns1.svc")


def test_another_certificate_is_not_trusted(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, trusted, _ = tls_files(tmp_path / "a", host="r1.ns1.svc", days=30)
    _, cert, key = tls_files(tmp_path / "b", host="r1.ns1.svc", days=30)
    context = Target(url="https://r1.ns1.svc", metrics_url="", ca_file=str(trusted)).tls_context()
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(context, cert, key, "r1.ns1.svc")
