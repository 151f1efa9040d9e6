"""The API key file: named keys with the tools they may use, kept in memory only as digests.

One key per line, ``#`` starts a comment::

    ci-bot   tools:echo,tools:add   9b7c0d...                          # NAME SCOPES KEY
    admin    *                      sha256:4f53...                     # the key's SHA-256 digest instead of the key
    agents   *                      sha256:9e1a...   rate=50,burst=200  # NAME SCOPES KEY LIMITS
    s3cr3t-plain-key                                                   # a key alone: named key-<line>, every tool

Scopes: ``*`` or ``tools:*`` (every tool), ``tools:NAME`` (one tool). Limits (optional, one field without
spaces): ``rate=``, ``burst=``, ``initialize=``, ``sessions=`` (see :mod:`app.security.limits`); what a key
leaves out keeps the server's default. The file is read again when it changes (a rotated Kubernetes Secret), so
keys are added and revoked, and their limits changed, without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from app.security.limits import NO_OVERRIDES, LimitOverrides, parse_limits

__all__ = [
    "ALL_TOOLS",
    "ApiKey",
    "KeyFileError",
    "KeySet",
    "allows_tool",
    "digest_of",
    "parse_key_file",
    "read_key_file",
]

ALL_TOOLS = frozenset({"*"})
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_NAME = re.compile(r"^[A-Za-z0-9_.@\-]{1,64}$")
_SCOPE = re.compile(r"^(\*|tools:\*|tools:[A-Za-z0-9_.\-]{1,128})$")


class KeyFileError(ValueError):
    """The key file cannot be used; the message names the line."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One accepted key: who it is, what it may use, the SHA-256 of the key (never the key), and the limits it
    sets instead of the server's defaults."""

    name: str
    scopes: frozenset[str]
    digest: str  # hex
    limits: LimitOverrides = NO_OVERRIDES
    principal: str = field(init=False, repr=False, compare=False)  # key:NAME, who the key speaks for

    def __post_init__(self) -> None:
        object.__setattr__(self, "principal", f"key:{self.name}")  # made once, not at every request


@dataclass(frozen=True, slots=True)
class KeySet:
    """One version of the accepted keys, as the server holds them: by the digest of the key (what a request is
    matched with) and by name (what a connection admitted earlier is checked against). ``generation`` numbers the
    versions: a caller admitted under this one holds a key that is in it, without looking it up again."""

    keys: tuple[ApiKey, ...]
    generation: int
    by_digest: Mapping[str, ApiKey]
    by_name: Mapping[str, ApiKey]

    @classmethod
    def of(cls, keys: Iterable[ApiKey], generation: int) -> KeySet:
        """The key set of ``keys`` (should two lines hold the same key, the later one is the one it matches)."""
        held = tuple(keys)
        return cls(held, generation, {key.digest: key for key in held}, {key.name: key for key in held})

    def match(self, presented: str) -> ApiKey | None:
        """The key whose SHA-256 is that of the ``presented`` one, or None.

        A dict lookup, not a constant-time comparison with each key: what it compares is the digest of what the
        client sent, never anything it chose directly, so how long the lookup takes tells it at most how a hash
        of its own guess relates to a stored digest, which says nothing about a key (finding a key from its
        digest is finding a SHA-256 preimage). The dict's hash is keyed per process, so which slot a digest
        lands in tells it nothing either."""
        return self.by_digest.get(digest_of(presented))

    def holds(self, name: str, digest: str) -> bool:
        """Whether the key named ``name`` is here with this digest (not taken out, not given another secret)."""
        key = self.by_name.get(name)
        return key is not None and hmac.compare_digest(key.digest.encode(), digest.encode())


def digest_of(key: str) -> str:
    """The SHA-256 of a key, in hex: what the file may hold as ``sha256:HEX`` and what is kept in memory."""
    return hashlib.sha256(key.encode()).hexdigest()


def allows_tool(scopes: frozenset[str], tool: str) -> bool:
    """Whether a principal with ``scopes`` may see and call ``tool``."""
    return "*" in scopes or "tools:*" in scopes or f"tools:{tool}" in scopes


def parse_key_file(text: str, *, source: str = "the API key file") -> tuple[ApiKey, ...]:
    """Every key of a key file's text.

    Raises:
        KeyFileError: a line is not ``KEY`` or ``NAME SCOPES KEY [LIMITS]``, a scope, name or limit is malformed, or
            a name repeats.
    """
    keys: list[ApiKey] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        fields = line.split()
        limits = NO_OVERRIDES
        if len(fields) == 1:
            name, scopes, key = f"key-{number}", ALL_TOOLS, fields[0]
        elif len(fields) in (3, 4):
            name, key = fields[0], fields[2]
            scopes = frozenset(scope for scope in fields[1].split(",") if scope)
            if not _NAME.match(name):
                raise KeyFileError(f"{source} line {number}: the name {name!r} may hold letters, digits and _.@- only")
            bad = sorted(scope for scope in scopes if not _SCOPE.match(scope))
            if bad or not scopes:
                raise KeyFileError(
                    f"{source} line {number}: scopes must be *, tools:* or tools:NAME, not {bad or '(none)'}"
                )
            if len(fields) == 4:
                limits = _limits(fields[3], f"{source} line {number} (key {name!r})")
        else:
            spaced = " (write the limits as one field: rate=50,burst=200)" if len(fields) > 4 else ""
            raise KeyFileError(
                f"{source} line {number}: expected KEY, or NAME SCOPES KEY [LIMITS], found {len(fields)} fields{spaced}"
            )
        found = _DIGEST.match(key)
        if found is None and len(key) < 16:
            raise KeyFileError(f"{source} line {number}: a key needs at least 16 characters")
        keys.append(ApiKey(name, scopes, found.group(1) if found else digest_of(key), limits))
    names = [key.name for key in keys]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise KeyFileError(f"{source}: names appear more than once: {', '.join(repeated)}")
    return tuple(keys)


def _limits(text: str, where: str) -> LimitOverrides:
    try:
        return parse_limits(text)
    except ValueError as exc:
        raise KeyFileError(f"{where}: {exc}") from None


def read_key_file(path: Path) -> tuple[ApiKey, ...]:
    """The keys of a key file.

    Raises:
        KeyFileError: it cannot be read, is not UTF-8, or holds a malformed line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyFileError(f"cannot read the API key file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise KeyFileError(f"the API key file {path} is not UTF-8 text") from exc
    return parse_key_file(text, source=f"the API key file {path}")


def names(keys: Sequence[ApiKey]) -> list[str]:
    """The key names, for logs (never the keys)."""
    return [key.name for key in keys]
