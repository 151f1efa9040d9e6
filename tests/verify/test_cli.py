"""The verify suite against a real server, and against servers that answer wrongly: it must fail, naming the check."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import ROOT, RunningServer, free_port

pytestmark = pytest.mark.slow


def run_verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "verify", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_verify_passes_against_the_real_server_and_writes_junit(server: RunningServer, tmp_path: Path) -> None:
    junit = tmp_path / "report.xml"
    result = run_verify(
        "--url", server.url, "--metrics-url", server.metrics_url,
        "--api-key", "test-key-0123456789abcdef", "--junit", str(junit),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout
    # TLS (the URL is http) and the 429 (no --initialize-limit) are skipped, everything else passes.
    assert result.stdout.rstrip().endswith("29 passed, 0 failed, 2 skipped")
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("31", "0", "2")


def test_verify_fails_auth_checks_against_a_server_with_auth_off(tmp_path: Path) -> None:
    from tests.conftest import start_server

    open_server = start_server(tmp_path, ["--no-auth"])
    try:
        result = run_verify("--url", open_server.url, "--metrics-url", open_server.metrics_url, "--api-key", "any")
    finally:
        open_server.stop()
    assert result.returncode == 1
    assert "FAIL security.missing_credentials_refused" in result.stdout


def test_a_target_where_nothing_listens_is_exit_2_and_says_so() -> None:
    port = free_port()
    result = run_verify("--url", f"http://127.0.0.1:{port}", "--timeout", "2")
    assert result.returncode == 2
    assert f"cannot reach http://127.0.0.1:{port}" in result.stderr
    assert result.stdout == ""


def test_only_runs_the_named_groups_and_checks(server: RunningServer, api_key_file: Path) -> None:
    result = run_verify("--url", server.url, "--metrics-url", server.metrics_url, "--api-key-file",
                        str(api_key_file), "--only", "health", "--only", "mcp.ping")  # fmt: skip
    assert result.returncode == 0, result.stdout
    ran = [line.split()[1] for line in result.stdout.splitlines()[1:-1]]
    assert ran == [
        "health.livez",
        "health.readyz",
        "health.health",
        "mcp.initialize",
        "mcp.ping",
    ]  # ping needs a session


def test_an_unknown_group_is_bad_usage() -> None:
    result = run_verify("--url", "http://127.0.0.1:1", "--only", "nonsense")
    assert result.returncode == 2
    assert "--only nonsense: not a group" in result.stderr


def test_a_bearer_token_file_is_sent_and_json_results_are_written(server: RunningServer, tmp_path: Path) -> None:
    token, report = tmp_path / "token", tmp_path / "report.json"
    token.write_text("test-key-0123456789abcdef\n")
    result = run_verify("--url", server.url, "--metrics-url", server.metrics_url, "--token-file", str(token),
                        "--only", "security", "--only", "mcp", "--json", str(report))  # fmt: skip
    assert result.returncode == 0, result.stdout
    document = json.loads(report.read_text())
    assert document["failed"] == 0
    assert {check["group"] for check in document["checks"]} == {"security", "mcp"}
    assert all(check["status"] in {"PASS", "SKIP"} for check in document["checks"])


def test_the_429_is_checked_when_the_initialize_limit_is_given(tmp_path: Path, api_key_file: Path) -> None:
    from tests.conftest import start_server

    limited = start_server(tmp_path, ["--api-key-file", str(api_key_file)], env={"ERLMCP_INITIALIZE_PER_MINUTE": "5"})
    try:
        result = run_verify(
            "--url",
            limited.url,
            "--metrics-url",
            limited.metrics_url,
            "--api-key-file",
            str(api_key_file),
            "--only",
            "security.rate_limited",
            "--initialize-limit",
            "5",
        )
    finally:
        limited.stop()
    assert result.returncode == 0, result.stdout
    assert "PASS security.rate_limited" in result.stdout
    assert "Retry-After" in result.stdout


def test_a_terminal_gets_an_aligned_table(server: RunningServer) -> None:
    main, follower = pty.openpty()
    command = [sys.executable, "-m", "verify", "--url", server.url, "--metrics-url", server.metrics_url,
               "--only", "health"]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stdout=follower, stderr=subprocess.DEVNULL)
    os.close(follower)
    output = b""
    with contextlib.suppress(OSError):  # the pty reports EIO once the child has exited
        while chunk := os.read(main, 4096):
            output += chunk
    os.close(main)
    assert process.wait(timeout=30) == 0
    lines = output.decode().splitlines()
    assert lines[2].split() == ["check", "result", "time", "detail"]
    assert lines[3].split()[:2] == ["health.livez", "PASS"]
    assert lines[3].index("PASS") == lines[2].index("result")  # columns line up


def test_verify_refuses_a_url_that_is_not_http() -> None:
    result = run_verify("--url", "ftp://example")
    assert result.returncode == 2
    assert "--url" in result.stderr


def test_the_default_metrics_url_keeps_ipv6_brackets() -> None:
    from verify.cli import _default_metrics_url

    assert _default_metrics_url("http://[::1]:8080") == "http://[::1]:9090/metrics"


def test_the_key_is_taken_from_the_servers_key_file_format() -> None:
    from verify.client import key_from_lines

    lines = ["# keys", f"ops * sha256:{'0' * 64}", "ci tools:echo ci-key-0123456789abcdef  # the CI bot"]
    assert key_from_lines(lines) == "ci-key-0123456789abcdef"  # a digest cannot be sent; the next key can
    assert key_from_lines(["plain-key-0123456789abcdef"]) == "plain-key-0123456789abcdef"
    assert key_from_lines(["# nothing"]) is None


def test_a_mutual_tls_server_passes_with_the_client_certificate_and_fails_without(
    tmp_path: Path, api_key_file: Path
) -> None:
    from tests.certificates import certificate_authority, client_certificate, tls_files
    from tests.conftest import start_server

    ca, cert, key = tls_files(tmp_path, host="127.0.0.1", days=30)
    client_ca, client_ca_key, client_ca_cert = certificate_authority(tmp_path)
    client_cert, client_key = client_certificate(tmp_path, client_ca_key, client_ca_cert)
    server = start_server(
        tmp_path,
        [
            "--api-key-file",
            str(api_key_file),
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-client-ca-file",
            str(client_ca),
        ],
        tls=True,
    )
    url = f"https://127.0.0.1:{server.port}"
    common = ("--url", url, "--metrics-url", server.metrics_url, "--api-key-file", str(api_key_file),
              "--ca-file", str(ca))  # fmt: skip
    try:
        with_certificate = run_verify(*common, "--cert-file", str(client_cert), "--key-file", str(client_key))
        without = run_verify(*common, "--only", "tls")
    finally:
        server.stop()
    assert with_certificate.returncode == 0, with_certificate.stdout
    assert "PASS tls.certificate" in with_certificate.stdout
    assert "PASS transport.websocket" in with_certificate.stdout
    assert without.returncode == 1
    assert "FAIL tls.certificate" in without.stdout
    assert "client certificate (mutual TLS)" in without.stdout
    assert "give --cert-file and --key-file" in without.stdout, without.stdout


def test_an_unusable_client_certificate_is_bad_usage(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    result = run_verify("--url", "https://127.0.0.1:1", "--cert-file", str(missing))
    assert result.returncode == 2
    assert "the CA bundle or client certificate cannot be used" in result.stderr
    assert run_verify("--url", "https://127.0.0.1:1", "--key-file", str(missing)).returncode == 2
