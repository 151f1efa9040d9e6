"""The chart's ``sessions.store: redis`` values run locally: two server replicas behind a round-robin proxy and the
Redis the chart would run (same config): a 2025-11-25 client does initialize, 50 calls and a resume across replicas
with no 404.

Everything comes from the chart rendered by real Helm with its default auth (an API key, from the rendered
Secret): the Redis is ``redis-server`` with the rendered redis.conf, and each replica is ``python -m app`` with the
rendered Pod's env, files and ports, both planned by ``deployer.marketplace.local`` exactly as ``python -m deployer
demo`` plans them (so the local differences, port, bind and data folder of Redis and each replica's own ports, are
made in one place). The client is the official MCP Python SDK."""

from __future__ import annotations

import base64
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from prometheus_client.parser import text_string_to_metric_families

from deployer.marketplace.local import LocalDeployment, LocalRedis, LocalServer, free_ports, plan_local_deployment
from deployer.marketplace.manifests import find_one
from deployer.marketplace.proxy import RoundRobinProxy
from deployer.marketplace.render import render
from deployer.marketplace.schema import load_schema
from tests.conftest import ROOT
from tests.integration.sessions import INIT
from tests.sse import events

pytestmark = pytest.mark.slow

CALLS = 50


@dataclass
class ChartRun:
    deployment: LocalDeployment
    redis: LocalRedis
    servers: list[LocalServer]
    proxy: RoundRobinProxy
    key: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}"

    @property
    def backends(self) -> list[int]:
        return [server.plan.ports["http"] for server in self.servers]


@pytest.fixture(scope="module")
def chart(helm: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChartRun]:
    root = tmp_path_factory.mktemp("chart-redis")
    port, metrics_port = free_ports(2)
    values = {"name": "mcp", "namespace": "apps", "__image_repo_prefix__": "gcr.io/p/erlmcp",
              "service.port": port, "service.metricsPort": metrics_port,
              "sessions.store": "redis", "replicaCount": 2}  # fmt: skip
    manifests = render(load_schema(ROOT / "schema.yaml"), values, chart=ROOT / "chart", helm=helm).manifests
    key = base64.b64decode(find_one(manifests, "Secret", "mcp-api-keys")["data"]["api-keys"]).decode().strip()
    deployment = plan_local_deployment(manifests, root=root, entrypoint=(sys.executable, "-m", "app"))
    assert deployment.redis is not None, "the chart rendered no Redis for sessions.store=redis"
    assert len(deployment.servers) == 2
    assert "ERLMCP_NO_AUTH" not in deployment.servers[0].env  # the chart's default: API keys on
    redis = LocalRedis(deployment.redis, root / "redis.log")
    servers = [LocalServer(plan, root / f"server-{i}.log") for i, plan in enumerate(deployment.servers, 1)]
    try:
        redis.start()
        for server in servers:
            server.start()
        with RoundRobinProxy([server.plan.ports["http"] for server in servers]) as proxy:
            yield ChartRun(deployment, redis, servers, proxy, key)
    finally:
        for server in servers:
            server.terminate()
        codes = [server.wait() for server in servers]
        redis.stop()
    assert codes == [0, 0], "\n".join(server.log_tail() for server in servers)


def tool_calls(server: LocalServer) -> float:
    """The tools/call requests a replica answered, from its own metrics listener."""
    text = httpx.get(f"http://127.0.0.1:{server.plan.ports['metrics']}/metrics", timeout=5).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "mcp_requests_total" and sample.labels.get("method") == "tools/call")  # fmt: skip


async def fifty_calls(url: str, key: str) -> tuple[str, list[str], list[tuple[str, int]]]:
    """The SDK client, every request on a connection of its own (so that the proxy spreads them): initialize, then
    50 echo calls; the protocol version, the texts answered, and every HTTP status seen."""
    statuses: list[tuple[str, int]] = []

    async def record(response: httpx2.Response) -> None:
        statuses.append((response.request.method, response.status_code))

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=httpx2.Timeout(30, read=60),
                              limits=httpx2.Limits(max_keepalive_connections=0),
                              event_hooks={"response": [record]})  # fmt: skip
    with anyio.fail_after(120):
        async with http, Client(streamable_http_client(f"{url}/mcp", http_client=http), mode="legacy") as client:
            texts = []
            for i in range(CALLS):
                called = await client.call_tool("echo", {"text": f"call {i}"})
                assert not called.is_error, called
                texts.append(str(called.content[0].text))  # type: ignore[union-attr]
            return str(client.protocol_version), texts, statuses


def test_a_2025_11_25_client_initializes_and_makes_50_calls_across_both_replicas_with_no_404(chart: ChartRun) -> None:
    before = [tool_calls(server) for server in chart.servers]
    version, texts, statuses = anyio.run(fifty_calls, chart.url, chart.key)
    assert version == "2025-11-25"
    assert texts == [f"call {i}" for i in range(CALLS)]
    assert 404 not in {status for _, status in statuses}, statuses
    assert {status for method, status in statuses if method == "POST"} <= {200, 202}, statuses
    served = [tool_calls(server) - count for server, count in zip(chart.servers, before, strict=True)]
    assert sum(served) == CALLS
    assert min(served) >= CALLS // 4, served  # both replicas answered calls of the one session
    assert min(chart.proxy.served.values()) > 0


def test_a_stream_cut_on_one_replica_resumes_through_the_proxy_on_the_other_without_loss_or_duplicates(
    chart: ChartRun,
) -> None:
    auth = {"Authorization": f"Bearer {chart.key}", "Connection": "close"}
    opened = httpx.post(f"{chart.url}/mcp", json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INIT},
                        headers={**auth, "Accept": "application/json, text/event-stream"}, timeout=10)  # fmt: skip
    assert opened.status_code == 200, opened.text
    session = {**auth, "Mcp-Session-Id": opened.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}}

    # Accepting only an event stream: the answer is a stream, a priming event then the response. The client reads
    # the priming event and the connection is cut.
    served = dict(chart.proxy.served)
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", f"{chart.url}/mcp", json=call, headers={**session, "Accept": "text/event-stream"}) as cut,
    ):
        assert cut.status_code == 200
        buffer = ""
        for chunk in cut.iter_text():
            buffer += chunk
            if "\n\n" in buffer:
                break
    first = events(buffer.partition("\n\n")[0])
    (cut_on,) = [port for port in chart.backends if chart.proxy.served[port] > served[port]]
    assert len(first) == 1
    assert first[0][1] is None  # the priming event: an id to resume from, no data
    last_id = first[0][0]
    assert last_id is not None

    served = dict(chart.proxy.served)
    resume = {**session, "Accept": "text/event-stream", "Last-Event-ID": last_id}
    resumed = httpx.get(f"{chart.url}/mcp", headers=resume, timeout=10)
    (resumed_on,) = [port for port in chart.backends if chart.proxy.served[port] > served[port]]
    assert resumed_on != cut_on  # the resumption reached the other replica
    assert resumed.status_code == 200, resumed.text
    later = events(resumed.text)
    received = first + later
    ids = [event_id for event_id, _ in received if event_id]
    assert len(ids) == len(set(ids))  # no duplicates
    responses = [message for _, message in later if message and message.get("id") == 7]
    assert len(responses) == 1  # no loss: the response the cut stream did not deliver
    assert responses[0]["result"]["content"][0]["text"] == "x"


def redis_reply(port: int, *commands: bytes) -> list[bytes]:
    """One reply line per RESP command sent to the Redis on the loopback port."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(b"".join(commands))
        reply = b""
        while reply.count(b"\r\n") < len(commands):
            chunk = connection.recv(4096)
            assert chunk, "redis-server closed the connection"
            reply += chunk
    return reply.split(b"\r\n")[: len(commands)]


def resp(*words: str) -> bytes:
    return f"*{len(words)}\r\n".encode() + b"".join(f"${len(w)}\r\n{w}\r\n".encode() for w in words)


def test_the_charts_redis_refuses_a_client_without_its_password(chart: ChartRun) -> None:
    plan = chart.deployment.redis
    assert plan is not None
    assert plan.password
    assert redis_reply(plan.port, resp("PING"))[0].startswith(b"-NOAUTH")
    assert redis_reply(plan.port, resp("AUTH", "wrong-password"), resp("PING"))[0].startswith(b"-WRONGPASS")
    assert redis_reply(plan.port, resp("AUTH", plan.password), resp("PING")) == [b"+OK", b"+PONG"]
    # the replicas reach it with the URL the chart gave them, its Service address made local
    url = Path(chart.servers[0].plan.env["ERLMCP_SECRETS_DIR"], "erlmcp_redis_url").read_text()
    assert url == f"redis://:{plan.password}@127.0.0.1:{plan.port}/0"
