from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from app.cli import settings_from_args
from app.security.keys import digest_of
from app.settings import Settings, SettingsError, load_api_keys


def test_defaults_bind_loopback_on_8080_with_metrics_on_9090(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ERLMCP_PORT", raising=False)
    settings = Settings()
    assert (settings.host, settings.port, settings.metrics_port, settings.no_auth) == ("127.0.0.1", 8080, 9090, False)


def test_environment_variables_with_the_prefix_configure_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERLMCP_PORT", "9000")
    monkeypatch.setenv("ERLMCP_NO_AUTH", "true")
    settings = Settings()
    assert (settings.port, settings.no_auth) == (9000, True)


def test_flags_override_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERLMCP_PORT", "9000")
    assert settings_from_args(["--port", "9100"]).port == 9100


def test_a_bad_flag_value_exits_with_a_message_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        settings_from_args(["--log-level", "LOUD"])
    assert caught.value.code == 2
    assert "log_level" in capsys.readouterr().err


def test_the_same_port_for_mcp_and_metrics_is_refused() -> None:
    with pytest.raises(ValidationError, match="must differ"):
        Settings(port=8080, metrics_port=8080)


def test_api_keys_are_read_one_per_line_skipping_blanks_and_comments_and_kept_as_digests(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# comment\n\n key-one-0123456789 \nkey-two-0123456789\n", encoding="utf-8")
    loaded = load_api_keys(Settings(api_key_file=keys))
    assert [(key.name, key.digest) for key in loaded] == [
        ("key-3", digest_of("key-one-0123456789")),
        ("key-4", digest_of("key-two-0123456789")),
    ]
    assert "key-one-0123456789" not in repr(loaded)  # the keys themselves are not kept


def test_authentication_without_a_key_file_is_refused_with_advice() -> None:
    with pytest.raises(SettingsError, match="--api-key-file"):
        load_api_keys(Settings())


def test_an_empty_key_file_is_refused(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# nothing here\n", encoding="utf-8")
    with pytest.raises(SettingsError, match="holds no key"):
        load_api_keys(Settings(api_key_file=keys))


def test_a_missing_key_file_is_refused_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        load_api_keys(Settings(api_key_file=tmp_path / "absent"))


def test_no_auth_needs_no_keys() -> None:
    assert load_api_keys(Settings(no_auth=True)) == ()


def test_a_key_file_that_is_not_utf8_is_refused_not_a_traceback(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(SettingsError, match="UTF-8"):
        load_api_keys(Settings(api_key_file=keys))


def test_the_per_principal_session_quota_defaults_to_100_and_reads_its_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ERLMCP_MAX_SESSIONS_PER_PRINCIPAL", raising=False)
    assert Settings().max_sessions_per_principal == 100
    monkeypatch.setenv("ERLMCP_MAX_SESSIONS_PER_PRINCIPAL", "0")  # 0: no quota
    assert Settings().max_sessions_per_principal == 0
    monkeypatch.setenv("ERLMCP_MAX_SESSIONS_PER_PRINCIPAL", "7")
    assert Settings().max_sessions_per_principal == 7


def test_a_negative_per_principal_session_quota_is_refused() -> None:
    with pytest.raises(ValidationError, match="max_sessions_per_principal"):
        Settings(max_sessions_per_principal=-1)


# The security limits of issue 23: each read from its environment variable, with the documented default (README,
# "Security model"), and a value that makes no sense refused at start.
SECURITY_LIMITS = [
    ("max_batch_items", "ERLMCP_MAX_BATCH_ITEMS", 100, "7", 7, "0"),
    ("max_batch_concurrency", "ERLMCP_MAX_BATCH_CONCURRENCY", 8, "2", 2, "0"),
    ("max_batch_response_bytes", "ERLMCP_MAX_BATCH_RESPONSE_BYTES", 4 * 1024 * 1024, "65536", 65536, "-1"),
    ("max_connections_per_principal", "ERLMCP_MAX_CONNECTIONS_PER_PRINCIPAL", 200, "0", 0, "-1"),
    ("tool_cancel_restarts_per_minute", "ERLMCP_TOOL_CANCEL_RESTARTS_PER_MINUTE", 10, "0", 0, "-1"),
    ("initialize_per_minute", "ERLMCP_INITIALIZE_PER_MINUTE", 600, "60", 60, "0"),
    ("library_log_level", "ERLMCP_LIBRARY_LOG_LEVEL", "WARNING", "error", "ERROR", "LOUD"),
    ("jwt_audience_limits", "ERLMCP_JWT_AUDIENCE_LIMITS", {}, '{"a": "rate=5"}', {"a": "rate=5"}, '{"a": "bursts=5"}'),
]


@pytest.mark.parametrize(("field", "variable", "default", "text", "value", "wrong"), SECURITY_LIMITS)
def test_each_security_limit_has_its_documented_default_its_variable_and_refuses_nonsense(
    monkeypatch: pytest.MonkeyPatch, field: str, variable: str, default: object, text: str, value: object, wrong: str
) -> None:
    for name in [row[1] for row in SECURITY_LIMITS]:
        monkeypatch.delenv(name, raising=False)
    jwt: dict[str, Any] = {}
    if field == "jwt_audience_limits":  # audience limits need tokens on
        jwt = {"jwt_jwks_url": "https://issuer.example/jwks", "jwt_issuer": "https://issuer.example",
               "resource_url": "https://mcp.example"}  # fmt: skip
    assert getattr(Settings(**jwt), field) == default
    monkeypatch.setenv(variable, text)
    assert getattr(Settings(**jwt), field) == value
    monkeypatch.setenv(variable, wrong)
    with pytest.raises((ValidationError, SettingsError, ValueError)):
        Settings(**jwt)


def secrets_folder(path: Path, **files: str) -> Path:
    """A folder of secret files, as a mounted Kubernetes Secret or CSI volume gives them."""
    path.mkdir()
    for name, content in files.items():
        (path / name).write_text(content, encoding="utf-8")
    return path


def revealed(secret: SecretStr | None) -> str | None:
    return None if secret is None else secret.get_secret_value()


def test_secrets_are_read_as_files_from_the_secrets_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = secrets_folder(tmp_path / "state", erlmcp_redis_url="redis://:pw@redis:6379/0\n")
    monkeypatch.delenv("ERLMCP_REDIS_URL", raising=False)
    monkeypatch.setenv("ERLMCP_SECRETS_DIR", str(state))
    assert revealed(settings_from_args([]).redis_url) == "redis://:pw@redis:6379/0"


def test_the_secrets_folder_may_be_several_folders_and_each_files_setting_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The chart's own Secrets in one folder, the files GKE's Secret Manager add-on mounts in another.
    state = secrets_folder(tmp_path / "state", erlmcp_request_state_key="s" * 40)
    mounted = secrets_folder(tmp_path / "secret-manager", erlmcp_redis_url="rediss://:pw@10.0.0.3:6378/0")
    monkeypatch.delenv("ERLMCP_REDIS_URL", raising=False)
    monkeypatch.delenv("ERLMCP_REQUEST_STATE_KEY", raising=False)
    monkeypatch.setenv("ERLMCP_SECRETS_DIR", os.pathsep.join([str(state), str(mounted)]))
    settings = settings_from_args([])
    assert revealed(settings.redis_url) == "rediss://:pw@10.0.0.3:6378/0"
    assert revealed(settings.request_state_key) == "s" * 40


def test_a_file_in_a_later_secrets_folder_wins_over_the_same_file_in_an_earlier_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = secrets_folder(tmp_path / "first", erlmcp_redis_url="redis://first:6379/0")
    second = secrets_folder(tmp_path / "second", erlmcp_redis_url="redis://second:6379/0")
    monkeypatch.delenv("ERLMCP_REDIS_URL", raising=False)
    monkeypatch.setenv("ERLMCP_SECRETS_DIR", os.pathsep.join([str(first), str(second)]))
    assert revealed(settings_from_args([]).redis_url) == "redis://second:6379/0"


def test_an_environment_variable_wins_over_a_file_in_any_secrets_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = secrets_folder(tmp_path / "first", erlmcp_redis_url="redis://first:6379/0")
    second = secrets_folder(tmp_path / "second")
    monkeypatch.setenv("ERLMCP_REDIS_URL", "redis://env:6379/0")
    monkeypatch.setenv("ERLMCP_SECRETS_DIR", f"{first}{os.pathsep}{second}")
    assert revealed(settings_from_args([]).redis_url) == "redis://env:6379/0"


def test_the_help_says_the_secrets_folder_may_be_several_and_which_wins(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        settings_from_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "ERLMCP_SECRETS_DIR" in help_text
    assert "the later folder's file wins" in help_text
