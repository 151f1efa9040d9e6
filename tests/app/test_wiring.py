"""The routes ``create_app`` serves besides /mcp, on a real socket (uvicorn in a thread): health on every alias,
JSON refusals for an unknown path or a wrong method (``{"detail": ...}``, as clients of earlier versions saw), the
RFC 9728 metadata only with JWT, and the lifespan that runs the background work."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from app.observability.metrics import Metrics
from app.settings import Settings
from app.wiring import METADATA_PATH, create_app
from tests.conftest import free_port, wait_ready


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    metrics = Metrics("test")
    app = create_app(Settings(no_auth=True, rate_limit_per_second=0), metrics=metrics)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_ready(f"{base}/livez")
    yield base
    server.should_exit = True
    thread.join(15)
    assert not thread.is_alive(), "the server did not stop"


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/healthz", "/health"])
def test_every_health_path_answers_200(url: str, path: str) -> None:
    assert httpx.get(f"{url}{path}", timeout=10).status_code == 200


def test_an_unknown_path_is_404_in_json(url: str) -> None:
    answer = httpx.get(f"{url}/nowhere", timeout=10)
    assert (answer.status_code, answer.json()) == (404, {"detail": "Not Found"})
    assert answer.headers["content-type"] == "application/json"


def test_a_wrong_method_on_a_known_path_is_405_in_json_naming_the_allowed_ones(url: str) -> None:
    answer = httpx.post(f"{url}/livez", timeout=10)
    assert (answer.status_code, answer.json()) == (405, {"detail": "Method Not Allowed"})
    assert "GET" in answer.headers["allow"]
    assert httpx.get(f"{url}/messages", timeout=10).status_code == 405


def test_the_protected_resource_metadata_is_served_only_with_jwt(url: str) -> None:
    assert httpx.get(f"{url}{METADATA_PATH}", timeout=10).status_code == 404


def test_a_websocket_to_an_unknown_path_is_refused(url: str) -> None:
    answer = httpx.get(
        f"{url}/nowhere",
        headers={"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                 "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="},
        timeout=10,
    )  # fmt: skip
    assert answer.status_code in {403, 404}


@pytest.mark.parametrize("path", ["/sse", "/livez", "/readyz", "/healthz", "/health", METADATA_PATH])
def test_head_is_405_where_only_get_is_served_as_before_and_opens_no_stream(url: str, path: str) -> None:
    """Starlette's routes take HEAD wherever they take GET; FastAPI's did not. A HEAD of /sse would open a legacy
    SSE stream that never ends (its body thrown away), holding a connection slot and the keep-alive connection."""
    answer = httpx.head(f"{url}{path}", timeout=10)
    assert answer.status_code in {404, 405}  # 404: the metadata path without JWT
    if answer.status_code == 405:
        assert answer.headers["allow"] == "GET"
