"""The catalogue file format: the tools, resources and prompts a server offers, declared in YAML.

Keys are written as in MCP (``inputSchema``, ``mimeType``, ``uriTemplate``); every entry names its ``kind``
(a tool with ``builtin:`` and no kind is a built-in, as catalogues before kinds were written). Checks that need
no I/O happen here: names, kinds, JSON Schemas, Jinja2 template syntax, the hosts literal URLs name against the
allow-list. What needs the outside world (importing a Python function, a mounted file) is checked by the
loader, which names the entry and the field either way.

Jinja2 is imported only when a template is checked or compiled. The built-in catalogue's templates are not
checked at start (validated with the context :data:`TRUSTED_TEMPLATES`; a unit test checks them instead), so the
server as the chart ships it never loads Jinja2 before its prompt is first rendered.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from app.features.schemas import SchemaError, check_schema

if TYPE_CHECKING:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = [
    "BUILTIN_TOOLS",
    "BuiltinToolEntry",
    "Catalog",
    "DirectoryResourceEntry",
    "FileResourceEntry",
    "HttpResourceEntry",
    "HttpTemplateEntry",
    "HttpToolEntry",
    "PromptArgumentEntry",
    "PromptEntry",
    "PromptMessageEntry",
    "PythonToolEntry",
    "ResourceEntry",
    "TRUSTED_TEMPLATES",
    "TemplateEntry",
    "TextResourceEntry",
    "TextTemplateEntry",
    "ToolEntry",
    "host_allowed",
    "template_environment",
]

# Built-in tool implementations a catalogue entry may name (see app.features.builtins).
BUILTIN_TOOLS = ("echo", "add", "subtract", "multiply", "divide", "power", "sqrt", "system_info")
NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,128}$"  # tool names, 2025-11-25 rules (SEP-986)
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# Validation context of a catalogue whose templates are known good (the built-in one): their syntax is not checked
# at load, which would import Jinja2 at every start; they are compiled when first rendered.
TRUSTED_TEMPLATES = {"trusted_templates": True}


def template_environment() -> ImmutableSandboxedEnvironment:
    """The Jinja2 environment of every catalogue template: sandboxed (no attribute tricks, no mutation), no
    autoescape (the output is a URL, a header, JSON or prompt text, not HTML), and an undefined variable is an
    error rather than an empty string."""
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


@functools.cache
def _syntax_environment() -> ImmutableSandboxedEnvironment:
    """The environment templates are parsed with to check their syntax; made (and Jinja2 imported) on first use."""
    return template_environment()


def _trusted(info: ValidationInfo) -> bool:
    return isinstance(info.context, dict) and bool(info.context.get("trusted_templates"))


def _check_template(text: str, info: ValidationInfo) -> str:
    """``text`` when it is a valid Jinja2 template (not checked in a trusted catalogue).

    Raises:
        ValueError: a syntax error, with its message and line.
    """
    if _trusted(info):
        return text
    from jinja2 import TemplateSyntaxError

    try:
        _syntax_environment().parse(text)
    except TemplateSyntaxError as exc:
        raise ValueError(f"not a valid Jinja2 template: {exc.message} (line {exc.lineno})") from None
    return text


def _check_optional_template(text: str | None, info: ValidationInfo) -> str | None:
    return None if text is None else _check_template(text, info)


def _check_url(text: str, info: ValidationInfo) -> str:
    from app.catalog.escaping import check_url_start  # with Jinja2: only http entries have URLs

    return check_url_start(_check_template(text, info))


def _check_schema(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    if schema is None:
        return None
    try:
        check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"not a valid JSON Schema (2020-12): {exc}") from None
    if schema.get("type") != "object":
        raise ValueError('must describe an object ("type": "object"), as MCP requires')
    return schema


def host_allowed(host: str, port: int | None, allowed: tuple[str, ...]) -> bool:
    """Whether ``host`` (and ``port``) is on the allow-list: ``api.example.com``, ``api.example.com:8443`` or
    ``*.example.com`` (any subdomain, not the domain itself). Host names compare without case."""
    host = host.lower().rstrip(".")
    for entry in allowed:
        pattern, _, wanted_port = entry.lower().partition(":")
        if wanted_port and (port is None or str(port) != wanted_port):
            continue
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and host != pattern[2:]:
                return True
        elif host == pattern:
            return True
    return False


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True)


class _Tool(_Entry):
    name: str = Field(pattern=NAME_PATTERN)
    title: str | None = None
    description: str = Field(min_length=1)
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    annotations: dict[str, Any] | None = None
    # Seconds one call may run; the server's --tool-timeout-seconds caps it.
    timeout_seconds: float | None = Field(None, gt=0)
    # Calls of this tool running at once; more wait for a free slot (within their deadline).
    max_concurrency: int | None = Field(None, ge=1)

    _schemas = field_validator("input_schema", "output_schema")(_check_schema)


class BuiltinToolEntry(_Tool):
    """A tool implemented in erlmcp itself (``echo``, ``add``, ...)."""

    kind: Literal["builtin"] = "builtin"
    builtin: Literal["echo", "add", "subtract", "multiply", "divide", "power", "sqrt", "system_info"]


class HttpToolEntry(_Tool):
    """A tool that calls an upstream HTTP API. ``url``, header values and ``body`` are Jinja2 templates over the
    call's arguments (``{{ city }}``) and the secrets (``{{ secrets.token }}``); ``secrets`` maps a name to a
    mounted file whose content is read at each call, so a rotated Secret needs no restart. Values in the URL and
    in a JSON or form body are escaped for where they stand (app.catalog.escaping): an argument fills the request,
    it never changes its shape. The URL starts with ``http(s)://`` or ``{{ secrets.NAME }}``."""

    kind: Literal["http"]
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: str = Field(min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    secrets: dict[str, Path] = Field(default_factory=dict)

    _url = field_validator("url")(_check_url)
    _body = field_validator("body")(_check_optional_template)

    @field_validator("headers")
    @classmethod
    def _header_templates(cls, headers: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        for value in headers.values():
            _check_template(value, info)
        return headers

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, secrets: dict[str, Path]) -> dict[str, Path]:
        for name, path in secrets.items():
            if not name.isidentifier():
                raise ValueError(f"secret name {name!r} must be an identifier (it is used as secrets.{name})")
            if not path.is_absolute():
                raise ValueError(f"secret {name!r}: {str(path)!r} must be an absolute path to a mounted file")
        return secrets

    @field_validator("method", mode="before")
    @classmethod
    def _method_upper(cls, method: object) -> object:
        return method.upper() if isinstance(method, str) else method


class PythonToolEntry(_Tool):
    """A tool implemented by a Python function ``module:function`` (sync or async). Its input schema comes from
    the function's type hints unless ``inputSchema`` is given. ``isolation: process`` runs each call in a worker
    process with a memory limit (a crash or runaway allocation costs that call only); ``thread`` runs sync
    functions in a thread (async ones run on the event loop)."""

    kind: Literal["python"]
    function: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$")
    isolation: Literal["thread", "process"] = "thread"


def _tool_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return str(value.get("kind") or ("builtin" if "builtin" in value else ""))
    return getattr(value, "kind", None)


ToolEntry = Annotated[
    Annotated[BuiltinToolEntry, Tag("builtin")]
    | Annotated[HttpToolEntry, Tag("http")]
    | Annotated[PythonToolEntry, Tag("python")],
    Discriminator(
        _tool_kind,
        custom_error_type="unknown_kind",
        custom_error_message="kind must be builtin, http or python (a built-in may give just builtin:)",
    ),
]


class _Resource(_Entry):
    name: str = Field(min_length=1)
    title: str | None = None
    description: str | None = None
    mime_type: str | None = None


class TextResourceEntry(_Resource):
    """A resource whose text is written in the catalogue."""

    kind: Literal["text"]
    uri: str = Field(min_length=1)
    text: str


class FileResourceEntry(_Resource):
    """One mounted file (read at each resources/read, so an updated ConfigMap shows)."""

    kind: Literal["file"]
    uri: str = Field(min_length=1)
    path: Path

    @field_validator("path")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        if not path.is_absolute():
            raise ValueError(f"{str(path)!r} must be an absolute path")
        return path


class DirectoryResourceEntry(_Resource):
    """Every file under a mounted directory, as ``uriPrefix`` + its relative path (hidden files skipped)."""

    kind: Literal["directory"]
    uri_prefix: str = Field(min_length=1)
    path: Path

    _absolute = field_validator("path")(FileResourceEntry._absolute.__func__)  # type: ignore[attr-defined]


class HttpResourceEntry(_Resource):
    """A resource fetched from an upstream URL at each read (the host must be on ``allowedHosts``)."""

    kind: Literal["http"]
    uri: str = Field(min_length=1)
    url: str = Field(min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    secrets: dict[str, Path] = Field(default_factory=dict)

    _secrets = field_validator("secrets")(HttpToolEntry._secret_names.__func__)  # type: ignore[attr-defined]
    _url = field_validator("url")(_check_url)


ResourceEntry = Annotated[
    TextResourceEntry | FileResourceEntry | DirectoryResourceEntry | HttpResourceEntry,
    Field(discriminator="kind"),
]


class _Template(_Entry):
    uri_template: str = Field(min_length=1)
    name: str = Field(min_length=1)
    title: str | None = None
    description: str | None = None
    mime_type: str | None = None
    # Values completion/complete offers for each variable.
    completions: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("uri_template")
    @classmethod
    def _has_variables(cls, template: str) -> str:
        if not re.search(r"\{[A-Za-z0-9_]+\}", template):
            raise ValueError(f"{template!r} has no {{variable}}; a fixed URI is a resource, not a template")
        return template

    @model_validator(mode="after")
    def _completions_name_variables(self) -> _Template:
        variables = set(re.findall(r"\{([A-Za-z0-9_]+)\}", self.uri_template))
        unknown = sorted(set(self.completions) - variables)
        if unknown:
            raise ValueError(f"completions: {unknown[0]!r} is not a variable of {self.uri_template!r}")
        return self


class TextTemplateEntry(_Template):
    """Resources made from a Jinja2 ``text`` over the URI's variables."""

    kind: Literal["text"]
    text: str

    _text = field_validator("text")(_check_template)


class HttpTemplateEntry(_Template):
    """Resources fetched from a Jinja2 ``url`` over the URI's variables."""

    kind: Literal["http"]
    url: str = Field(min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    secrets: dict[str, Path] = Field(default_factory=dict)

    _secrets = field_validator("secrets")(HttpToolEntry._secret_names.__func__)  # type: ignore[attr-defined]
    _url = field_validator("url")(_check_url)


TemplateEntry = Annotated[TextTemplateEntry | HttpTemplateEntry, Field(discriminator="kind")]


class PromptArgumentEntry(_Entry):
    """An argument of a prompt; ``values`` are what completion offers (any value is accepted)."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    description: str | None = None
    required: bool = False
    values: list[str] = Field(default_factory=list)


class PromptMessageEntry(_Entry):
    """One message of a prompt: its role and a Jinja2 template over the arguments."""

    role: Literal["user", "assistant"] = "user"
    text: str = Field(min_length=1)

    _text = field_validator("text")(_check_template)


class PromptEntry(_Entry):
    """A prompt template."""

    name: str = Field(pattern=NAME_PATTERN)
    title: str | None = None
    description: str | None = None
    arguments: list[PromptArgumentEntry] = Field(default_factory=list)
    messages: list[PromptMessageEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _arguments_unique(self) -> PromptEntry:
        names = [argument.name for argument in self.arguments]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"argument {repeated[0]!r} is declared more than once")
        return self


def _unique(values: list[str], what: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{what} {value!r} appears more than once")
        seen.add(value)


class Catalog(_Entry):
    """Everything the server serves."""

    # Shown to clients at initialize: how to use this server.
    instructions: str | None = None
    # Upstream hosts http tools and resources may call: "api.example.com", "api.example.com:8443", "*.example.com".
    allowed_hosts: tuple[str, ...] = ()
    # Installed plugins (entry points of the group erlmcp.plugins) whose tools, resources and prompts are served.
    plugins: tuple[str, ...] = ()
    tools: tuple[ToolEntry, ...] = ()
    resources: tuple[ResourceEntry, ...] = ()
    resource_templates: tuple[TemplateEntry, ...] = ()
    prompts: tuple[PromptEntry, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> Catalog:
        _unique([tool.name for tool in self.tools], "tool name")
        _unique([prompt.name for prompt in self.prompts], "prompt name")
        _unique([r.uri for r in self.resources if not isinstance(r, DirectoryResourceEntry)], "resource uri")
        for index, tool in enumerate(self.tools):
            if isinstance(tool, HttpToolEntry):
                self._literal_host_allowed(tool.url, f"tools[{index}] {tool.name!r}: url")
        for index, resource in enumerate(self.resources):
            if isinstance(resource, HttpResourceEntry):
                self._literal_host_allowed(resource.url, f"resources[{index}] {resource.name!r}: url")
        for index, template in enumerate(self.resource_templates):
            if isinstance(template, HttpTemplateEntry):
                self._literal_host_allowed(template.url, f"resourceTemplates[{index}] {template.name!r}: url")
        return self

    def _literal_host_allowed(self, url: str, where: str) -> None:
        """A URL whose scheme and host are written out (not templated) must name an allowed host: found now,
        not at the first call."""
        head = url.split("{", 1)[0]
        parts = urlsplit(head)
        if "{" in url and "/" not in head.partition("://")[2]:
            return  # the host itself is templated: checked at each call
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"{where}: {url!r} must be an http or https URL")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)  # the port the call will use
        except ValueError:
            raise ValueError(f"{where}: {url!r} has an invalid port") from None
        if not host_allowed(parts.hostname, port, self.allowed_hosts):
            raise ValueError(f"{where}: host {parts.hostname!r} is not in allowedHosts {list(self.allowed_hosts)}")

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        for host in hosts:
            if not host or "/" in host or host.count("*") > (1 if host.startswith("*.") else 0):
                raise ValueError(f"{host!r} must be a host name, host:port, or *.domain")
        return hosts


def relative_uri_path(prefix: str, uri: str) -> PurePosixPath | None:
    """The relative path a directory resource's URI names under its prefix, or None when it leaves it."""
    if not uri.startswith(prefix):
        return None
    relative = PurePosixPath(uri[len(prefix) :])
    if relative.is_absolute() or not relative.parts or any(part in {"..", ""} for part in relative.parts):
        return None
    return relative
