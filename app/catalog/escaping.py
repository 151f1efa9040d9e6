"""Values in ``http`` entries' templates, escaped for where they land: a caller's arguments (and a resource URI's
variables) fill the request the operator wrote, and never change its shape.

Every ``{{ expression }}`` of a URL or body template is rewritten, when the template is compiled, as
``{{ (expression) | <escape>("<where>", "<name>") }}``, where ``where`` follows from the literal text before it:

- **URL** (``url``): in the *host* (after ``://``) a value must be a host name (letters, digits, ``.-_~:[]``); in
  the *path* a value is one segment: everything but ``A-Z a-z 0-9 - . _ ~`` is percent-encoded (``/``, ``?``,
  ``#``, ``%``, ``;`` included), and a value that is empty, ``.`` or ``..`` is refused; in the *query* and the
  *fragment* a value is one value (``&``, ``=``, ``#`` encoded). What ``urlencode`` made is not encoded twice (in
  a path its ``/`` still becomes ``%2F``). An expression that starts the URL (only ``{{ secrets.NAME }}`` may,
  see :func:`check_url_start`) is the operator's base URL and is used as it is.
- **JSON body**: a value outside a string is written as JSON (``"Ada"``, ``3``, ``true``, ``null``): write
  ``{"q": {{ q }}}``; a value inside a JSON string is that string's content, escaped (``{"q": "{{ q }}"}``
  works too). What ``tojson`` or ``safe`` made is used as it is. The whole body must then be valid JSON.
- **Form body** (``Content-Type: application/x-www-form-urlencoded``): every value is one form value.

Any other body (text, XML) is rendered as written: its values are the operator's to escape.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal
from urllib.parse import quote, unquote

import orjson
from jinja2 import Environment, Undefined
from jinja2.ext import Extension
from jinja2.filters import do_urlencode
from jinja2.lexer import Token, TokenStream
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

__all__ = [
    "BodyKind",
    "UnsafeValue",
    "body_environment",
    "body_kind",
    "check_url_start",
    "url_environment",
]

BodyKind = Literal["json", "form", "text"]

_ESCAPE = "erlmcp_escape"  # the filter every expression is passed through
_HOST_VALUE = re.compile(r"[A-Za-z0-9.\-_~:\[\]]+")
_URL_START = re.compile(r"(?i:https?://)|\{\{-?\s*secrets\.[A-Za-z_][A-Za-z0-9_]*\s*-?\}\}")
_FORM = "application/x-www-form-urlencoded"


class UnsafeValue(Exception):
    """A value that would change the shape of the request; the message names it and says why."""


class _UrlEncoded(str):
    """What the ``urlencode`` filter made: already percent-encoded (but for ``/``)."""

    __slots__ = ()


def _urlencode(value: Any) -> _UrlEncoded:
    return _UrlEncoded(do_urlencode(value))


def _text(value: Any) -> str:
    return str(value)  # an undefined value raises here, as Jinja's own output would


def _shown(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:60] + "…")


# -- URLs ----------------------------------------------------------------------------------------------------------

_URL_NEXT = {"authority": "/?#", "path": "?#", "query": "#", "fragment": ""}
_URL_ENTERS = {"/": "path", "?": "query", "#": "fragment"}


def _url_advance(where: str, text: str) -> str:
    """Where the URL is after the literal ``text``."""
    index = 0
    while index < len(text):
        if where == "start":
            found = text.find("://", index)
            if found < 0:
                return where
            where, index = "authority", found + 3
            continue
        char = text[index]
        if char in _URL_NEXT[where]:
            where = _URL_ENTERS[char]
        index += 1
    return where


def _url_value(value: Any, where: str, name: str) -> str:
    if isinstance(value, Undefined):
        _text(value)
    if where == "start":  # the operator's base URL (a secret): the model allows nothing else here
        return _text(value)
    encoded = isinstance(value, _UrlEncoded)
    text = _text(value)
    if where == "authority":
        if not _HOST_VALUE.fullmatch(text):
            raise UnsafeValue(f"{name} is {_shown(text)}: a value in the URL's host must be a host name")
        return text
    if where == "path":
        plain = unquote(text) if encoded else text
        if plain in {"", ".", ".."}:
            what = "empty" if not plain else repr(plain)
            raise UnsafeValue(f"{name} is {what}: a value in the URL's path is one segment, never empty, '.' or '..'")
        return text.replace("/", "%2F") if encoded else quote(text, safe="")
    return text if encoded else quote(text, safe="")  # a query or fragment value


# -- bodies --------------------------------------------------------------------------------------------------------


def _json_advance(where: str, text: str) -> str:
    """Whether the JSON body is inside a string (``string``) or not (``value``) after the literal ``text``."""
    escaped = False
    for char in text:
        if where == "string":
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                where = "value"
        elif char == '"':
            where = "string"
    return where


def _json_value(value: Any, where: str, name: str) -> str:
    if isinstance(value, Undefined):
        _text(value)
    if isinstance(value, Markup):  # tojson's output, or a value the operator marked safe
        return str(value)
    if where == "string":
        return orjson.dumps(value if isinstance(value, str) else _text(value)).decode()[1:-1]
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        raise UnsafeValue(f"{name} cannot be written as JSON (it is {type(value).__name__})") from None


def _form_advance(where: str, text: str) -> str:
    return where


def _form_value(value: Any, where: str, name: str) -> str:
    if isinstance(value, Undefined):
        _text(value)
    return value if isinstance(value, _UrlEncoded) else quote(_text(value), safe="")


# -- the rewriting -------------------------------------------------------------------------------------------------


def _label(tokens: list[Token]) -> str:
    """How a message names an expression: ``city``, ``arguments.city``; ``a value`` for anything else."""
    if not tokens or tokens[0].type != "name":
        return "a value"
    parts = [str(tokens[0].value)]
    index = 1
    while index + 1 < len(tokens) and tokens[index].type == "dot" and tokens[index + 1].type == "name":
        parts.append(str(tokens[index + 1].value))
        index += 2
    return ".".join(parts)


class _Escaping(Extension):
    """Passes every ``{{ expression }}`` through the escape filter, told where the expression stands."""

    start = "start"

    @staticmethod
    def advance(where: str, text: str) -> str:
        raise NotImplementedError

    @staticmethod
    def after_value(where: str) -> str:
        return where

    def filter_stream(self, stream: TokenStream) -> Iterator[Token]:
        where = self.start
        expression: list[Token] | None = None
        for token in stream:
            if expression is not None:
                if token.type != "variable_end":
                    expression.append(token)
                    continue
                line = token.lineno
                yield Token(line, "lparen", "(")
                yield from expression
                yield from (
                    Token(line, "rparen", ")"),
                    Token(line, "pipe", "|"),
                    Token(line, "name", _ESCAPE),
                    Token(line, "lparen", "("),
                    Token(line, "string", where),
                    Token(line, "comma", ","),
                    Token(line, "string", _label(expression)),
                    Token(line, "rparen", ")"),
                    token,
                )
                where, expression = self.after_value(where), None
                continue
            if token.type == "variable_begin":
                expression = []
            elif token.type == "data":
                where = self.advance(where, str(token.value))
            yield token


class _UrlEscaping(_Escaping):
    advance = staticmethod(_url_advance)

    @staticmethod
    def after_value(where: str) -> str:
        return "path" if where == "start" else where  # after the base URL comes its path


class _JsonEscaping(_Escaping):
    start = "value"
    advance = staticmethod(_json_advance)


class _FormEscaping(_Escaping):
    start = "value"
    advance = staticmethod(_form_advance)


def _environment(
    base: Callable[[], ImmutableSandboxedEnvironment],
    extension: type[_Escaping],
    escape: Callable[[Any, str, str], str],
) -> ImmutableSandboxedEnvironment:
    environment = base()
    environment.add_extension(extension)
    environment.filters[_ESCAPE] = escape
    environment.filters["urlencode"] = _urlencode
    return environment


def url_environment(base: Callable[[], ImmutableSandboxedEnvironment]) -> Environment:
    """An environment (made by ``base``) whose templates escape values for where they stand in a URL."""
    return _environment(base, _UrlEscaping, _url_value)


def body_environment(base: Callable[[], ImmutableSandboxedEnvironment], kind: BodyKind) -> Environment:
    """An environment whose templates escape values for a body of ``kind`` (``text``: not at all)."""
    if kind == "json":
        return _environment(base, _JsonEscaping, _json_value)
    if kind == "form":
        return _environment(base, _FormEscaping, _form_value)
    return base()


def body_kind(body: str, headers: Mapping[str, str]) -> BodyKind:
    """What a body template writes: JSON when it starts as a JSON object or array (``{"q": ...``, ``[``) or the
    entry's ``Content-Type`` is JSON; a form when its ``Content-Type`` says so; text otherwise."""
    declared = next((value for name, value in headers.items() if name.lower() == "content-type"), "")
    media = declared.partition(";")[0].strip().lower()
    if media == _FORM:
        return "form"
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return "json"
    if media:
        return "text"
    start = body.lstrip()
    if start.startswith("[") or (start.startswith("{") and not start.startswith(("{{", "{%", "{#"))):
        return "json"
    return "text"


def check_url_start(url: str) -> str:
    """A URL template must start with ``http://``, ``https://`` or ``{{ secrets.NAME }}`` (a base URL the operator
    keeps in a secret): what comes before the host is never the caller's.

    Raises:
        ValueError: it starts otherwise.
    """
    if not _URL_START.match(url):
        raise ValueError(
            f"{url!r} must start with http:// or https:// (or {{{{ secrets.NAME }}}}, a base URL kept in a secret): "
            "a caller's argument may fill the host, the path or the query, never the start of the URL"
        )
    return url
