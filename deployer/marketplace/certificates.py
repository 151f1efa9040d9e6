"""The self-signed certificate Google's deployer makes for a ``TLS_CERTIFICATE`` property left empty."""

from __future__ import annotations

import datetime

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

__all__ = ["TEMPORARY_COMMON_NAME", "self_signed_certificate"]

TEMPORARY_COMMON_NAME = "Temporary Certificate"


def self_signed_certificate(*, days: int = 365) -> str:
    """A TLS_CERTIFICATE value: JSON ``{"private_key": PEM, "certificate": PEM}`` of a new RSA-2048 key and a
    SHA-256 self-signed certificate for ``Temporary Certificate``, valid for ``days`` (as Google's tools)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TEMPORARY_COMMON_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()
    certificate_pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    return orjson.dumps({"private_key": private_pem, "certificate": certificate_pem}).decode()
