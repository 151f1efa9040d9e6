"""Sessions in a Redis that speaks only TLS and asks for a password (as Memorystore does with in-transit
encryption and AUTH): a real redis-server with a certificate from a CA of the test's own, and a real server that
trusts that CA through ``ERLMCP_REDIS_CA_FILE``; what the user sees when the CA, the host name or the password is
wrong, and the settings refused at start-up."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from app.sessions.backend import session_backend
from app.sessions.redis import RedisSessionStore
from app.settings import Settings
from tests.certificates import tls_files
from tests.conftest import ROOT, RunningServer, start_server
from tests.redis_server import RedisServer
from tests.sse import response_message

pytestmark = pytest.mark.slow

PASSWORD = "redis-auth-0123456789"
INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
ACCEPT = {"Accept": "application/json, text/event-stream"}
DOWN = "Redis does not answer"  # the warning the session store logs, with the client's error
UNUSABLE_CA = "erlmcp: redis_ca_file (ERLMCP_REDIS_CA_FILE) {} cannot be used as a PEM CA bundle"


class TlsRedis(RedisServer):
    """A real redis-server on a TLS port only (no plaintext port), with ``cert`` and ``key`` and ``--requirepass``;
    clients need no certificate of their own (as on Memorystore)."""

    def __init__(self, workdir: Path, *, ca: Path, cert: Path, key: Path, password: str) -> None:
        super().__init__(workdir)
        self.ca, self.password = ca, password
        self._command = [
            self._command[0],
            "--port",
            "0",
            "--tls-port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(ca),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            password,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ]

    def rediss_url(self, *, password: str | None = None, host: str = "127.0.0.1") -> str:
        return f"rediss://:{password or self.password}@{host}:{self.port}/0"

    def cli(self, *args: str) -> str:
        """A redis-cli command over TLS, trusting the CA (empty when Redis does not answer within a second)."""
        command = [
            "redis-cli",
            "--tls",
            "--cacert",
            str(self.ca),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "--no-auth-warning",
            "-a",
            self.password,
            *args,
        ]
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=1).stdout.strip()
        except subprocess.TimeoutExpired:
            return ""


@dataclass(frozen=True)
class Tls:
    redis: TlsRedis
    ca: Path


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tls]:
    """One TLS Redis for the module, its certificate naming 127.0.0.1 (as Memorystore's names its address)."""
    folder = tmp_path_factory.mktemp("redis-tls")
    ca, cert, key = tls_files(folder, host="127.0.0.1", days=30)
    redis = TlsRedis(folder, ca=ca, cert=cert, key=key, password=PASSWORD)
    redis.start()
    yield Tls(redis, ca)
    redis.stop()


def up_not_ready(tmp_path: Path, env: dict[str, str]) -> RunningServer:
    """A real server whose listeners answer while /readyz may not (``tls=True`` makes start_server wait for the
    listeners only, not for readiness)."""
    return start_server(tmp_path, ["--no-auth"], {"ERLMCP_LOG_FORMAT": "json", **env}, tls=True)


def warnings_about_redis(server: RunningServer, timeout: float = 10) -> list[dict[str, Any]]:
    """The session store's "Redis does not answer" log lines, once there is one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        httpx.get(f"{server.url}/readyz")  # the first probe starts the store's checks
        lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
        found = [line for line in lines if DOWN in line["message"]]
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {DOWN!r} warning within {timeout} s:\n{server.log.read_text()}")


def assert_unready_and_refusing_sessions(server: RunningServer) -> None:
    assert httpx.get(f"{server.url}/livez").status_code == 200  # nothing restarts the process
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 503
    assert ready.json() == {"status": "unavailable", "reason": f"the session store is unavailable: {DOWN}"}
    opened = httpx.post(
        f"{server.url}/mcp", json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INIT}, headers=ACCEPT
    )
    assert opened.status_code == 503
    assert opened.headers["retry-after"] == "1"
    assert "the session store is unavailable" in opened.json()["error"]["message"]


def python_app(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m app`` run to its exit (a start-up refusal), with only ``env`` besides PATH."""
    return subprocess.run(
        [sys.executable, "-m", "app", "--no-auth", "--port", "0", "--metrics-port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", **env},
    )


# -- with the CA file -----------------------------------------------------------------------------------------


def test_sessions_live_in_a_tls_redis_whose_certificate_chains_to_the_redis_ca_file(tls: Tls, tmp_path: Path) -> None:
    env = {"ERLMCP_REDIS_URL": tls.redis.rediss_url(), "ERLMCP_REDIS_CA_FILE": str(tls.ca)}
    server = start_server(tmp_path, ["--no-auth", "--log-format", "json"], env)  # ready: Redis answered over TLS
    try:
        opened = httpx.post(
            f"{server.url}/mcp",
            json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INIT},
            headers=ACCEPT,
        )
        assert opened.status_code == 200
        session_id = opened.headers["mcp-session-id"]
        session = {**ACCEPT, "Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-11-25"}
        call = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "over TLS"}},
        }
        called = httpx.post(f"{server.url}/mcp", json=call, headers=session)
        assert called.status_code == 200
        answer = response_message(called.headers["content-type"], called.text)
        assert answer["result"]["content"][0]["text"] == "over TLS"

        record = json.loads(tls.redis.cli("GET", f"erlmcp:session:{session_id}"))
        assert record["protocol_version"] == "2025-11-25"
        assert int(tls.redis.cli("TTL", f"erlmcp:session:{session_id}")) > 0
        # The session bus (pub/sub, a connection of its own) came from the same pool: it is subscribed over TLS.
        assert tls.redis.cli("PUBSUB", "CHANNELS", "erlmcp:bus") == "erlmcp:bus"
    finally:
        assert server.stop() == 0
    assert PASSWORD not in server.log.read_text()


def test_the_client_the_server_builds_verifies_the_certificate_and_host_with_the_redis_ca_file(tls: Tls) -> None:
    store = session_backend(Settings(redis_url=tls.redis.rediss_url(), redis_ca_file=tls.ca))
    assert isinstance(store, RedisSessionStore)
    pool = store.redis.connection_pool
    assert pool.connection_kwargs["ssl_ca_certs"] == str(tls.ca)
    assert pool.connection_kwargs["ssl_cert_reqs"] == "required"
    assert pool.connection_kwargs["ssl_check_hostname"] is True
    assert store.redis.pubsub().connection_pool is pool  # the session bus connects as every command does


# -- what the user sees when something does not match ---------------------------------------------------------


def test_without_the_redis_ca_file_the_server_stays_unready_and_logs_the_certificate_failure(
    tls: Tls, tmp_path: Path
) -> None:
    server = up_not_ready(tmp_path, {"ERLMCP_REDIS_URL": tls.redis.rediss_url()})  # the system trust store
    try:
        (warning, *_) = warnings_about_redis(server)
        assert warning["severity"] == "WARNING"
        assert "CERTIFICATE_VERIFY_FAILED" in warning["error"]
        assert_unready_and_refusing_sessions(server)
    finally:
        assert server.stop() == 0
    assert PASSWORD not in server.log.read_text()


def test_a_url_host_the_certificate_does_not_name_is_refused_even_with_the_right_ca(tls: Tls, tmp_path: Path) -> None:
    env = {"ERLMCP_REDIS_URL": tls.redis.rediss_url(host="localhost"), "ERLMCP_REDIS_CA_FILE": str(tls.ca)}
    server = up_not_ready(tmp_path, env)  # the certificate names 127.0.0.1 only
    try:
        (warning, *_) = warnings_about_redis(server)
        assert "CERTIFICATE_VERIFY_FAILED" in warning["error"]
        assert "not valid for 'localhost'" in warning["error"]
        assert_unready_and_refusing_sessions(server)
    finally:
        assert server.stop() == 0


def test_a_wrong_redis_password_leaves_the_server_unready_and_the_log_says_the_password_was_refused(
    tls: Tls, tmp_path: Path
) -> None:
    wrong = "not-the-redis-password"
    env = {"ERLMCP_REDIS_URL": tls.redis.rediss_url(password=wrong), "ERLMCP_REDIS_CA_FILE": str(tls.ca)}
    server = up_not_ready(tmp_path, env)
    try:
        (warning, *_) = warnings_about_redis(server)
        assert "invalid username-password pair" in warning["error"]
        assert_unready_and_refusing_sessions(server)
    finally:
        assert server.stop() == 0
    assert wrong not in server.log.read_text()


# -- settings refused at start-up -----------------------------------------------------------------------------


def test_a_redis_ca_file_with_a_plain_redis_url_is_refused_at_start_up(tmp_path: Path) -> None:
    ca, _, _ = tls_files(tmp_path, host="127.0.0.1", days=1)
    result = python_app({"ERLMCP_REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:6379/0", "ERLMCP_REDIS_CA_FILE": str(ca)})
    assert result.returncode == 2
    assert "redis_ca_file is set but redis_url is a redis:// URL, which does not use TLS" in result.stderr
    assert "use rediss:// (or leave redis_ca_file unset)" in result.stderr
    assert PASSWORD not in result.stderr


def test_a_redis_ca_file_that_does_not_exist_is_refused_at_start_up_naming_the_setting(tmp_path: Path) -> None:
    missing = tmp_path / "ca.crt"
    result = python_app({"ERLMCP_REDIS_URL": "rediss://127.0.0.1:6378/0", "ERLMCP_REDIS_CA_FILE": str(missing)})
    assert result.returncode == 2
    assert f"{UNUSABLE_CA.format(missing)}: No such file or directory" in result.stderr


def test_a_redis_ca_file_that_is_not_pem_is_refused_at_start_up_naming_the_setting(tmp_path: Path) -> None:
    _, _, key = tls_files(tmp_path, host="127.0.0.1", days=1)  # a PEM file, but a key, no certificate
    not_pem = tmp_path / "ca.der"
    not_pem.write_bytes(b"\x30\x82\x01\x0a not a certificate")
    for wrong in (key, not_pem):
        result = python_app({"ERLMCP_REDIS_URL": "rediss://127.0.0.1:6378/0", "ERLMCP_REDIS_CA_FILE": str(wrong)})
        assert result.returncode == 2
        assert f"{UNUSABLE_CA.format(wrong)}: [X509: NO_CERTIFICATE_OR_CRL_FOUND]" in result.stderr


@pytest.mark.parametrize(
    ("url", "refusal"),
    [
        (None, "redis_ca_file is set but redis_url is not"),
        ("unix:///run/redis.sock", "redis_url is a unix:// URL, which does not use TLS"),
        (
            "rediss://127.0.0.1:6378/0?ssl_ca_certs=/etc/other.pem",
            "give the CA in redis_ca_file or in redis_url (ssl_ca_certs), not both",
        ),
    ],
)
def test_a_redis_ca_file_the_server_would_silently_ignore_is_a_settings_error(
    tmp_path: Path, url: str | None, refusal: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(refusal)):
        Settings(redis_url=url, redis_ca_file=tmp_path / "ca.crt")
