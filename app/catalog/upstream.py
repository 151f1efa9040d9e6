"""Calls from ``http`` tools and resources to the upstream APIs a catalogue names.

One :class:`Upstream` serves a whole catalogue: it renders the Jinja2 templates of URLs, headers and bodies in
the sandbox, each value escaped for where it stands (app.catalog.escaping), refuses a URL with a ``.`` or ``..``
path segment, reads mounted secrets at each call (a rotated Secret needs no restart), and makes the request
only to a host on ``allowedHosts``. Redirects are never followed (a 3xx could lead off the allow-list), and an
answer larger than the size cap is refused while it streams in. Every failure is an :class:`UpstreamError`
whose message is meant for the caller: it names hosts, paths, statuses and template problems, never a header
or secret value.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

import httpx
import jinja2
import structlog
from jinja2.exceptions import SecurityError

from app import __version__
from app.catalog.escaping import UnsafeValue, body_environment, url_environment
from app.catalog.model import host_allowed, template_environment

__all__ = [
    "MAX_RESPONSE_BYTES",
    "Escaping",
    "RefusedValue",
    "Upstream",
    "UpstreamError",
    "UpstreamResponse",
    "is_json",
    "is_textual",
    "redacted",
]

log = structlog.get_logger(__name__)

MAX_RESPONSE_BYTES = 10 * 1024 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # an RFC 9110 token
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # what may not appear in a header value (tab may)
_TEXT_TYPES = frozenset(
    {
        "application/json",
        "application/xml",
        "application/yaml",
        "application/x-yaml",
        "application/toml",
        "application/javascript",
        "application/ecmascript",
        "application/x-ndjson",
        "application/graphql",
        "application/x-www-form-urlencoded",
        "application/sql",
    }
)
_TEXT_SUFFIXES = ("+json", "+xml", "+yaml")


# How a template's values are escaped (app.catalog.escaping): for a URL, a JSON or form body, or not at all.
Escaping = Literal["url", "json", "form", "text"]


class UpstreamError(Exception):
    """An upstream call that could not be made, or whose answer cannot be used; the message is safe to show."""


class RefusedValue(UpstreamError):
    """A caller's value that would change the shape of the request (a path segment ``..``, a host with a path);
    nothing was sent."""


def is_json(media_type: str) -> bool:
    """Whether a media type (without parameters) is JSON: ``application/json`` or ``application/*+json``."""
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


def is_textual(media_type: str) -> bool:
    """Whether a media type (without parameters) is text: ``text/*``, JSON, XML, YAML and the like."""
    return media_type.startswith("text/") or media_type in _TEXT_TYPES or media_type.endswith(_TEXT_SUFFIXES)


def redacted(text: str, secrets: Mapping[str, str]) -> str:
    """``text`` with every secret value (as written and percent-encoded) replaced by ``[secrets.NAME]``: an
    upstream may echo a token back in an error body."""
    for name, value in sorted(secrets.items(), key=lambda item: -len(item[1])):
        for form in dict.fromkeys((value, quote(value, safe=""))):
            if form:
                text = text.replace(form, f"[secrets.{name}]")
    return text


def _size(count: int) -> str:
    return f"{count / (1024 * 1024):g} MiB" if count >= 1024 * 1024 else f"{count} bytes"


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    """An upstream's answer, read in full (never a redirect)."""

    status: int
    reason: str
    # The Content-Type without parameters, lower case; empty when the upstream sent none.
    media_type: str
    charset: str | None
    content: bytes

    @property
    def ok(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self.status < 300

    @property
    def status_line(self) -> str:
        """``500 Internal Server Error``."""
        return f"{self.status} {self.reason}".rstrip()

    @property
    def text(self) -> str:
        """The body decoded with its charset (UTF-8 when it names none or an unknown one); bad bytes replaced."""
        try:
            return self.content.decode(self.charset or "utf-8", errors="replace")
        except LookupError:
            return self.content.decode("utf-8", errors="replace")

    def snippet(self, limit: int = 200) -> str:
        """The start of the body on one line, for error messages."""
        line = " ".join(self.text.split())
        return line if len(line) <= limit else line[:limit] + "…"


class Upstream:
    """The HTTP client of a catalogue's ``http`` entries, limited to ``allowed_hosts``.

    ``client`` is used as given (its owner closes it); without one, a client is made at the first request,
    inside the running event loop, and :meth:`aclose` closes it. Answers over ``max_response_bytes`` are refused.
    """

    def __init__(
        self,
        allowed_hosts: tuple[str, ...],
        *,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.allowed_hosts = tuple(allowed_hosts)
        self.max_response_bytes = max_response_bytes
        self._client = client
        self._owns_client = client is None
        self._environments: dict[Escaping, jinja2.Environment] = {
            "url": url_environment(template_environment),
            "json": body_environment(template_environment, "json"),
            "form": body_environment(template_environment, "form"),
            "text": template_environment(),
        }
        self._templates: dict[tuple[Escaping, str], jinja2.Template] = {}

    def render(
        self, template: str, variables: Mapping[str, Any], *, field: str = "template", escaping: Escaping = "text"
    ) -> str:
        """``template`` rendered in the sandbox, each value escaped for where it stands (``escaping``: in a URL, a
        JSON or form body; ``text``: as it is); ``field`` (``url``, ``headers.Authorization``) names it in errors.

        Raises:
            RefusedValue: a value that would change the request's shape.
            UpstreamError: an undefined variable, something the sandbox refuses, or any other failure.
        """
        try:
            compiled = self._templates.get((escaping, template))
            if compiled is None:
                compiled = self._environments[escaping].from_string(template)
                self._templates[escaping, template] = compiled
            return compiled.render(variables)
        except UnsafeValue as exc:
            raise RefusedValue(f"{field}: {exc}") from None
        except SecurityError as exc:
            raise UpstreamError(f"{field}: the template does something the sandbox refuses: {exc}") from None
        except jinja2.UndefinedError as exc:
            raise UpstreamError(f"{field}: the template uses an undefined value: {exc}") from None
        except jinja2.TemplateError as exc:
            raise UpstreamError(f"{field}: the template cannot be rendered: {exc}") from None
        except Exception as exc:  # a filter or operator failing on the values it was given
            raise UpstreamError(f"{field}: the template failed: {type(exc).__name__}: {exc}") from None

    @staticmethod
    def secrets(secrets: Mapping[str, Path]) -> dict[str, str]:
        """Each secret's file content, read now, trailing whitespace (the newline) stripped.

        Raises:
            UpstreamError: a file is missing or unreadable (the message names the path, never a value).
        """
        values: dict[str, str] = {}
        for name, path in secrets.items():
            try:
                values[name] = path.read_text(encoding="utf-8").rstrip()
            except UnicodeDecodeError:
                raise UpstreamError(f"secret {name!r} in {path} is not UTF-8 text") from None
            except OSError as exc:
                raise UpstreamError(f"secret {name!r} cannot be read from {path}: {exc.strerror or exc}") from None
        return values

    def _checked_url(self, url: str) -> httpx.URL:
        try:
            path = urlsplit(url).path
            parsed = httpx.URL(url)
        except (ValueError, httpx.InvalidURL) as exc:
            raise UpstreamError(f"url: not a valid URL: {exc}") from None
        if any(unquote(segment) in {".", ".."} for segment in path.split("/")):
            raise UpstreamError(f"url: the path {path!r} has a '.' or '..' segment; refused")
        if parsed.scheme not in _DEFAULT_PORTS:
            raise UpstreamError(f"url: the scheme must be http or https, not {parsed.scheme!r}")
        if not parsed.host:
            raise UpstreamError("url: the URL names no host")
        port = parsed.port if parsed.port is not None else _DEFAULT_PORTS[parsed.scheme]
        if not host_allowed(parsed.host, port, self.allowed_hosts):
            ported = parsed.port is not None or any(":" in allowed for allowed in self.allowed_hosts)
            shown = f"{parsed.host}:{port}" if ported else parsed.host
            raise UpstreamError(f"host {shown!r} is not in allowedHosts {list(self.allowed_hosts)}")
        return parsed

    @staticmethod
    def _checked_headers(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
        checked: list[tuple[bytes, bytes]] = []
        for name, value in headers.items():
            if not _HEADER_NAME.match(name):
                raise UpstreamError(f"header name {name!r} is not a valid HTTP header name")
            if _CONTROL.search(value):
                raise UpstreamError(f"header {name!r} renders to a value with a control character (a line break?)")
            checked.append((name.encode(), value.encode()))
        return checked

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            asyncio.get_running_loop()  # made where it is used: its connections belong to this loop
            self._client = httpx.AsyncClient(follow_redirects=False, headers={"User-Agent": f"erlmcp/{__version__}"})
        return self._client

    async def request(
        self, *, method: str, url: str, headers: Mapping[str, str], body: str | bytes | None, timeout: float
    ) -> UpstreamResponse:
        """Send one request to an allowed host and read the whole answer within ``timeout`` seconds.

        Raises:
            UpstreamError: the URL or a header is refused, the upstream cannot be reached, does not answer in
                time, redirects, or answers more than the size cap.
        """
        target = self._checked_url(url)
        checked_headers = self._checked_headers(headers)
        host = f"[{target.host}]" if ":" in target.host else target.host
        where = f"{host}:{target.port or _DEFAULT_PORTS[target.scheme]}"
        content = body.encode() if isinstance(body, str) else body
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                answer = await self._send(method, target, checked_headers, content, timeout, where)
        except (TimeoutError, httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout):
            log.warning("upstream timed out", method=method, host=where, timeout_seconds=timeout)
            raise UpstreamError(f"the upstream did not answer within {timeout:g} s") from None
        except httpx.ConnectTimeout:
            log.warning("upstream unreachable", method=method, host=where, error="ConnectTimeout")
            raise UpstreamError(f"cannot reach the upstream {where} within {timeout:g} s") from None
        except (httpx.ConnectError, httpx.UnsupportedProtocol) as exc:
            log.warning("upstream unreachable", method=method, host=where, error=type(exc).__name__)
            raise UpstreamError(f"cannot reach the upstream {where}: {_describe(exc)}") from None
        except httpx.HTTPError as exc:
            log.warning("upstream call failed", method=method, host=where, error=type(exc).__name__)
            raise UpstreamError(f"the call to the upstream {where} failed: {_describe(exc)}") from None
        log.info(
            "upstream call",
            method=method,
            host=where,
            status=answer.status,
            bytes=len(answer.content),
            seconds=round(time.monotonic() - started, 3),
        )
        return answer

    async def _send(
        self,
        method: str,
        target: httpx.URL,
        headers: list[tuple[bytes, bytes]],
        content: bytes | None,
        timeout: float,
        where: str,
    ) -> UpstreamResponse:
        client = self._http()
        request = client.build_request(method, target, headers=headers, content=content, timeout=httpx.Timeout(timeout))
        response = await client.send(request, stream=True)
        try:
            reason = response.reason_phrase or _reason(response.status_code)
            if 300 <= response.status_code < 400:
                raise UpstreamError(_redirect_message(response, reason, target))
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > self.max_response_bytes:
                raise UpstreamError(
                    f"the upstream {where} answered {_size(int(declared))}, more than the "
                    f"{_size(self.max_response_bytes)} limit; refused"
                )
            chunks: list[bytes] = []
            received = 0
            async for chunk in response.aiter_bytes():
                received += len(chunk)
                if received > self.max_response_bytes:
                    raise UpstreamError(
                        f"the upstream {where} answered more than the {_size(self.max_response_bytes)} limit; refused"
                    )
                chunks.append(chunk)
        finally:
            await response.aclose()
        media_type = response.headers.get("Content-Type", "").partition(";")[0].strip().lower()
        return UpstreamResponse(response.status_code, reason, media_type, response.charset_encoding, b"".join(chunks))

    async def aclose(self) -> None:
        """Close the client this object made (a client passed in is left to its owner)."""
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _redirect_message(response: httpx.Response, reason: str, target: httpx.URL) -> str:
    status = f"{response.status_code} {reason}".rstrip()
    location = response.headers.get("Location")
    if not location:
        return f"the upstream answered {status} (a redirect without a Location); redirects are not followed"
    try:
        host = target.join(location).host
    except httpx.InvalidURL:
        return f"the upstream answered {status} to an invalid Location; redirects are not followed"
    return f"the upstream answered {status}, a redirect to host {host!r}; redirects are not followed"
