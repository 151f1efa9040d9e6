from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

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
