"""The MCP listener's TLS context follows its files: a renewed certificate or a changed client CA bundle is
served to new connections without a restart, and files that cannot be used leave the previous ones in place."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from app.transports.tls import ServingTls
from tests.certificates import certificate_authority, client_certificate, tls_files


def _mounted(folder: Path, source: Path) -> None:
    """Point ``folder``/..data at ``source``'s files the way kubelet mounts a Secret, swapping the link atomically."""
    link = folder / "..data"
    staging = folder / "..data_tmp"
    staging.symlink_to(source)
    os.replace(staging, link)
    for name in ("tls.crt", "tls.key", "ca.crt"):
        if not (folder / name).is_symlink():
            (folder / name).symlink_to(Path("..data") / name)


def _secret(folder: Path, ca: Path, cert: Path, key: Path) -> Path:
    folder.mkdir()
    (folder / "tls.crt").write_bytes(cert.read_bytes())
    (folder / "tls.key").write_bytes(key.read_bytes())
    (folder / "ca.crt").write_bytes(ca.read_bytes())
    return folder


class _Listener:
    """A real TLS listener on loopback that answers each connection with b"ok" through ``context``."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self._context = context
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            try:
                with self._context.wrap_socket(connection, server_side=True) as tls:
                    tls.sendall(b"ok")
            except (OSError, ssl.SSLError):
                connection.close()

    def close(self) -> None:
        self._socket.close()


def _peer_certificate(port: int, trusted: Path, client: tuple[Path, Path] | None = None) -> x509.Certificate:
    context = ssl.create_default_context(cafile=str(trusted))
    if client is not None:
        context.load_cert_chain(str(client[0]), str(client[1]))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.recv(2) == b"ok"
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)


@pytest.fixture
def listener_of() -> Iterator[list[_Listener]]:
    listeners: list[_Listener] = []
    yield listeners
    for listener in listeners:
        listener.close()


def test_a_renewed_certificate_reaches_new_connections_without_a_restart(
    tmp_path: Path, listener_of: list[_Listener]
) -> None:
    first = _secret(tmp_path / "v1", *tls_files(tmp_path, host="127.0.0.1", days=5))
    (tmp_path / "renewed").mkdir()
    second = _secret(tmp_path / "v2", *tls_files(tmp_path / "renewed", host="127.0.0.1", days=90))
    mount = tmp_path / "mount"
    mount.mkdir()
    _mounted(mount, first)
    tls = ServingTls(mount / "tls.crt", mount / "tls.key", check_seconds=0)
    listener = _Listener(tls.context)
    listener_of.append(listener)
    before = _peer_certificate(listener.port, first / "ca.crt")

    _mounted(mount, second)
    after = _peer_certificate(listener.port, second / "ca.crt")

    assert before.serial_number != after.serial_number
    assert after.not_valid_after_utc > before.not_valid_after_utc


def test_a_changed_client_ca_bundle_turns_away_clients_of_the_removed_ca(
    tmp_path: Path, listener_of: list[_Listener]
) -> None:
    ca, cert, key = tls_files(tmp_path, host="127.0.0.1", days=30)
    old_ca, old_key, old_cert = certificate_authority(tmp_path, "old-client-ca")
    old_client = client_certificate(tmp_path, old_key, old_cert)
    (tmp_path / "new").mkdir()
    new_ca, new_key, new_cert = certificate_authority(tmp_path / "new", "new-client-ca")
    new_client = client_certificate(tmp_path / "new", new_key, new_cert)
    bundle = tmp_path / "client-ca.pem"
    bundle.write_bytes(old_ca.read_bytes())
    tls = ServingTls(cert, key, bundle, check_seconds=0)
    listener = _Listener(tls.context)
    listener_of.append(listener)
    _peer_certificate(listener.port, ca, old_client)
    with pytest.raises((ssl.SSLError, OSError)):
        _peer_certificate(listener.port, ca, new_client)

    bundle.write_bytes(new_ca.read_bytes())
    os.utime(bundle, ns=(1, 1))  # a different mtime even on a coarse clock

    _peer_certificate(listener.port, ca, new_client)
    with pytest.raises((ssl.SSLError, OSError)):
        _peer_certificate(listener.port, ca, old_client)


def test_files_that_cannot_be_used_leave_the_previous_certificate_in_place(
    tmp_path: Path, listener_of: list[_Listener]
) -> None:
    ca, cert, key = tls_files(tmp_path, host="127.0.0.1", days=30)
    (tmp_path / "other").mkdir()
    _, _, other_key = tls_files(tmp_path / "other", host="127.0.0.1", days=30)
    tls = ServingTls(cert, key, check_seconds=0)
    listener = _Listener(tls.context)
    listener_of.append(listener)
    served = _peer_certificate(listener.port, ca)

    key.write_bytes(other_key.read_bytes())  # a key that does not belong to the certificate

    assert tls.reload_if_changed() is False
    assert _peer_certificate(listener.port, ca).serial_number == served.serial_number


def test_the_first_set_of_files_must_be_usable(tmp_path: Path) -> None:
    ca, cert, _ = tls_files(tmp_path, host="127.0.0.1", days=30)
    with pytest.raises(ssl.SSLError):
        ServingTls(cert, ca)
