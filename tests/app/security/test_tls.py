"""TLS and mutual TLS in the server itself, with certificates minted here, against a real server process."""

from __future__ import annotations

import os
import signal
import ssl
import time
import warnings
from collections.abc import Callable
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


def test_under_mutual_tls_the_probes_answer_on_the_metrics_port_without_a_certificate(tmp_path: Path) -> None:
    _, cert, key = tls_files(tmp_path, host="127.0.0.1", days=30)
    client_ca, _, _ = certificate_authority(tmp_path)
    server = start_server(tmp_path, ["--no-auth", "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                                     "--tls-client-ca-file", str(client_ca), "--drain-seconds", "10"],
                          tls=True)  # fmt: skip
    try:
        base = f"http://127.0.0.1:{server.metrics_port}"
        for path in ("/livez", "/readyz", "/healthz", "/health"):
            response = httpx.get(base + path)
            assert (response.status_code, response.json()) == (200, {"status": "ok"}), path
        server.process.send_signal(signal.SIGTERM)  # draining: readiness goes, liveness stays
        assert _eventually(lambda: httpx.get(base + "/readyz").status_code == 503)
        assert httpx.get(base + "/livez").status_code == 200
    finally:
        server.stop()


def test_a_renewed_certificate_is_served_by_the_running_server(tmp_path: Path) -> None:
    """Through the real server's event loop (uvloop's TLS, not the standard library's), after the file check."""
    ca, cert, key = tls_files(tmp_path, host="127.0.0.1", days=5)
    (tmp_path / "renewed").mkdir()
    new_ca, new_cert, new_key = tls_files(tmp_path / "renewed", host="127.0.0.1", days=90)
    served_cert, served_key = tmp_path / "tls.crt", tmp_path / "tls.key"
    served_cert.write_bytes(cert.read_bytes())
    served_key.write_bytes(key.read_bytes())
    server = start_server(tmp_path, ["--no-auth", "--tls-cert-file", str(served_cert),
                                     "--tls-key-file", str(served_key)], tls=True)  # fmt: skip
    url = f"https://127.0.0.1:{server.port}/livez"
    try:
        assert httpx.get(url, verify=ssl.create_default_context(cafile=str(ca))).status_code == 200
        for source, target in ((new_cert, served_cert), (new_key, served_key)):
            staged = target.with_suffix(".new")
            staged.write_bytes(source.read_bytes())
            os.replace(staged, target)
        renewed = ssl.create_default_context(cafile=str(new_ca))

        def serves_renewed() -> bool:
            try:
                return httpx.get(url, verify=renewed).status_code == 200
            except httpx.ConnectError:
                return False

        assert _eventually(serves_renewed, seconds=15)  # the files are looked at every 5 s
        assert "TLS certificate reloaded" in server.log.read_text()
    finally:
        server.stop()


def _eventually(condition: Callable[[], bool], seconds: float = 5) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_a_certificate_without_its_key_refuses_to_start(tmp_path: Path) -> None:
    from app.settings import Settings

    with pytest.raises(ValueError, match="TLS needs both tls_cert_file and tls_key_file"):
        Settings(tls_cert_file=tmp_path / "cert.pem")
