"""TLS and mutual TLS in the server itself, with certificates minted here, against a real server process."""

from __future__ import annotations

import ssl
import warnings
from pathlib import Path

import httpx
import pytest

from tests.certificates import certificate_authority, client_certificate, tls_files
from tests.conftest import start_server

pytestmark = pytest.mark.slow


def test_the_server_speaks_tls_with_its_certificate_and_refuses_tls_1_1(tmp_path: Path) -> None:
    ca, cert, key = tls_files(tmp_path, host="127.0.0.1", days=30)
    server = start_server(tmp_path, ["--no-auth", "--tls-cert-file", str(cert), "--tls-key-file", str(key)], tls=True)
    try:
        trusted = ssl.create_default_context(cafile=str(ca))
        assert httpx.get(f"https://127.0.0.1:{server.port}/livez", verify=trusted).status_code == 200
        with httpx.Client(verify=trusted) as client:
            response = client.get(f"https://127.0.0.1:{server.port}/livez")
            assert response.extensions["network_stream"].get_extra_info("ssl_object").version() == "TLSv1.3"
        tls12 = ssl.create_default_context(cafile=str(ca))
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        with httpx.Client(verify=tls12) as client:
            response = client.get(f"https://127.0.0.1:{server.port}/livez")
            assert response.extensions["network_stream"].get_extra_info("ssl_object").version() == "TLSv1.2"
        old = ssl.create_default_context(cafile=str(ca))
        with warnings.catch_warnings():  # an obsolete client on purpose: Python warns that TLS 1.1 is deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("ALL:@SECLEVEL=0")
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"https://127.0.0.1:{server.port}/livez", verify=old)
    finally:
        server.stop()


def test_mutual_tls_lets_in_only_clients_with_a_certificate_from_the_client_ca(tmp_path: Path) -> None:
    ca, cert, key = tls_files(tmp_path, host="127.0.0.1", days=30)
    client_ca, client_ca_key, client_ca_cert = certificate_authority(tmp_path)
    client_cert, client_key = client_certificate(tmp_path, client_ca_key, client_ca_cert)
    server = start_server(tmp_path, ["--no-auth", "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                                     "--tls-client-ca-file", str(client_ca)], tls=True)  # fmt: skip
    try:
        url = f"https://127.0.0.1:{server.port}/livez"
        with_cert = ssl.create_default_context(cafile=str(ca))
        with_cert.load_cert_chain(str(client_cert), str(client_key))
        assert httpx.get(url, verify=with_cert).status_code == 200
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            httpx.get(url, verify=ssl.create_default_context(cafile=str(ca)))
    finally:
        server.stop()


def test_a_certificate_without_its_key_refuses_to_start(tmp_path: Path) -> None:
    from app.settings import Settings

    with pytest.raises(ValueError, match="TLS needs both tls_cert_file and tls_key_file"):
        Settings(tls_cert_file=tmp_path / "cert.pem")
