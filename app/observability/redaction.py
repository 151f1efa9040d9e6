"""Credentials never reach the log: every line is scanned, as rendered, for secrets before it leaves the process.

What is removed, whatever logger wrote the line (the server's own, uvicorn, httpx, a plugin or a tool's library),
from its message, its arguments, its fields and its traceback alike:

- the configured secrets, by value: the catalogue's ``secrets`` files (read again when they change, so a rotated
  Secret is covered, and the value it replaced stays covered), the Redis URL's password, the request-state key;
  each also percent-encoded and JSON-escaped, the forms in which a URL or a JSON line carries it;
- what has the shape of a credential: ``Bearer <token>``, the value of an ``Authorization``, ``X-API-Key`` or
  ``api_key`` field or header and of the ``io.erlmcp/apiKey`` meta field, the token of a WebSocket bearer
  subprotocol (``base64url.bearer.authorization.k8s.io.<token>``, which the handshake's request headers carry at
  DEBUG), anything shaped like a JWT, and the password of a URL (``scheme://user:password@host``).

API keys are held only as SHA-256 digests, so a key is removed by where it stands (after ``Bearer``, in an
``X-API-Key`` or ``io.erlmcp/apiKey`` field), never by its value.

The cost: a line is first searched for a few short needles (a substring search in C each, most of them a single
character, e.g. ``J`` of a JWT's ``eyJ`` or ``@`` of a URL's user), and only a line holding one is rewritten. The
access line, written for every request, holds none, so it costs about a microsecond. Values shorter than
:data:`MIN_SECRET_LENGTH` characters are not looked for: they would blank out ordinary words.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import orjson
import structlog

from app.file_stamp import FileStamp, file_stamp

__all__ = ["MIN_SECRET_LENGTH", "REDACTED", "RedactingFormatter", "Redactor", "redactor"]

REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 6
_RECHECK_SECONDS = 1.0  # how often watched secret files are looked at again (at most; only when a line is written)
_KEPT_PER_FILE = 2  # a file's current value and the one it replaced (still in flight in some requests)

# A value stops at white space, a quote, a backslash (of a JSON-escaped quote), or a separator of a query, a header
# list or a mapping; one already redacted is left alone.
_VALUE = r"""(?!\[redacted\])[^\s"'\\,;&}\]]+"""
_QUOTE = r"""(?:\\?["'])?"""
_NAME = r"(?i:proxy-authorization|authorization|x-api-key|api[_-]?key|io\.erlmcp/apikey)"
_SCHEME = r"(?i:(?:bearer|basic|token|digest|apikey)\s+)?"
_SHAPES = (
    # Authorization: Bearer x, X-API-Key: x, api_key=x, "io.erlmcp/apiKey": "x" (the name and separator are kept)
    re.compile(rf"(?P<keep>{_NAME}{_QUOTE}\s*[:=]\s*{_QUOTE}{_SCHEME}){_VALUE}"),
    # Bearer x: RFC 6750's b64token, 12 characters at least (so that "Bearer token" in a sentence stays)
    re.compile(r"(?P<keep>(?i:bearer)\s+)(?!\[redacted\])[A-Za-z0-9._~+/-]{12,}=*"),
    # the WebSocket bearer subprotocol (Kubernetes' convention): base64url.bearer.authorization.k8s.io.<token>,
    # whatever the token's encoding (a malformed one holds the credential all the same); the prefix is kept
    re.compile(rf"(?P<keep>(?i:bearer\.authorization\.k8s\.io\.)){_VALUE}"),
    # a JWT: three base64url parts, the first a JSON object (eyJ)
    re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"),
    # scheme://user:password@host
    re.compile(r"(?P<keep>://[^\s/:@\"'\\]*:)[^\s/@\"'\\]+(?=@)"),
)
# (gate, needle): a line may hold a credential of a shape above only if it holds a needle (its gate, a character
# of it, is looked for first: a search for one character is the cheapest there is). The usual spellings only:
# "Authorization", "authorization", "AUTHORIZATION"; "Bearer", "bearer", "BEARER"; "key", "Key", "KEY".
_SHAPE_NEEDLES = (
    ("J", "eyJ"),
    ("@", "@"),
    ("B", "Bearer"),
    ("B", "BEARER"),
    ("b", "bearer"),
    ("K", "Key"),
    ("K", "KEY"),
    ("k", "key"),
    ("z", "uthorization"),  # also the WebSocket bearer subprotocol's bearer.authorization.k8s.io.
    ("Z", "UTHORIZATION"),
)
# A text this short (the access line's client strings, mostly) is first searched for all the gates at once, one set
# lookup per character, rather than needle by needle; a longer one is searched needle by needle (each in C).
_SHORT = 64
_URL_SAFE = "/:@!$'()*+,;="  # what a URL may keep unencoded in a path or query (RFC 3986), as httpx does
_UNRESERVED_RUN = re.compile(r"[A-Za-z0-9._~-]+")
# A line as most lines are (the access line): a secret's gate is the character of it that is rarest here.
_TYPICAL = (
    '{"httpRequest":{"requestMethod":"POST","requestUrl":"/mcp","status":200,"responseSize":"90","latency":'
    '"0.001933s","remoteIp":"127.0.0.1","userAgent":"python-httpx/0.28.1","protocol":"HTTP/1.1"},"mcp_method":'
    '"tools/call","mcp_outcome":"ok","requestId":"abc-123","logger":"app.middleware","logging.googleapis.com/trace":'
    '"projects/my-project/traces/4bf92f3577b34da6a3ce929d0e0e4736","logging.googleapis.com/spanId":"b395f2c06a24757b",'
    '"logging.googleapis.com/trace_sampled":true,"severity":"INFO","message":"request","time":"2026-11-28T20:44:18Z"}'
)


def _keep(match: re.Match[str]) -> str:
    return (match.groupdict().get("keep") or "") + REDACTED


def _forms(value: str) -> set[str]:
    """The forms in which ``value`` may appear in a line: as is, percent-encoded (fully, and as a URL keeps it)
    and JSON-escaped."""
    forms = {value, quote(value, safe=""), quote(value, safe=_URL_SAFE), orjson.dumps(value).decode()[1:-1]}
    return {form for form in forms if len(form) >= MIN_SECRET_LENGTH}


def _secret_needles(value: str) -> list[tuple[str, str]]:
    """The (gate, needle) pairs that find ``value`` in any of its forms: the longest run of its unreserved
    characters, which every form holds unchanged (else each form)."""
    run = max(_UNRESERVED_RUN.findall(value), key=len, default="")
    needles = [run] if len(run) >= MIN_SECRET_LENGTH else sorted(_forms(value))
    return [(min(needle, key=_TYPICAL.count), needle) for needle in needles]


def _gated(needles: tuple[tuple[str, str], ...]) -> tuple[frozenset[str], tuple[tuple[str, str], ...]]:
    """``needles`` with the set of their gates (one attribute, so that a reader sees the two of one compile)."""
    return frozenset(gate for gate, _ in needles), needles


class Redactor:
    """Removes credentials from text (see the module's description); safe to use from any thread."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self._files: dict[Path, tuple[FileStamp, tuple[str, ...]]] = {}
        self._checked = clock()
        self._needles = _gated(_SHAPE_NEEDLES)
        self._forms: tuple[str, ...] = ()

    def _compile(self) -> None:
        """Make the needles and the forms of the secrets known now (called with the lock held)."""
        values = set(self._values)
        for _, kept in self._files.values():
            values.update(kept)
        values = {value for value in values if len(value) >= MIN_SECRET_LENGTH}
        needles = {pair for value in values for pair in _secret_needles(value)}
        forms = {form for value in values for form in _forms(value)}
        self._forms = tuple(sorted(forms, key=lambda form: (-len(form), form)))  # a longer one may hold a shorter
        self._needles = _gated((*sorted(needles), *_SHAPE_NEEDLES))

    def add(self, *values: str | None) -> None:
        """Look for these values from now on (None and empty values are ignored)."""
        with self._lock:
            before = len(self._values)
            self._values.update(value for value in values if value)
            if len(self._values) != before:
                self._compile()

    def add_url(self, url: str | None) -> None:
        """Look for the password of a URL (``redis://:password@host``), as written and decoded."""
        if not url:
            return
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        if password:
            self.add(password, unquote(password))

    def watch(self, paths: Iterable[Path]) -> None:
        """Look for the contents of these files (trailing white space stripped, as the catalogue reads secrets)
        from now on, read again when they change; files watched before and not named now are forgotten."""
        with self._lock:
            self._files = {path: self._files.get(path, (None, ())) for path in paths}
            self._reread(force=True)

    def _reread(self, *, force: bool = False) -> None:
        """Read the watched files that changed (called with the lock held)."""
        changed = force
        for path, (stamp, kept) in list(self._files.items()):
            now = file_stamp(path)
            if now == stamp and not force:
                continue
            try:
                value = path.read_text(encoding="utf-8").rstrip()
            except (OSError, UnicodeDecodeError):
                value = ""
            if value and value not in kept:
                kept = (value, *kept)[:_KEPT_PER_FILE]
                changed = True
            self._files[path] = (now, kept)
        self._checked = self._clock()
        if changed:
            self._compile()

    def redact(self, text: str) -> str:
        """``text`` with every credential replaced by ``[redacted]`` (a field's name, ``Bearer`` and a URL's user
        are kept, to show what was there)."""
        if self._files and self._clock() - self._checked >= _RECHECK_SECONDS:
            with self._lock:
                if self._clock() - self._checked >= _RECHECK_SECONDS:
                    self._reread()
        gates, needles = self._needles
        if len(text) <= _SHORT and gates.isdisjoint(text):
            return text
        for gate, needle in needles:
            if gate in text and needle in text:
                return self._remove(text)
        return text

    def _remove(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                text = text.replace(form, REDACTED)
        for shape in _SHAPES:
            text = shape.sub(_keep, text)
        return text


class RedactingFormatter(structlog.stdlib.ProcessorFormatter):
    """structlog's formatter for the standard library's records (the root handler's), whose every line, once
    rendered, goes through a :class:`Redactor`: the message, its arguments, the fields and the traceback."""

    def __init__(self, *args: Any, redactor: Redactor, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self._redactor.redact(super().format(record))


_REDACTOR = Redactor()


def redactor() -> Redactor:
    """The process's redactor: the one the log handler uses, which the wiring tells the secrets to."""
    return _REDACTOR
