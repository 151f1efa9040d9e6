"""The method table: which MCP methods exist in which revision, and what the dispatcher derives from it."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any

import orjson
import pytest

from app.catalog.conformance import PROMPTS, RESOURCES, TEMPLATES, TOOLS, conformance_features
from app.catalog.features import CatalogRuntime, load_features
from app.features import Features
from app.features.prompts import Prompts
from app.features.resources import Resources
from app.features.tasks import TASKS_EXTENSION
from app.features.tools import Tools
from app.jsonrpc import Message
from app.protocol import methods
from app.protocol.context import RequestContext
from app.protocol.dispatcher import Dispatcher
from app.protocol.methods import (
    CACHEABLE,
    DISPATCHED,
    HANDSHAKE_METHODS,
    METHODS,
    MULTI_ROUND,
    NAME_FIELDS,
    STATELESS_METHODS,
    STREAMING_METHODS,
    TASK_METHODS,
    Capability,
    Era,
    MethodSpec,
    MethodTableError,
    capabilities_of,
    check_handlers,
    lookup,
)
from app.protocol.request_state import RequestStateSealer

SERVER_INFO = {"name": "erlmcp", "version": "1"}


def dispatcher(features: Features) -> Dispatcher:
    return Dispatcher(features=features, server_name="erlmcp", server_version="1", sealer=RequestStateSealer(b"k" * 32))


def wire(value: Any) -> bytes:
    """What goes on the wire: key order included."""
    return orjson.dumps(value)


@pytest.fixture(scope="module")
def builtin() -> Iterator[Features]:
    runtime = CatalogRuntime(workers=1, threads=1)
    yield load_features(None, runtime=runtime, timeout_seconds=5, page_size=100)
    runtime.threads.shutdown()


# -- the table ----------------------------------------------------------------------------------------------------


def test_the_handshake_revisions_answer_the_handshake_lifecycle_and_every_feature() -> None:
    assert {
        "initialize",
        "ping",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
    } == HANDSHAKE_METHODS


def test_2026_07_28_drops_the_handshake_ping_set_level_and_subscribe_and_adds_discover() -> None:
    assert {
        "server/discover",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "prompts/list",
        "prompts/get",
        "completion/complete",
    } == STATELESS_METHODS
    assert {"tasks/get", "tasks/update", "tasks/cancel"} == TASK_METHODS
    assert all(METHODS[name].eras is Era.STATELESS and METHODS[name].needs_tasks for name in TASK_METHODS)


def test_subscriptions_listen_is_a_2026_07_28_stream_the_dispatcher_never_answers() -> None:
    listen = METHODS["subscriptions/listen"]
    assert (listen.eras, listen.streaming) == (Era.STATELESS, True)
    assert {"subscriptions/listen"} == STREAMING_METHODS
    assert "subscriptions/listen" not in DISPATCHED | HANDSHAKE_METHODS | STATELESS_METHODS
    assert DISPATCHED == HANDSHAKE_METHODS | STATELESS_METHODS | TASK_METHODS


def test_only_calls_prompts_and_reads_may_ask_for_input() -> None:
    assert {"tools/call", "prompts/get", "resources/read"} == MULTI_ROUND


def test_lists_and_discover_are_cached_publicly_for_a_minute_and_a_read_privately_not_at_all() -> None:
    assert {
        "server/discover",
        "tools/list",
        "prompts/list",
        "resources/list",
        "resources/templates/list",
        "resources/read",
    } == CACHEABLE
    hints = {name: (METHODS[name].cache_scope, METHODS[name].ttl_ms) for name in CACHEABLE}
    assert hints == {name: ("public", 60_000) for name in CACHEABLE - {"resources/read"}} | {
        "resources/read": ("private", 0)
    }


def test_the_mcp_name_header_mirrors_the_name_uri_or_task_id() -> None:
    assert NAME_FIELDS == {
        "tools/call": "name",
        "prompts/get": "name",
        "resources/read": "uri",
        "tasks/get": "taskId",
        "tasks/update": "taskId",
        "tasks/cancel": "taskId",
    }
    assert list(NAME_FIELDS) == [
        "tools/call",
        "prompts/get",
        "resources/read",
        "tasks/get",
        "tasks/update",
        "tasks/cancel",
    ]


def test_each_method_belongs_to_the_capability_that_declares_it() -> None:
    owners = {name: spec.capability for name, spec in METHODS.items()}
    assert {name for name, owner in owners.items() if owner is None} == {
        "initialize",
        "ping",
        "server/discover",
        "subscriptions/listen",
    }
    assert owners["logging/setLevel"] is Capability.LOGGING
    assert owners["completion/complete"] is Capability.COMPLETIONS
    assert {name for name, owner in owners.items() if owner is Capability.RESOURCES} == {
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
    }
    assert capabilities_of(Era.HANDSHAKE) == (
        Capability.TOOLS,
        Capability.LOGGING,
        Capability.RESOURCES,
        Capability.PROMPTS,
        Capability.COMPLETIONS,
    )
    assert capabilities_of(Era.STATELESS) == (
        Capability.TOOLS,
        Capability.RESOURCES,
        Capability.PROMPTS,
        Capability.COMPLETIONS,
        Capability.TASKS,
    )


def test_lookup_finds_a_known_method_and_nothing_else() -> None:
    assert lookup("tools/call") is METHODS["tools/call"]
    for unknown in ("tools/cal", "", None, 5, "notifications/initialized"):
        assert lookup(unknown) is None


def test_a_record_refuses_half_a_cache_hint_or_multi_round_outside_2026_07_28() -> None:
    with pytest.raises(ValueError, match="go together"):
        MethodSpec("x/list", Era.BOTH, cache_scope="public")
    with pytest.raises(ValueError, match="more than one round"):
        MethodSpec("x/get", Era.HANDSHAKE, multi_round=True)


# -- handlers and the table agree, or the server does not start -----------------------------------------------------


def test_the_dispatcher_has_a_handler_for_exactly_the_dispatched_methods() -> None:
    check_handlers(DISPATCHED)  # does not raise
    dispatcher(Features(tools=Tools([], timeout_seconds=5)))  # neither does the real dispatcher


def test_a_method_added_to_the_table_without_a_handler_stops_the_dispatcher(monkeypatch: pytest.MonkeyPatch) -> None:
    added = MethodSpec("tools/rename", Era.BOTH, Capability.TOOLS)
    monkeypatch.setattr(methods, "METHODS", MappingProxyType({**METHODS, added.name: added}))
    with pytest.raises(MethodTableError, match=r"methods without a handler \['tools/rename'\]"):
        dispatcher(Features(tools=Tools([], timeout_seconds=5)))


def test_a_handler_whose_method_left_the_table_stops_the_dispatcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(methods, "METHODS", MappingProxyType({k: v for k, v in METHODS.items() if k != "ping"}))
    with pytest.raises(MethodTableError, match=r"handlers of no method \['ping'\]"):
        dispatcher(Features(tools=Tools([], timeout_seconds=5)))


def test_a_streaming_method_needs_no_handler() -> None:
    with pytest.raises(MethodTableError, match=r"handlers of no method \['subscriptions/listen'\]"):
        check_handlers(DISPATCHED | {"subscriptions/listen"})


# -- the capability objects, byte for byte ------------------------------------------------------------------------


def test_the_builtin_catalogue_declares_tools_logging_resources_prompts_and_completions(builtin: Features) -> None:
    server = dispatcher(builtin)
    assert wire(server.initialize_result({"protocolVersion": "2025-11-25"})) == wire(
        {
            "protocolVersion": "2025-11-25",
            "capabilities": {
                "tools": {"listChanged": False},
                "logging": {},
                "resources": {"subscribe": True, "listChanged": False},
                "prompts": {"listChanged": False},
                "completions": {},
            },
            "serverInfo": SERVER_INFO,
            "instructions": builtin.instructions,
        }
    )
    assert wire(server.discover_result()) == wire(
        {
            "supportedVersions": ["2026-07-28"],
            "capabilities": {
                "tools": {"listChanged": False},
                "resources": {"listChanged": False, "subscribe": False},
                "prompts": {"listChanged": False},
                "completions": {},
            },
            "_meta": {"io.modelcontextprotocol/serverInfo": SERVER_INFO},
            "instructions": builtin.instructions,
        }
    )


def test_a_changing_catalogue_with_tasks_declares_list_changes_subscriptions_and_the_tasks_extension() -> None:
    server = dispatcher(conformance_features(timeout_seconds=5, page_size=100))
    assert wire(server.capabilities) == wire(
        {
            "tools": {"listChanged": True},
            "logging": {},
            "resources": {"subscribe": True, "listChanged": True},
            "prompts": {"listChanged": True},
            "completions": {},
        }
    )
    assert wire(server.discover_result()) == wire(
        {
            "supportedVersions": ["2026-07-28"],
            "capabilities": {
                "tools": {"listChanged": True},
                "resources": {"listChanged": True, "subscribe": True},
                "prompts": {"listChanged": True},
                "completions": {},
                "extensions": {TASKS_EXTENSION: {}},
            },
            "_meta": {"io.modelcontextprotocol/serverInfo": SERVER_INFO},
        }
    )


def test_a_catalogue_of_tools_alone_declares_tools_and_logging_only() -> None:
    server = dispatcher(Features(tools=Tools([], timeout_seconds=5)))
    assert wire(server.capabilities) == wire({"tools": {"listChanged": False}, "logging": {}})
    assert wire(server.discover_result()["capabilities"]) == wire({"tools": {"listChanged": False}})


def _handshake_as_written_by_hand(features: Features) -> dict[str, Any]:
    """The initialize capabilities as the dispatcher built them by hand before the method table."""
    changes = features.dynamic
    capabilities: dict[str, Any] = {"tools": {"listChanged": changes}, "logging": {}}
    if not features.resources.empty:
        capabilities["resources"] = {"subscribe": True, "listChanged": changes}
    if not features.prompts.empty:
        capabilities["prompts"] = {"listChanged": changes}
    if not features.prompts.empty or features.resources.templates:
        capabilities["completions"] = {}
    return capabilities


def _discover_as_written_by_hand(features: Features) -> dict[str, Any]:
    """The server/discover capabilities as the dispatcher built them by hand before the method table."""
    changes = features.dynamic
    capabilities: dict[str, Any] = {"tools": {"listChanged": changes}}
    if not features.resources.empty:
        capabilities["resources"] = {"listChanged": changes, "subscribe": changes}
    if not features.prompts.empty:
        capabilities["prompts"] = {"listChanged": changes}
    if not features.prompts.empty or features.resources.templates:
        capabilities["completions"] = {}
    if features.tools.support_tasks:
        capabilities["extensions"] = {TASKS_EXTENSION: {}}
    return capabilities


@pytest.mark.parametrize(
    ("dynamic", "tasks", "resources", "templates", "prompts"), list(itertools.product([False, True], repeat=5))
)
def test_every_catalogue_declares_what_it_declared_before_the_method_table(
    dynamic: bool, tasks: bool, resources: bool, templates: bool, prompts: bool
) -> None:
    features = Features(
        tools=Tools([tool for tool in TOOLS if tasks or not tool.task_support], timeout_seconds=5),
        resources=Resources(RESOURCES if resources else [], TEMPLATES if templates else []),
        prompts=Prompts(PROMPTS if prompts else []),
        dynamic=dynamic,
    )
    server = dispatcher(features)
    assert wire(server.capabilities) == wire(_handshake_as_written_by_hand(features))
    assert wire(server.discover_result()["capabilities"]) == wire(_discover_as_written_by_hand(features))


# -- dispatch follows the table -----------------------------------------------------------------------------------


def answer(server: Dispatcher, method: str, *, stateless: bool, **params: Any) -> dict[str, Any]:
    ctx = RequestContext(
        request_id=1,
        method=method,
        stateless=stateless,
        request_client_capabilities={"extensions": {TASKS_EXTENSION: {}}},
    )
    message = Message(method=method, id=1, params=params)
    outcome = asyncio.run(server.dispatch_stateless(message, ctx) if stateless else server.dispatch(message, ctx))
    return outcome.response


def test_each_revision_refuses_the_methods_of_the_other_as_unknown() -> None:
    server = dispatcher(conformance_features(timeout_seconds=5, page_size=100))
    for method in ("server/discover", "tasks/get", "subscriptions/listen"):
        assert answer(server, method, stateless=False)["error"]["code"] == -32601
    for method in ("initialize", "ping", "logging/setLevel", "resources/subscribe", "subscriptions/listen"):
        assert answer(server, method, stateless=True)["error"] == {
            "code": -32601,
            "message": f"Method not found: {method!r}",
            "data": {"method": method},
        }


def test_the_tasks_methods_exist_only_when_some_tool_can_finish_as_a_task() -> None:
    without = dispatcher(Features(tools=Tools([], timeout_seconds=5)))
    with_tasks = dispatcher(conformance_features(timeout_seconds=5, page_size=100))
    assert answer(without, "tasks/get", stateless=True, taskId="task-x")["error"]["code"] == -32601
    assert answer(with_tasks, "tasks/get", stateless=True, taskId="task-x")["error"]["code"] == -32602


def test_every_cacheable_result_carries_the_tables_hints() -> None:
    server = dispatcher(conformance_features(timeout_seconds=5, page_size=100))
    params: dict[str, dict[str, Any]] = {"resources/read": {"uri": "test://static-text"}}
    for method in sorted(CACHEABLE):
        result = answer(server, method, stateless=True, **params.get(method, {}))["result"]
        spec = METHODS[method]
        assert (result["resultType"], result["ttlMs"], result["cacheScope"]) == (
            "complete",
            spec.ttl_ms,
            spec.cache_scope,
        )
    completion = {
        "ref": {"type": "ref/prompt", "name": "test_prompt_with_arguments"},
        "argument": {"name": "arg1", "value": ""},
    }
    completed = answer(server, "completion/complete", stateless=True, **completion)["result"]
    assert completed["resultType"] == "complete"
    assert "ttlMs" not in completed
    assert "cacheScope" not in completed
