"""Turning a catalogue (or a built-in profile) into the features a server offers."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.catalog.loader import CatalogError, load_catalog
from app.catalog.model import (
    BuiltinToolEntry,
    Catalog,
    DirectoryResourceEntry,
    FileResourceEntry,
    HttpResourceEntry,
    HttpToolEntry,
    PromptArgumentEntry,
    PromptEntry,
    PromptMessageEntry,
    PythonToolEntry,
    TextResourceEntry,
    TextTemplateEntry,
)
from app.catalog.plugins import PluginError, PluginResource, PluginTool, load_plugins
from app.catalog.prompts import prompt_spec
from app.catalog.python_tool import import_function, python_tool_handler, schema_from_hints
from app.catalog.resources import directory_resources, file_reader, text_reader, text_template_reader
from app.features import Features
from app.features.builtins import BUILTINS
from app.features.prompts import Prompts, PromptSpec
from app.features.resources import Reader, ResourceContents, Resources, ResourceSpec, TemplateSpec
from app.features.tools import Tools, ToolSpec
from app.runtime.pool import WorkerPool

if TYPE_CHECKING:
    from app.catalog.upstream import Upstream

__all__ = ["PROFILES", "CatalogRuntime", "features_from_catalog", "load_features"]

PROFILES = ("conformance",)


class CatalogRuntime:
    """What catalogue entries share, across reloads: a thread pool for sync functions (never the event loop),
    the worker-process pool for ``isolation: process``, and an HTTP client for upstream calls (made, and httpx
    imported, only for a catalogue with ``http`` entries)."""

    def __init__(
        self,
        *,
        workers: int = 2,
        worker_memory_mb: int | None = 512,
        threads: int = 16,
        cancel_restarts_per_minute: int = 10,
        call_timeout_seconds: float = 30.0,
    ) -> None:
        self.threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="erlmcp-tool")
        self.pool = WorkerPool(
            size=workers,
            memory_limit_mb=worker_memory_mb,
            cancel_restarts_per_minute=cancel_restarts_per_minute,
            call_timeout_seconds=call_timeout_seconds,
        )
        self._upstreams: list[Upstream] = []

    def upstream(self, allowed_hosts: tuple[str, ...]) -> Upstream:
        """An upstream caller limited to ``allowed_hosts`` (one per catalogue load that has ``http`` entries)."""
        from app.catalog.upstream import Upstream

        upstream = Upstream(allowed_hosts=allowed_hosts)
        self._upstreams.append(upstream)
        return upstream

    async def aclose(self) -> None:
        """Stop the workers, close the HTTP clients, let the threads finish."""
        await self.pool.aclose()
        for upstream in self._upstreams:
            await upstream.aclose()
        self.threads.shutdown(wait=False, cancel_futures=True)


def _where(kind: str, index: int, name: str, field: str) -> str:
    return f"{kind}[{index}] {name!r}: {field}"


def _tool_spec(entry: Any, handler: Any, input_schema: Mapping[str, Any], output_schema: Any = None) -> ToolSpec:
    return ToolSpec(
        name=entry.name,
        title=entry.title,
        description=entry.description,
        input_schema=input_schema,
        output_schema=output_schema,
        annotations=entry.annotations,
        handler=handler,
        timeout_seconds=entry.timeout_seconds,
        max_concurrency=entry.max_concurrency,
    )


def _tools(
    catalog: Catalog, runtime: CatalogRuntime, upstream: Callable[[], Upstream], timeout: float
) -> list[ToolSpec]:
    specs = []
    for index, entry in enumerate(catalog.tools):
        if isinstance(entry, BuiltinToolEntry):
            builtin = BUILTINS[entry.builtin]
            annotations = entry.annotations or ({"readOnlyHint": True} if builtin.read_only else None)
            specs.append(
                _tool_spec(
                    entry.model_copy(update={"annotations": annotations}),
                    builtin.run,
                    entry.input_schema or builtin.input_schema,
                    entry.output_schema or builtin.output_schema,
                )
            )
        elif isinstance(entry, HttpToolEntry):
            from app.catalog.http_tool import http_tool_handler  # httpx and Jinja2 load only for http entries

            schema = entry.input_schema or {"type": "object", "properties": {}}
            limit = min(entry.timeout_seconds or timeout, timeout)
            specs.append(
                _tool_spec(
                    entry, http_tool_handler(entry, upstream(), timeout_seconds=limit), schema, entry.output_schema
                )
            )
        elif isinstance(entry, PythonToolEntry):
            try:
                function = import_function(entry.function)
                schema = entry.input_schema or schema_from_hints(function)
            except ValueError as exc:
                raise CatalogError(_where("tools", index, entry.name, f"function: {exc}")) from None
            handler = python_tool_handler(entry, function, threads=runtime.threads, pool=runtime.pool)
            specs.append(_tool_spec(entry, handler, schema, entry.output_schema))
    return specs


def _resources(
    catalog: Catalog, upstream: Callable[[], Upstream], timeout: float
) -> tuple[list[ResourceSpec], list[TemplateSpec]]:
    resources: list[ResourceSpec] = []
    for index, entry in enumerate(catalog.resources):
        common: dict[str, Any] = {"name": entry.name, "title": entry.title, "description": entry.description}
        if isinstance(entry, TextResourceEntry):
            resources.append(
                ResourceSpec(
                    uri=entry.uri, read=text_reader(entry), mime_type=entry.mime_type or "text/plain", **common
                )
            )
        elif isinstance(entry, FileResourceEntry):
            if not entry.path.is_file():
                raise CatalogError(_where("resources", index, entry.name, f"path: {str(entry.path)!r} is not a file"))
            resources.append(ResourceSpec(uri=entry.uri, read=file_reader(entry), mime_type=entry.mime_type, **common))
        elif isinstance(entry, DirectoryResourceEntry):
            try:
                resources.extend(directory_resources(entry))
            except ValueError as exc:
                raise CatalogError(_where("resources", index, entry.name, f"path: {exc}")) from None
        elif isinstance(entry, HttpResourceEntry):
            from app.catalog.http_tool import http_resource_reader

            reader = http_resource_reader(entry, upstream(), timeout_seconds=timeout)
            resources.append(ResourceSpec(uri=entry.uri, read=reader, mime_type=entry.mime_type, **common))
    templates = []
    for template in catalog.resource_templates:
        if isinstance(template, TextTemplateEntry):
            reader = text_template_reader(template)
        else:
            from app.catalog.http_tool import http_resource_reader

            reader = http_resource_reader(template, upstream(), timeout_seconds=timeout)
        templates.append(
            TemplateSpec(
                uri_template=template.uri_template,
                name=template.name,
                read=reader,
                title=template.title,
                description=template.description,
                mime_type=template.mime_type,
                completions={k: tuple(v) for k, v in template.completions.items()},
            )
        )
    return resources, templates


def _plugin_tool(tool: PluginTool, runtime: CatalogRuntime) -> ToolSpec:
    entry = PythonToolEntry(
        kind="python",
        name=tool.name,
        description=tool.description,
        title=tool.title,
        function=tool.target,
        isolation=tool.isolation,
        timeout_seconds=tool.timeout_seconds,
        max_concurrency=tool.max_concurrency,
        annotations=tool.annotations,
        output_schema=dict(tool.output_schema) if tool.output_schema else None,
    )
    schema = tool.input_schema or schema_from_hints(tool.function)
    handler = python_tool_handler(entry, tool.function, threads=runtime.threads, pool=runtime.pool)
    return _tool_spec(entry, handler, schema, entry.output_schema)


def _plugin_reader(resource: PluginResource, runtime: CatalogRuntime) -> Reader:
    read = resource.read

    async def reader(uri: str, _: Mapping[str, str]) -> ResourceContents:
        if read is None:
            text = resource.text
        elif inspect.iscoroutinefunction(read):
            text = await read()
        else:
            text = await asyncio.get_running_loop().run_in_executor(runtime.threads, read)
        return [{"uri": uri, "mimeType": resource.mime_type, "text": str(text)}]

    return reader


def _plugins(catalog: Catalog, runtime: CatalogRuntime) -> tuple[list[ToolSpec], list[ResourceSpec], list[PromptSpec]]:
    tools, resources, prompts = [], [], []
    try:
        registries = load_plugins(catalog.plugins)
        for registry in registries:
            for tool in registry.tools:
                try:
                    tools.append(_plugin_tool(tool, runtime))
                except ValueError as exc:
                    raise PluginError(f"plugin {registry.plugin!r}: tool {tool.name!r}: {exc}") from None
            for resource in registry.resources:
                resources.append(
                    ResourceSpec(
                        uri=resource.uri,
                        name=resource.name,
                        read=_plugin_reader(resource, runtime),
                        title=resource.title,
                        description=resource.description,
                        mime_type=resource.mime_type,
                    )
                )
            for prompt in registry.prompts:
                entry = PromptEntry(
                    name=prompt.name,
                    title=prompt.title,
                    description=prompt.description,
                    arguments=[PromptArgumentEntry.model_validate(a) for a in prompt.arguments],
                    messages=[
                        PromptMessageEntry.model_validate({"role": role, "text": text})
                        for role, text in prompt.messages
                    ],
                )
                prompts.append(prompt_spec(entry))
    except ValueError as exc:  # PluginError, or a plugin's prompt or tool that does not validate
        raise CatalogError(f"plugins: {exc}") from None
    return tools, resources, prompts


def features_from_catalog(
    catalog: Catalog, *, runtime: CatalogRuntime, timeout_seconds: float, page_size: int, reloadable: bool = False
) -> Features:
    """The features of a catalogue's entries and of the plugins it turns on; ``reloadable`` when the file is
    watched, so that clients are told the lists may change.

    Raises:
        CatalogError: an entry cannot be used (a Python function that does not import, a missing file, a
            plugin that fails); the message names the entry and the field.
    """
    made: list[Upstream] = []

    def upstream() -> Upstream:  # one per load, made for the first http entry
        if not made:
            made.append(runtime.upstream(catalog.allowed_hosts))
        return made[0]

    tools = _tools(catalog, runtime, upstream, timeout_seconds)
    resources, templates = _resources(catalog, upstream, timeout_seconds)
    prompts = [prompt_spec(entry) for entry in catalog.prompts]
    plugin_tools, plugin_resources, plugin_prompts = _plugins(catalog, runtime)
    _no_clash([t.name for t in tools], [t.name for t in plugin_tools], "tool")
    _no_clash([r.uri for r in resources], [r.uri for r in plugin_resources], "resource")
    _no_clash([p.name for p in prompts], [p.name for p in plugin_prompts], "prompt")
    return Features(
        tools=Tools([*tools, *plugin_tools], timeout_seconds=timeout_seconds, page_size=page_size),
        resources=Resources([*resources, *plugin_resources], templates, page_size=page_size),
        prompts=Prompts([*prompts, *plugin_prompts], page_size=page_size),
        instructions=catalog.instructions,
        dynamic=reloadable,
    )


def _no_clash(catalogue: list[str], plugins: list[str], what: str) -> None:
    seen = set(catalogue)
    for name in plugins:
        if name in seen:
            raise CatalogError(f"plugins: {what} {name!r} is declared twice (in the catalogue or by two plugins)")
        seen.add(name)


def load_features(
    catalog: str | None, *, runtime: CatalogRuntime, timeout_seconds: float, page_size: int, reloadable: bool = False
) -> Features:
    """The features named by ``--catalog``: a profile name, a YAML file (``reloadable`` when it is watched), or
    the built-in default.

    Raises:
        CatalogError: the file cannot be loaded.
    """
    if catalog == "conformance":
        from app.catalog.conformance import conformance_features

        return conformance_features(timeout_seconds=timeout_seconds, page_size=page_size)
    path = Path(catalog) if catalog else None
    loaded = load_catalog(path)
    try:
        return features_from_catalog(
            loaded,
            runtime=runtime,
            timeout_seconds=timeout_seconds,
            page_size=page_size,
            reloadable=reloadable and path is not None,
        )
    except CatalogError as exc:
        raise CatalogError(f"the catalogue {path or 'built in'} is invalid: {exc}") from None
