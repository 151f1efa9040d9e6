"""Real MCP clients, old and new, pinned, against a real server configured as the chart ships it.

The official Python SDK ``mcp`` 1.9.4, 1.12.4, 1.30.0 and 2.3.0 (both of its modes), and the official TypeScript
SDK 1.32.2, each over the transports it has (tests/interop/clients.py says which, and why the Python clients
have no WebSocket), run the same session (tests/interop/conftest.py): initialize, list tools, call one, read a
resource, get a prompt, follow a call's progress, and call ``test_reconnection``, whose stream the server may end
mid-call, then connect once more with a wrong key. Each step is asserted for every client that has it, so that a
failure names the client, the version, the transport and the step.

What the clients do differently, and the server must allow for (docs/client-interop.md):

- mcp 1.9/1.12 (up to 1.22) parse every SSE event that has no data as a message and log "Error parsing SSE
  message": the priming event of SEP-1699, and, once a stream has carried an id, every keep-alive their SSE
  parser (httpx-sse) dispatches. They never reconnect a stream either: a call whose stream the server ends waits
  for its timeout. Their sessions must not see either, hence ``client_errors == []`` and the reconnection step.
- Every client of a handshake-era session over streamable HTTP hears three changes of the tool list on its GET
  stream, exactly once each, from a server with its sessions in memory and from one with them in Redis. The clients
  that reconnect their GET stream with Last-Event-ID (mcp 1.30.0 and 2.3.0 at 2025-11-25, the TypeScript SDK) must
  miss none sent while the stream was away: a proxy (tests/interop/proxy.py) cuts the stream before the second
  change (and, for the TypeScript SDK, before the third too: the Python clients give a GET stream up at its second
  cut, see clients.py). Old clients never reconnect a GET stream, so theirs is not cut: it must stay open and
  quiet (keep-alives only) between changes. 2026-07-28 sessions have no GET stream.
"""

from __future__ import annotations

import pytest

from tests.interop.clients import CASES, STDIO, STREAMABLE_HTTP, WEBSOCKET, Case
from tests.interop.conftest import STORES, Matrix

pytestmark = pytest.mark.slow

AUTHENTICATED = [case for case in CASES if case.transport != STDIO]  # a stdio server has no credentials to check
# Every handshake-era session over streamable HTTP has a GET stream (cut or not: see Case.cuts).
LISTENING = [case for case in CASES if case.transport == STREAMABLE_HTTP and case.protocol != "2026-07-28"]


def ids(case: Case) -> str:
    return case.id


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_the_client_negotiates_the_protocol_version_it_asks_for(matrix: Matrix, case: Case) -> None:
    report = matrix.session(case)
    assert report["protocol"] == case.protocol, report.explain()


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_the_client_lists_the_tools(matrix: Matrix, case: Case) -> None:
    report = matrix.session(case)
    assert isinstance(report["tools"], list), report.explain()
    assert {"test_simple_text", "test_reconnection", "test_trigger_tool_change"} <= set(report["tools"])


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_the_client_calls_a_tool(matrix: Matrix, case: Case) -> None:
    report = matrix.session(case)
    assert report["call"] == "This is a simple text response for testing.", report.explain()


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_the_client_reads_a_resource(matrix: Matrix, case: Case) -> None:
    report = matrix.session(case)
    assert report["resource"] == "This is the content of the static text resource.", report.explain()


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_the_client_gets_a_prompt_with_its_arguments(matrix: Matrix, case: Case) -> None:
    report = matrix.session(case)
    assert report["prompt"] == "Prompt with arguments: arg1='a', arg2='b'", report.explain()


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_the_client_follows_the_progress_of_a_call(matrix: Matrix, case: Case) -> None:
    report = matrix.session(case)
    progress = report["progress"]
    assert isinstance(progress, list), report.explain()
    assert progress, report.explain()
    assert progress == sorted(set(progress)), report.explain()  # each step further than the last


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_a_call_whose_stream_the_server_may_end_still_gets_its_answer(matrix: Matrix, case: Case) -> None:
    """A 2025-11-25 session's stream may be ended mid-call and resumed with Last-Event-ID; an older client, which
    never resumes, must get the answer on the stream it has."""
    report = matrix.session(case)
    assert report["reconnection"] == "Reconnection test completed", report.explain()


@pytest.mark.parametrize("case", AUTHENTICATED, ids=ids)
def test_a_wrong_key_is_refused_and_the_client_says_so(matrix: Matrix, case: Case) -> None:
    report = matrix.session(case)
    said = report["unauthorized"]
    assert isinstance(said, str), report.explain()  # the client raised (a mapping: it connected, or did not run)
    if case.transport == WEBSOCKET:
        # A WebSocket client cannot say more than "the handshake failed": the WHATWG WebSocket API keeps the
        # status of a refused upgrade to itself. The same client with the right key connects (the steps above).
        assert "non-101" in said, report.explain()
    else:
        assert "401" in said or "Unauthorized" in said, report.explain()


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_the_client_reports_no_error(matrix: Matrix, case: Case) -> None:
    """Nothing the server sends (priming events, keep-alives, ends of streams) makes the client library log or
    report an error."""
    report = matrix.session(case)
    assert report["client_errors"] == [], report.explain()


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("cut_case", LISTENING, ids=ids)
def test_a_get_stream_hears_every_change_once_even_when_cut_between_them(
    matrix: Matrix, cut_case: Case, store: str
) -> None:
    """Three changes of the tool list, the GET stream of a client that resumes cut before the second and (for a
    client that comes back more than once) before the third: the changes made while it was away arrive when it
    resumes, and none twice."""
    report, cuts = matrix.list_changed(cut_case, store)
    assert report["list_changed"] == 3, report.explain()
    assert cuts == [1] * cut_case.cuts, f"each cut ends the one GET stream: {cuts}\n{report.explain()}"
