"""A real Kubernetes control plane on loopback for the deployer's tests: etcd, kube-apiserver and
kube-controller-manager (for garbage collection) as child processes, with their own CA and a kubeconfig.

By default no kubelet runs, so no Pod ever starts: tests that need a ready Deployment or a finished tester Pod write
that status through the API, as a kubelet would. tests/node.py adds a scheduler and a real kubelet to a control plane
started with ``controllers="*"``. The binaries come from scripts/install-kube.sh (links in .tools/bin).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deployer.marketplace.local import free_ports

BIN = Path(__file__).resolve().parents[1] / ".tools" / "bin"


def binaries_missing() -> list[str]:
    """The control-plane programs that are not installed (scripts/install-kube.sh installs them)."""
    return [name for name in ("etcd", "kube-apiserver", "kube-controller-manager") if not (BIN / name).exists()]


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())  # fmt: skip


def _certificate(
    subject: str, key: rsa.RSAPrivateKey, issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        return builder.sign(key, hashes.SHA256())
    builder = builder.add_extension(
        x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
        critical=False,
    ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(issuer[1], hashes.SHA256())


def serving_certificate(pki: Path, name: str) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 signed by the control plane's CA (``pki``: its pki folder), e.g. for an
    admission webhook the API server calls; the paths of the certificate and its key."""
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    key = _key()
    certificate, private = pki / f"{name}.crt", pki / f"{name}.key"
    certificate.write_bytes(_certificate(name, key, (ca, ca_key)).public_bytes(serialization.Encoding.PEM))
    private.write_bytes(_pem_key(key))
    return certificate, private


# No deployment or replicaset controller by default: with no kubelet they would reset the ready replicas tests write.
STAND_IN_CONTROLLERS = "garbagecollector,namespace,serviceaccount,serviceaccount-token"


@dataclass
class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager in ``root``; ``kubeconfig`` reaches them as an admin.
    ``controllers`` is kube-controller-manager's --controllers (``"*"``: all of a real cluster's)."""

    root: Path
    kubeconfig: Path | None = None
    api_port: int = 0
    controllers: str = STAND_IN_CONTROLLERS
    _processes: list[subprocess.Popen[bytes]] | None = None

    @property
    def pki(self) -> Path:
        """The CA (ca.crt, ca.key), the API server's and the service-account keys."""
        return self.root / "pki"

    def start(self, timeout: float = 90.0) -> None:
        """Start all three; if any fails to come up, stop what did start before raising."""
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> None:
        pki = self.pki
        pki.mkdir(parents=True)
        ca_key, server_key, sa_key = _key(), _key(), _key()
        ca = _certificate("erlmcp-test-ca", ca_key, None)
        server = _certificate("kube-apiserver", server_key, (ca, ca_key))
        (pki / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        (pki / "ca.key").write_bytes(_pem_key(ca_key))
        (pki / "apiserver.crt").write_bytes(server.public_bytes(serialization.Encoding.PEM))
        (pki / "apiserver.key").write_bytes(_pem_key(server_key))
        (pki / "sa.key").write_bytes(_pem_key(sa_key))
        (pki / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
        token = secrets.token_hex(16)
        (pki / "tokens.csv").write_text(f"{token},admin,admin,system:masters\n")
        etcd_port, peer_port, self.api_port = free_ports(3)
        self._processes = []
        self._spawn("etcd", [
            str(BIN / "etcd"), "--name", "test", "--data-dir", str(self.root / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"test=http://127.0.0.1:{peer_port}",
        ])  # fmt: skip
        self._spawn("kube-apiserver", [
            str(BIN / "kube-apiserver"), "--etcd-servers", f"http://127.0.0.1:{etcd_port}",
            "--bind-address", "127.0.0.1", "--secure-port", str(self.api_port), "--advertise-address", "127.0.0.1",
            "--tls-cert-file", str(pki / "apiserver.crt"), "--tls-private-key-file", str(pki / "apiserver.key"),
            "--client-ca-file", str(pki / "ca.crt"), "--token-auth-file", str(pki / "tokens.csv"),
            "--authorization-mode", "RBAC", "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-account-key-file", str(pki / "sa.pub"),
            "--service-account-signing-key-file", str(pki / "sa.key"),
            "--service-cluster-ip-range", "10.0.0.0/24", "--endpoint-reconciler-type", "none",
            "--insecure-port", "0",
        ])  # fmt: skip
        self.kubeconfig = self.root / "kubeconfig"
        self.kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: local\n  cluster: {{server: 'https://127.0.0.1:{self.api_port}', "
            f"certificate-authority: '{pki / 'ca.crt'}'}}\n"
            f"users:\n- name: admin\n  user: {{token: '{token}'}}\n"
            "contexts:\n- name: local\n  context: {cluster: local, user: admin}\ncurrent-context: local\n"
        )
        self._wait_ready(token, pki / "ca.crt", timeout)
        self._spawn("kube-controller-manager", [
            str(BIN / "kube-controller-manager"), "--kubeconfig", str(self.kubeconfig), "--leader-elect=false",
            "--bind-address", "127.0.0.1", "--port", "0", "--secure-port", "0",
            "--service-account-private-key-file", str(pki / "sa.key"), "--root-ca-file", str(pki / "ca.crt"),
            "--cluster-signing-cert-file", str(pki / "ca.crt"), "--cluster-signing-key-file", str(pki / "ca.key"),
            "--allocate-node-cidrs=false", "--controllers", self.controllers,
        ])  # fmt: skip

    def _spawn(self, name: str, command: list[str]) -> None:
        assert self._processes is not None
        with (self.root / f"{name}.log").open("wb") as log:  # the child keeps its own copy of the descriptor
            self._processes.append(
                subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )

    def _wait_ready(self, token: str, ca: Path, timeout: float) -> None:
        context = ssl.create_default_context(cafile=str(ca))
        request = urllib.request.Request(f"https://127.0.0.1:{self.api_port}/readyz",
                                         headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._processes is not None
            for process in self._processes:
                if process.poll() is not None:
                    raise RuntimeError(f"a control-plane process exited; logs in {self.root}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(request, context=context, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"kube-apiserver not ready within {timeout} s: {self.log_tail()}")

    def log_tail(self) -> str:
        log = self.root / "kube-apiserver.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.exists() else ""

    def stop(self) -> None:
        for process in reversed(self._processes or []):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in reversed(self._processes or []):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        shutil.rmtree(self.root / "etcd", ignore_errors=True)
