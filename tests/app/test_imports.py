"""Start-up imports only what is configured: the server as the chart ships it (API key auth, JSON logs at INFO,
in-memory sessions, the built-in catalogue) loads no Google Cloud, gRPC, OpenTelemetry SDK, Jinja2, httpx,
cryptography, PyJWT, redis, Kubernetes, python-jsonschema or FastAPI; each comes when its feature is configured.

Each case builds the application in a fresh interpreter exactly as ``python -m app`` does, up to the point where
uvicorn would start serving (:data:`BUILD`), and reports which of the watched packages it imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.conftest import ROOT

WATCHED = (
    "google",
    "grpc",
    "opentelemetry.sdk",
    "jinja2",
    "httpx",
    "cryptography",
    "jwt",
    "redis",
    "kubernetes",
    "jsonschema",  # the Python package; jsonschema_rs is another top-level name
    "fastapi",  # the routes besides /mcp are plain Starlette ones: FastAPI's OpenAPI models cost ~0.1 s and MiBs
)

# What app.cli.main does before the listeners serve: the settings from the environment, the logging, the
# tracing, then what app.listeners.serve builds (the MCP application and the metrics one).
BUILD = """
import json, os, sys
from app import __version__
from app.cli import settings_from_args
from app.listeners import serve  # noqa: F401 - what python -m app imports
from app.middleware import ServerState
from app.observability.logging import configure_logging
from app.observability.metrics import Metrics
from app.observability.tracing import configure_tracing
from app.wiring import create_app, create_metrics_app

settings = settings_from_args([])
configure_logging(settings.log_level, settings.log_format, gcp_project=None)
configure_tracing(os.environ, service_version=__version__, stdio=False)
metrics, state = Metrics(__version__), ServerState()
create_app(settings, metrics=metrics, state=state)
create_metrics_app(metrics, state)
watched = json.loads(sys.argv[1])
print(json.dumps(sorted(name for name in watched if name in sys.modules)))
"""


def imported(env: Mapping[str, str]) -> set[str]:
    """Which of :data:`WATCHED` building the application with ``env`` (ERLMCP_* variables) imported."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith(("ERLMCP_", "OTEL_"))}
    result = subprocess.run(
        [sys.executable, "-c", BUILD, json.dumps(WATCHED)],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


@pytest.fixture
def chart_env(tmp_path: Path) -> dict[str, str]:
    """The environment the chart gives the server (deployment.yaml): an API key file, JSON logs at INFO, the
    request-state key in the secrets folder, the built-in catalogue, in-memory sessions, two tool workers."""
    keys = tmp_path / "api-keys"
    keys.write_text("ci-bot * 0123456789abcdef0123456789abcdef\n")
    secrets = tmp_path / "state"
    secrets.mkdir()
    (secrets / "erlmcp_request_state_key").write_text("k" * 48)
    return {
        "ERLMCP_HOST": "127.0.0.1",
        "ERLMCP_API_KEY_FILE": str(keys),
        "ERLMCP_LOG_FORMAT": "json",
        "ERLMCP_LOG_LEVEL": "INFO",
        "ERLMCP_SECRETS_DIR": str(secrets),
        "ERLMCP_TOOL_WORKERS": "2",
        "ERLMCP_DRAIN_SECONDS": "5",
    }


def test_the_server_as_the_chart_ships_it_imports_none_of_the_optional_packages(chart_env: dict[str, str]) -> None:
    assert imported(chart_env) == set()


def test_redis_sessions_import_redis(chart_env: dict[str, str]) -> None:
    # Building the client connects to nothing: no Redis needs to listen here.
    assert "redis" in imported({**chart_env, "ERLMCP_REDIS_URL": "redis://127.0.0.1:1/0"})


def test_an_http_tool_in_the_catalogue_imports_httpx_and_jinja2(chart_env: dict[str, str], tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        "allowedHosts: [api.example.com]\n"
        "tools:\n"
        "  - name: weather\n"
        "    description: The weather in a city.\n"
        "    kind: http\n"
        "    url: https://api.example.com/weather/{{ city }}\n"
    )
    found = imported({**chart_env, "ERLMCP_CATALOG": str(catalog)})
    assert {"httpx", "jinja2"} <= found
    assert "redis" not in found


def test_a_user_catalogue_with_a_prompt_imports_jinja2_to_check_its_template(
    chart_env: dict[str, str], tmp_path: Path
) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("prompts:\n  - name: greet\n    messages:\n      - text: Hello {{ name }}\n")
    found = imported({**chart_env, "ERLMCP_CATALOG": str(catalog)})
    assert "jinja2" in found
    assert "httpx" not in found


def test_jwt_bearer_tokens_import_pyjwt(chart_env: dict[str, str]) -> None:
    found = imported(
        {
            **chart_env,
            "ERLMCP_JWT_JWKS_URL": "https://issuer.example.com/jwks.json",
            "ERLMCP_JWT_ISSUER": "https://issuer.example.com",
            "ERLMCP_RESOURCE_URL": "https://mcp.example.com",
        }
    )
    assert "jwt" in found
