"""A resumable event stream is readable only by the session that opened it (red-team finding 1).

``limited`` calls ``echo`` on its session and takes the answer as an event stream, whose events carry ids for
resumption (``Last-Event-ID``). Another session, of another principal (``other``) or of the same one, that sends
``GET /mcp`` with one of those ids is refused exactly as for a stream that never existed: 404 and the same
error, so that the refusal does not even tell whether the stream exists. The session that owns the stream still
resumes it. Both session stores behave the same: in memory, and in a real Redis (where any replica can resume a
stream, so the store itself must check whose it is).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.redis_server import RedisServer
from tests.security.conftest import ChartServer, open_session, serve_as_chart
from tests.sse import events

pytestmark = pytest.mark.slow

SECRET = "limited's private words"
TIMEOUT = 15.0  # liveness bound of every request: a hang fails the test


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChartServer]:
    redis: RedisServer | None = None
    env: dict[str, str] = {}
    if request.param == "redis":
        redis = RedisServer(tmp_path_factory.mktemp("redis")).start()
        env["ERLMCP_REDIS_URL"] = redis.url
    running = serve_as_chart(tmp_path_factory, f"streams-{request.param}", env=env)
    yield running
    running.stop()
    if redis is not None:
        redis.stop()


def streamed_echo(server: ChartServer, session: dict[str, str]) -> list[tuple[str | None, dict[str, Any] | None]]:
    """``echo`` of the secret, answered as an event stream (the client accepts nothing else): its events."""
    call = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": SECRET}},
    }
    answered = httpx.post(server.mcp, json=call, headers={**session, "Accept": "text/event-stream"}, timeout=TIMEOUT)
    assert answered.status_code == 200, answered.text
    assert answered.headers["content-type"].startswith("text/event-stream")
    return events(answered.text)


def resume(server: ChartServer, session: dict[str, str], event_id: str) -> httpx.Response:
    headers = {**session, "Accept": "text/event-stream", "Last-Event-ID": event_id}
    return httpx.get(server.mcp, headers=headers, timeout=TIMEOUT)


def refusal(response: httpx.Response, event_id: str) -> tuple[int, str, Any]:
    """What a refusal tells its reader: status, media type and body, with the event id it echoes masked."""
    body = orjson.loads(response.content.replace(event_id.encode(), b"<event id>"))
    return response.status_code, response.headers.get("content-type", ""), body


@pytest.mark.parametrize("intruder", ["other", "limited"], ids=["another principal", "another session, same key"])
def test_a_stream_cannot_be_resumed_by_another_session(server: ChartServer, intruder: str) -> None:
    owner = open_session(server, "limited", timeout=TIMEOUT)[1]
    stream = streamed_echo(server, owner)
    priming = stream[0][0]
    assert priming is not None  # the priming event: an id to resume from ...
    assert stream[0][1] is None  # ... and no data
    assert SECRET in orjson.dumps(stream[-1][1]).decode()

    foreign = open_session(server, intruder, timeout=TIMEOUT)[1]
    stolen = resume(server, foreign, priming)
    assert SECRET not in stolen.text
    assert stolen.status_code == 404, stolen.text

    # Refused exactly as a stream that never existed: the refusal does not tell that this one does.
    made_up = f"{secrets.token_hex(8)}-1"
    assert refusal(stolen, priming) == refusal(resume(server, foreign, made_up), made_up)
    assert refusal(stolen, priming)[2]["error"]["message"] == "Not Found: no stream to resume from event '<event id>'"

    # ... while the session that opened the stream resumes it: it does exist.
    resumed = resume(server, owner, priming)
    assert resumed.status_code == 200, resumed.text
    messages = [message for _, message in events(resumed.text) if message is not None]
    assert messages[-1]["id"] == 7
    assert SECRET in orjson.dumps(messages[-1]).decode()
