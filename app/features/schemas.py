"""JSON Schema (2020-12) checks for tool arguments and structured output.

One compiled validator (jsonschema-rs) decides whether an instance is valid and, when it is not, explains why:
each problem names the path and the rule, values in JSON notation (``null``, ``true``, ``"2"``). Its regular
expressions (``pattern``, ``patternProperties``) run in Rust's linear-time engine or, for the few patterns that
need lookaround or backreferences, in a backtracking engine with a step limit: no argument can make a check run
for long. (Python's ``re`` backtracks without a limit, on the event loop: it never sees an instance.) A value that
is not plain JSON (a tool's own Python objects in its structured output) is checked as the JSON the client
receives. Schemas are never fetched: a ``$ref`` to a document that is not inside the schema is refused when the
schema is loaded, not found out at the first call.

Schemas themselves are checked against the 2020-12 meta-schema by jsonschema-rs too (:func:`check_schema`), so the
Python ``jsonschema`` package (and its referencing, rpds and attrs) is not loaded by the server.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema_rs
import orjson

__all__ = ["BACKTRACK_LIMIT", "MAX_PROBLEMS", "Problem", "SchemaCheck", "SchemaError", "check_schema"]

# Steps a backtracking pattern (one with lookaround or a backreference) may take on one string before the string
# is taken as not matching: about a millisecond, far more than a sensible pattern needs on real input.
BACKTRACK_LIMIT = 20_000
# Problems explained for one instance: enough to fix a call, bounded for an instance with thousands of them.
MAX_PROBLEMS = 20
# A value longer than this (as JSON) is shown cut in a message: the message says what is wrong, not the whole value.
SHOWN_CHARS = 120

PathPart = str | int

_DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"


class SchemaError(ValueError):
    """A schema that cannot be used: not a valid 2020-12 schema, or one that refers to another document. The
    message says what is wrong and where in the schema."""


def check_schema(schema: Mapping[str, Any]) -> None:
    """Check ``schema`` against the JSON Schema 2020-12 meta-schema, whatever its ``$schema`` names: arguments are
    checked by 2020-12 rules, and a meta-schema named there is never fetched.

    Raises:
        SchemaError: the first problem found, with its place in the schema (``at properties/city/type``).
    """
    plain = dict(schema)
    if isinstance(plain.get("$schema"), str):
        plain["$schema"] = _DRAFT_2020_12  # one that is not a string stays, and is refused as such
    try:
        jsonschema_rs.meta.validate(plain)
    except jsonschema_rs.ValidationError as exc:
        where = "/".join(str(part) for part in exc.instance_path)
        raise SchemaError(f"{_message(exc)} (at {where})" if where else _message(exc)) from None
    except jsonschema_rs.ReferencingError as exc:  # pragma: no cover - the meta-schema is the bundled 2020-12 one
        raise SchemaError(f"the schema cannot be used as it is: {exc}") from None


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason an instance does not match its schema: where (``path``, from the instance's root) and what."""

    path: tuple[PathPart, ...]
    message: str


class SchemaCheck:
    """One schema, ready to check instances against.

    Raises:
        SchemaError: the schema is not a valid 2020-12 schema, or it refers to another document.
    """

    def __init__(self, schema: Mapping[str, Any]) -> None:
        plain = dict(schema)
        check_schema(plain)  # the schema is the operator's: its own regexes are not run here
        patterns = jsonschema_rs.FancyRegexOptions(backtrack_limit=BACKTRACK_LIMIT)
        try:
            self._validator = jsonschema_rs.Draft202012Validator(plain, offline=True, pattern_options=patterns)
        except ValueError as exc:  # a $ref that leaves the schema: nothing is ever retrieved
            reason = str(exc).split("\n", 1)[0]
            raise SchemaError(f"the schema cannot be used as it is: {reason}") from None

    def problems(self, instance: Any) -> list[Problem]:
        """What is wrong with ``instance`` (at most :data:`MAX_PROBLEMS`), ordered by path; empty when it is valid."""
        try:
            found = self._problems(instance)
        except (ValueError, TypeError):  # not plain JSON (a tool's own Python objects): check what the client gets
            try:
                plain = orjson.loads(orjson.dumps(instance))
            except TypeError as exc:
                return [Problem((), f"the value cannot be sent as JSON: {exc}")]
            found = self._problems(plain)
        if len(found) < 2:  # valid (the common case) or one problem: nothing to order
            return found
        return sorted(found, key=lambda problem: [_order(part) for part in problem.path])

    def _problems(self, instance: Any) -> list[Problem]:
        if self._validator.is_valid(instance):
            return []
        return _first(Problem(tuple(e.instance_path), _message(e)) for e in self._validator.iter_errors(instance))


def _first(problems: Iterable[Problem]) -> list[Problem]:
    found: list[Problem] = []
    for problem in problems:
        found.append(problem)
        if len(found) == MAX_PROBLEMS:
            break
    return found


def _order(part: PathPart) -> tuple[int, int, str]:
    return (0, part, "") if isinstance(part, int) else (1, 0, part)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def shown(value: Any) -> str:
    """``value`` in JSON notation, cut after :data:`SHOWN_CHARS` characters."""
    text = _json(value)
    if len(text) <= SHOWN_CHARS:
        return text
    if isinstance(value, str):
        return f'{_json(value[:SHOWN_CHARS])[:-1]}…" ({len(value)} characters)'
    return f"{text[:SHOWN_CHARS]}… ({len(text)} characters of JSON)"


def _message(error: jsonschema_rs.ValidationError) -> str:
    """The validator's message, with every value in JSON notation and long values cut."""
    kind = error.kind
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.AdditionalProperties):
        return f"Additional properties are not allowed ({_unexpected(kind.unexpected)})"
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.UnevaluatedProperties):
        return f"Unevaluated properties are not allowed ({_unexpected(kind.unexpected)})"
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.PropertyNames):
        return f"property name {_message(kind.error)}"
    if isinstance(
        kind,
        jsonschema_rs.ValidationErrorKind.BacktrackLimitExceeded | jsonschema_rs.ValidationErrorKind.RegexEngineFailure,
    ):
        return f"{shown(error.instance)} cannot be matched against the schema's pattern within {BACKTRACK_LIMIT} steps"
    message = error.message
    whole = _json(error.instance)
    if len(whole) > SHOWN_CHARS and message.startswith(whole):
        message = shown(error.instance) + message[len(whole) :]
    return message


def _unexpected(names: Sequence[str]) -> str:
    listed = ", ".join(shown(name) for name in names)
    return f"{listed} {'was' if len(names) == 1 else 'were'} unexpected"
