"""Plugins: Python packages that add tools, resources and prompts through the entry-point group
``erlmcp.plugins``.

A plugin package declares, in its ``pyproject.toml``::

    [project.entry-points."erlmcp.plugins"]
    weather = "erlmcp_weather:register"

and ``register(registry)`` calls :meth:`Registry.tool`, :meth:`Registry.resource` and :meth:`Registry.prompt`.
A catalogue turns plugins on by name (``plugins: [weather]``): installing a package into the image does not by
itself expose anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal

__all__ = ["GROUP", "PluginError", "PluginPrompt", "PluginResource", "PluginTool", "Registry", "load_plugins"]

GROUP = "erlmcp.plugins"


class PluginError(ValueError):
    """A plugin cannot be found, loaded or registered; the message names it."""


@dataclass(frozen=True, slots=True)
class PluginTool:
    """A tool a plugin registered: a function, as a catalogue ``python`` entry would name it."""

    function: Callable[..., Any]
    name: str
    description: str
    title: str | None = None
    input_schema: Mapping[str, Any] | None = None
    output_schema: Mapping[str, Any] | None = None
    annotations: Mapping[str, Any] | None = None
    timeout_seconds: float | None = None
    max_concurrency: int | None = None
    isolation: Literal["thread", "process"] = "thread"

    @property
    def target(self) -> str:
        """``module:function``, how a worker process finds the function."""
        return f"{self.function.__module__}:{self.function.__qualname__}"


@dataclass(frozen=True, slots=True)
class PluginResource:
    """A resource a plugin registered: fixed text, or a function (sync or async) that returns the text."""

    uri: str
    name: str
    text: str | None = None
    read: Callable[[], Any] | None = None
    title: str | None = None
    description: str | None = None
    mime_type: str = "text/plain"


@dataclass(frozen=True, slots=True)
class PluginPrompt:
    """A prompt a plugin registered: Jinja2 message templates, as in the catalogue."""

    name: str
    messages: Sequence[tuple[str, str]]  # (role, template)
    title: str | None = None
    description: str | None = None
    arguments: Sequence[Mapping[str, Any]] = ()  # name, description, required, values


@dataclass
class Registry:
    """What one plugin's ``register`` function adds."""

    plugin: str
    tools: list[PluginTool] = field(default_factory=list)
    resources: list[PluginResource] = field(default_factory=list)
    prompts: list[PluginPrompt] = field(default_factory=list)

    def tool(
        self, function: Callable[..., Any], *, name: str | None = None, description: str | None = None, **options: Any
    ) -> None:
        """Offer ``function`` as a tool: its name, and its docstring as description, unless given. Options:
        ``title``, ``input_schema`` (default: from the type hints), ``output_schema``, ``annotations``,
        ``timeout_seconds``, ``max_concurrency``, ``isolation`` (``thread`` or ``process``)."""
        described = description or (function.__doc__ or "").strip()
        if not described:
            raise PluginError(
                f"plugin {self.plugin!r}: tool {name or function.__name__!r} needs a description "
                "(a docstring or description=...)"
            )
        try:
            self.tools.append(PluginTool(function, name or function.__name__, described, **options))
        except TypeError as exc:
            raise PluginError(f"plugin {self.plugin!r}: tool {name or function.__name__!r}: {exc}") from None

    def resource(self, uri: str, name: str, **options: Any) -> None:
        """Offer a resource: ``text=...`` or ``read=function``; ``title``, ``description``, ``mime_type``."""
        try:
            resource = PluginResource(uri, name, **options)
        except TypeError as exc:
            raise PluginError(f"plugin {self.plugin!r}: resource {uri!r}: {exc}") from None
        if (resource.text is None) == (resource.read is None):
            raise PluginError(f"plugin {self.plugin!r}: resource {uri!r} needs exactly one of text= and read=")
        self.resources.append(resource)

    def prompt(self, name: str, messages: Sequence[tuple[str, str]] | str, **options: Any) -> None:
        """Offer a prompt: one user message template, or ``(role, template)`` pairs; ``title``,
        ``description``, ``arguments`` (dicts with name, description, required, values)."""
        pairs = [("user", messages)] if isinstance(messages, str) else list(messages)
        try:
            self.prompts.append(PluginPrompt(name, pairs, **options))
        except TypeError as exc:
            raise PluginError(f"plugin {self.plugin!r}: prompt {name!r}: {exc}") from None


def _installed() -> dict[str, EntryPoint]:
    return {point.name: point for point in entry_points(group=GROUP)}


def load_plugins(names: Iterable[str]) -> list[Registry]:
    """Load the named plugins and collect what each registers, in the order named.

    Raises:
        PluginError: a plugin is not installed, cannot be imported, or its ``register`` fails.
    """
    installed = _installed()
    registries = []
    for name in names:
        point = installed.get(name)
        if point is None:
            known = ", ".join(sorted(installed)) or "none"
            raise PluginError(f"plugin {name!r} is not installed (entry points {GROUP!r}: {known})")
        try:
            register = point.load()
        except Exception as exc:  # importing runs the plugin's code: any failure is the plugin's
            reason = f"{type(exc).__name__}: {exc}"
            raise PluginError(f"plugin {name!r} ({point.value}) cannot be loaded: {reason}") from None
        registry = Registry(name)
        try:
            register(registry)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"plugin {name!r}: register() failed: {type(exc).__name__}: {exc}") from None
        registries.append(registry)
    return registries
