"""JSON Schema (2020-12) checks for tool arguments and structured output.

A compiled validator (jsonschema-rs) decides whether an instance is valid: that is every call on the hot
path, at a fraction of a microsecond. Only an invalid instance goes through the pure-Python ``jsonschema``
validator, whose errors name the path and the rule; it also decides for values that are not plain JSON (a
tool's own Python objects in its structured output). Schemas are never fetched: a ``$ref`` to a document
that is not inside the schema is refused when the schema is loaded, not found out at the first call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jsonschema_rs
from jsonschema import Draft202012Validator, SchemaError, ValidationError

__all__ = ["SchemaCheck"]


class SchemaCheck:
    """One schema, ready to check instances against.

    Raises:
        jsonschema.SchemaError: the schema is not a valid 2020-12 schema, or it refers to another document.
    """

    def __init__(self, schema: Mapping[str, Any]) -> None:
        plain = dict(schema)
        Draft202012Validator.check_schema(plain)
        self._explain = Draft202012Validator(plain)
        try:
            self._fast: Callable[[Any], bool] = jsonschema_rs.Draft202012Validator(plain, offline=True).is_valid
        except ValueError as exc:  # a $ref that leaves the schema: nothing is ever retrieved
            reason = str(exc).split("\n", 1)[0]
            raise SchemaError(f"the schema cannot be used as it is: {reason}") from None

    def problems(self, instance: Any) -> list[ValidationError]:
        """What is wrong with ``instance``, ordered by path; empty when it is valid."""
        try:
            if self._fast(instance):
                return []
        except (ValueError, TypeError):  # not plain JSON (a tool's own Python objects): the slow path decides
            pass
        return sorted(self._explain.iter_errors(instance), key=lambda error: list(error.path))
