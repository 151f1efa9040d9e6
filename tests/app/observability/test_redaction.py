"""The redactor: configured secrets by value (in each form a line carries them), credentials by their shape, secret
files followed as they rotate; and the log handler that runs every line through it, whoever wrote the line."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import structlog

from app.observability.logging import LIBRARY_LOGGERS, guard_logs
from app.observability.redaction import _TYPICAL, REDACTED, Redactor, redactor
from app.settings import LogFormat, Settings
from tests.app.observability.conftest import Configure

SECRET = "s3cr3t/value+with=odd chars"
JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJzb21lb25lIn0.c2lnbmF0dXJlLWJ5dGVzLTAxMjM0NTY3ODk"


@pytest.fixture
def redacting() -> Redactor:
    found = Redactor()
    found.add(SECRET)
    return found


@pytest.mark.parametrize(
    "line",
    [
        SECRET,
        f"url=https://api.example/x?appid={SECRET}",
        "appid=s3cr3t%2Fvalue%2Bwith%3Dodd%20chars",  # percent-encoded, every reserved character
        "appid=s3cr3t/value+with=odd%20chars",  # as a URL keeps it
        orjson.dumps({"message": f'said "{SECRET}"'}).decode(),
    ],
    ids=["as-is", "in-a-url", "percent-encoded", "as-a-url-keeps-it", "json"],
)
def test_a_configured_secret_is_removed_in_every_form(redacting: Redactor, line: str) -> None:
    redacted = redacting.redact(line)
    assert REDACTED in redacted
    assert "s3cr3t" not in redacted


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Authorization: Bearer admin-key-0123456789abcdef", "Authorization: Bearer [redacted]"),
        ("{'authorization': 'Basic dXNlcjpwYXNzd29yZA=='}", "{'authorization': 'Basic [redacted]'}"),
        ('{\\"X-API-Key\\": \\"limited-key-0123456789\\"}', '{\\"X-API-Key\\": \\"[redacted]\\"}'),
        ("_meta={'io.erlmcp/apiKey': 'other-key-0123456789abcdef'}", "_meta={'io.erlmcp/apiKey': '[redacted]'}"),
        ("GET /v1?api_key=abcdef123456&city=Paris", "GET /v1?api_key=[redacted]&city=Paris"),
        (f"the token {JWT} expired", "the token [redacted] expired"),
        ("redis://:hunter2-pass@redis:6379/0", "redis://:[redacted]@redis:6379/0"),
        ("https://user:pa55word@example.com/path", "https://user:[redacted]@example.com/path"),
        ("sent Bearer abcdefghijklmnop0123 upstream", "sent Bearer [redacted] upstream"),
        # the WebSocket bearer subprotocol (Kubernetes' convention): the prefix is kept, the credential is not
        (
            "< sec-websocket-protocol: mcp, base64url.bearer.authorization.k8s.io.YWRtaW4ta2V5LTAxMjM0NTY3ODlhYmNkZWY",
            "< sec-websocket-protocol: mcp, base64url.bearer.authorization.k8s.io.[redacted]",
        ),
        (
            '{"message":"< Sec-WebSocket-Protocol: base64url.bearer.authorization.k8s.io.YWRtaW4ta2V5, mcp"}',
            '{"message":"< Sec-WebSocket-Protocol: base64url.bearer.authorization.k8s.io.[redacted], mcp"}',
        ),
        (  # malformed (padded, standard base64): the credential all the same
            "invalid Sec-WebSocket-Protocol header: expected token at 40 in mcp, "
            "base64url.bearer.authorization.k8s.io.YWRt/aW4+a2V5==",
            "invalid Sec-WebSocket-Protocol header: expected token at 40 in mcp, "
            "base64url.bearer.authorization.k8s.io.[redacted]",
        ),
    ],
)
def test_a_credential_is_removed_by_its_shape(line: str, expected: str) -> None:
    assert Redactor().redact(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "bearer token refused",  # a sentence about tokens
        "api_key_file=/etc/erlmcp/api-keys",  # a setting naming a file
        "Uvicorn running on http://127.0.0.1:8080 (Press CTRL+C to quit)",
        "a key of 16 characters at least",
        _TYPICAL,
    ],
)
def test_a_line_without_credentials_is_left_as_it_is(line: str) -> None:
    assert Redactor().redact(line) == line


def test_the_access_line_is_not_rewritten_at_all(redacting: Redactor) -> None:
    redacting.add("request-state-key-0123456789abcdef0123456789")
    redacting.add_url("redis://:s3cr3t-pass@127.0.0.1:6379/0")
    assert redacting.redact(_TYPICAL) is _TYPICAL  # found nothing to remove: the very same string, no copy


def test_values_too_short_to_be_secrets_are_not_looked_for() -> None:
    redacting = Redactor()
    redacting.add("abc", "", None)
    assert redacting.redact("abc is not a secret") == "abc is not a secret"


def test_a_watched_secret_file_is_followed_as_it_rotates(tmp_path: Path) -> None:
    now = [0.0]
    redacting = Redactor(clock=lambda: now[0])
    token = tmp_path / "token"
    token.write_text("first-secret-value\n")
    redacting.watch([token])
    assert redacting.redact("x first-secret-value y") == f"x {REDACTED} y"
    token.write_text("second-secret-value-longer\n")
    assert "second-secret-value-longer" in redacting.redact("second-secret-value-longer")  # not yet looked at
    now[0] += 1.5
    assert redacting.redact("second-secret-value-longer") == REDACTED
    assert redacting.redact("first-secret-value") == REDACTED  # the value it replaced may still be in flight
    token.write_text("third-secret-value\n")
    now[0] += 1.5
    assert redacting.redact("third-secret-value first-secret-value") == f"{REDACTED} first-secret-value"
    redacting.watch([])  # the catalogue no longer names the file
    assert redacting.redact("third-secret-value") == "third-secret-value"


def test_the_settings_secrets_are_given_to_the_redactor_and_libraries_are_held_to_their_level() -> None:
    settings = Settings(
        redis_url="redis://:pw-from-settings-1234@redis:6379/0",
        request_state_key="state-key-from-settings-0123456789abcdef",
        library_log_level="ERROR",
    )
    guard_logs(settings)
    line = "redis://:pw-from-settings-1234@redis:6379/0 state-key-from-settings-0123456789abcdef"
    assert redactor().redact(line) == f"redis://:{REDACTED}@redis:6379/0 {REDACTED}"
    assert {logging.getLogger(name).level for name in LIBRARY_LOGGERS} == {logging.ERROR}
    guard_logs(Settings(log_level="CRITICAL"))  # never below the server's own level
    assert {logging.getLogger(name).level for name in LIBRARY_LOGGERS} == {logging.CRITICAL}
    guard_logs(Settings())
    assert {logging.getLogger(name).level for name in LIBRARY_LOGGERS} == {logging.WARNING}


@pytest.fixture
def captured(logging_to_file: Configure) -> Callable[[], str]:
    """The process's logging as the server configures it; ``captured()`` is what it wrote so far."""
    read = logging_to_file(LogFormat.JSON)
    redactor().add("catalogue-secret-0123456789")
    return lambda: read().decode()


def test_every_line_is_redacted_whoever_writes_it(captured: Callable[[], str]) -> None:
    # A library's record with the secret in its arguments, one with it in its exception, and a structlog line
    # with it in a nested field.
    logging.getLogger("some.library").warning("retrying %s", "https://x/?key=catalogue-secret-0123456789")
    try:
        raise RuntimeError("failed with Authorization: Bearer admin-key-0123456789abcdef")
    except RuntimeError:
        logging.getLogger("other.library").exception("it broke")
    structlog.get_logger("app.test").info("call", upstream={"headers": {"X-Token": "catalogue-secret-0123456789"}})
    lines = [orjson.loads(line) for line in captured().splitlines()]
    assert [line["message"] for line in lines] == ["retrying https://x/?key=[redacted]", "it broke", "call"]
    assert lines[1]["exception"][0]["exc_value"] == "failed with Authorization: Bearer [redacted]"
    assert lines[2]["upstream"] == {"headers": {"X-Token": REDACTED}}
    assert "catalogue-secret" not in captured()
    assert "admin-key" not in captured()


def test_a_traceback_names_its_frames_but_not_their_locals(captured: Callable[[], str]) -> None:
    def check(credential: str) -> None:
        raise ValueError("bad credential")

    try:
        check("a-bare-api-key-with-no-telling-shape")
    except ValueError:
        logging.getLogger("app.test").exception("failed")
    [line] = [orjson.loads(line) for line in captured().splitlines()]
    assert any(frame["name"] == "check" for frame in line["exception"][0]["frames"])
    assert "a-bare-api-key" not in captured()


def test_a_library_below_warning_is_not_written(captured: Callable[[], str]) -> None:
    logging.getLogger("httpx").info("HTTP Request: GET https://api.example/v1?appid=whatever")
    logging.getLogger("httpx").warning("connection pool is full")
    assert [orjson.loads(line)["message"] for line in captured().splitlines()] == ["connection pool is full"]
