"""Per-audience limits for JWT bearer tokens (`jwt.audienceLimits`): rendered by real Helm into the setting the
server reads, which the server's own Settings accept; a malformed entry is refused at render."""

from __future__ import annotations

import orjson
import pytest

from app.security.limits import Limits
from app.settings import Settings
from tests.chart.rendering import refusal, render

pytestmark = pytest.mark.slow

JWT = (
    "jwt.jwksUrl=https://issuer.example/jwks",
    "jwt.issuer=https://issuer.example",
    "jwt.resourceUrl=https://mcp.example",
)


def server_env(helm: str, *sets: str) -> dict[str, str]:
    [deployment] = [d for d in render(helm, *sets) if d["kind"] == "Deployment" and d["metadata"]["name"] == "r1"]
    return {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_audience_limits_reach_the_server_as_settings_it_accepts(helm: str) -> None:
    env = server_env(helm, *JWT, "jwt.audienceLimits.agents\\.example=rate=50\\,burst=200\\,sessions=500")
    chosen = orjson.loads(env["ERLMCP_JWT_AUDIENCE_LIMITS"])
    assert chosen == {"agents.example": "rate=50,burst=200,sessions=500"}
    settings = Settings(jwks_min_refresh_seconds=30, jwt_jwks_url="https://issuer.example/jwks",
                        jwt_issuer="https://issuer.example", resource_url="https://mcp.example",
                        jwt_audience_limits=chosen)  # fmt: skip
    [(audience, overrides)] = settings.audience_limits
    limits = overrides.applied_to(Limits(rate=20, burst=100, initialize=600, sessions=100))
    assert (audience, limits.rate, limits.burst, limits.sessions) == ("agents.example", 50, 200, 500)


def test_without_audience_limits_no_setting_is_rendered(helm: str) -> None:
    assert "ERLMCP_JWT_AUDIENCE_LIMITS" not in server_env(helm, *JWT)


def test_a_malformed_audience_limit_is_refused_at_render(helm: str) -> None:
    said = refusal(helm, *JWT, "jwt.audienceLimits.agents=bursts=5")
    assert "audienceLimits" in said
