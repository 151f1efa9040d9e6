"""The MCP methods this server answers: one record per method, and the sets the protocol core derives from them.

Adding a method means one record here and one handler in :class:`app.protocol.dispatcher.Dispatcher` (it refuses
to start when the two disagree, see :func:`check_handlers`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

__all__ = [
    "CACHEABLE",
    "DISPATCHED",
    "HANDSHAKE_METHODS",
    "METHODS",
    "MULTI_ROUND",
    "NAME_FIELDS",
    "STATELESS_METHODS",
    "STREAMING_METHODS",
    "TASK_METHODS",
    "Capability",
    "Era",
    "MethodSpec",
    "MethodTableError",
    "capabilities_of",
    "check_handlers",
    "lookup",
]


class Era(enum.Flag):
    """The revisions a method belongs to: the initialize handshake (2024-11-05 to 2025-11-25) and/or the
    stateless revision (2026-07-28, each request carries ``_meta``)."""

    HANDSHAKE = enum.auto()
    STATELESS = enum.auto()
    BOTH = HANDSHAKE | STATELESS


class Capability(enum.Enum):
    """The server capability a method belongs to, in the order the capability objects list them."""

    TOOLS = "tools"
    LOGGING = "logging"
    RESOURCES = "resources"
    PROMPTS = "prompts"
    COMPLETIONS = "completions"
    TASKS = "tasks"  # the io.modelcontextprotocol/tasks extension (declared under "extensions")


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """One MCP request method and the rules it is answered under."""

    name: str
    eras: Era
    # The server capability it belongs to; None for the lifecycle methods (initialize, ping, server/discover, ...).
    capability: Capability | None = None
    # May answer InputRequiredResult (2026-07-28 multi-round input): a retried request carries requestState.
    multi_round: bool = False
    # 2026-07-28 cacheable results: the cacheScope and ttlMs a complete result carries (both or neither).
    cache_scope: Literal["public", "private"] | None = None
    ttl_ms: int | None = None
    # The body field the 2026-07-28 Mcp-Name header mirrors.
    name_field: str | None = None
    # Answered only when the catalogue supports tasks (some tool can finish as a task).
    needs_tasks: bool = False
    # Answered with a stream by the transport (never by the dispatcher).
    streaming: bool = False
    # 2026-07-28: inputResponses and requestState are checked (and requestState opened) before the handler runs.
    # False for methods that take their params as they come (server/discover; tasks/update reads inputResponses).
    checks_input: bool = True

    def __post_init__(self) -> None:
        if (self.cache_scope is None) != (self.ttl_ms is None):
            raise ValueError(f"{self.name}: cache_scope and ttl_ms go together")
        if self.multi_round and Era.STATELESS not in self.eras:
            raise ValueError(f"{self.name}: only 2026-07-28 requests can take more than one round")

    def served_in(self, era: Era) -> bool:
        """Whether the method exists in ``era`` (Era.HANDSHAKE or Era.STATELESS)."""
        return bool(self.eras & era)


_PUBLIC = 60_000  # ms a public list (and server/discover) may be cached

_TABLE = (
    MethodSpec("initialize", Era.HANDSHAKE),
    MethodSpec("ping", Era.HANDSHAKE),
    MethodSpec("server/discover", Era.STATELESS, cache_scope="public", ttl_ms=_PUBLIC, checks_input=False),
    MethodSpec("subscriptions/listen", Era.STATELESS, streaming=True),
    MethodSpec("tools/list", Era.BOTH, Capability.TOOLS, cache_scope="public", ttl_ms=_PUBLIC),
    MethodSpec("tools/call", Era.BOTH, Capability.TOOLS, multi_round=True, name_field="name"),
    MethodSpec("prompts/list", Era.BOTH, Capability.PROMPTS, cache_scope="public", ttl_ms=_PUBLIC),
    MethodSpec("prompts/get", Era.BOTH, Capability.PROMPTS, multi_round=True, name_field="name"),
    MethodSpec("resources/list", Era.BOTH, Capability.RESOURCES, cache_scope="public", ttl_ms=_PUBLIC),
    MethodSpec("resources/templates/list", Era.BOTH, Capability.RESOURCES, cache_scope="public", ttl_ms=_PUBLIC),
    MethodSpec(
        "resources/read",
        Era.BOTH,
        Capability.RESOURCES,
        multi_round=True,
        cache_scope="private",
        ttl_ms=0,
        name_field="uri",
    ),
    MethodSpec("resources/subscribe", Era.HANDSHAKE, Capability.RESOURCES),
    MethodSpec("resources/unsubscribe", Era.HANDSHAKE, Capability.RESOURCES),
    MethodSpec("completion/complete", Era.BOTH, Capability.COMPLETIONS),
    MethodSpec("logging/setLevel", Era.HANDSHAKE, Capability.LOGGING),
    *(
        MethodSpec(name, Era.STATELESS, Capability.TASKS, name_field="taskId", needs_tasks=True, checks_input=False)
        for name in ("tasks/get", "tasks/update", "tasks/cancel")
    ),
)

METHODS: Mapping[str, MethodSpec] = MappingProxyType({spec.name: spec for spec in _TABLE})
if len(METHODS) != len(_TABLE):
    raise ValueError("a method appears twice in the method table")

# What the dispatcher answers (each has a handler there); subscriptions/listen is a stream the transport answers.
DISPATCHED = frozenset(spec.name for spec in _TABLE if not spec.streaming)
STREAMING_METHODS = frozenset(spec.name for spec in _TABLE if spec.streaming)
# What the dispatcher answers in each era; 2026-07-28 answers TASK_METHODS too when the catalogue supports tasks.
HANDSHAKE_METHODS = frozenset(name for name in DISPATCHED if METHODS[name].served_in(Era.HANDSHAKE))
STATELESS_METHODS = frozenset(
    name for name in DISPATCHED if METHODS[name].served_in(Era.STATELESS) and not METHODS[name].needs_tasks
)
TASK_METHODS = frozenset(
    name for name in DISPATCHED if METHODS[name].served_in(Era.STATELESS) and METHODS[name].needs_tasks
)
MULTI_ROUND = frozenset(spec.name for spec in _TABLE if spec.multi_round)
CACHEABLE = frozenset(spec.name for spec in _TABLE if spec.cache_scope is not None)
NAME_FIELDS: Mapping[str, str] = MappingProxyType(
    {spec.name: spec.name_field for spec in _TABLE if spec.name_field is not None}
)


def lookup(method: object) -> MethodSpec | None:
    """The record of ``method``, or None for a method this server does not know."""
    return METHODS.get(method) if isinstance(method, str) else None


def capabilities_of(era: Era) -> tuple[Capability, ...]:
    """The capabilities that have a method in ``era``, in the order the capability objects list them."""
    return tuple(
        capability
        for capability in Capability
        if any(spec.capability is capability and spec.served_in(era) for spec in METHODS.values())
    )


class MethodTableError(RuntimeError):
    """The dispatcher's handlers and the method table disagree (a method added in one place only)."""


def check_handlers(handled: Iterable[str]) -> None:
    """Refuse handlers that do not cover exactly the dispatched methods of the table.

    Raises:
        MethodTableError: naming the methods without a handler and the handlers without a method.
    """
    handled = set(handled)
    dispatched = {spec.name for spec in METHODS.values() if not spec.streaming}
    missing, extra = sorted(dispatched - handled), sorted(handled - dispatched)
    if missing or extra:
        raise MethodTableError(
            "the method table (app/protocol/methods.py) and the dispatcher disagree: "
            f"methods without a handler {missing}, handlers of no method {extra}"
        )
