"""Tool argument and output schemas: 2020-12 semantics, errors that name the path, nothing fetched."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from jsonschema import SchemaError

from app.features.schemas import SchemaCheck

GREETING = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}


def messages(check: SchemaCheck, instance: Any) -> list[str]:
    return [f"{'/'.join(map(str, p.path))}: {p.message}" for p in check.problems(instance)]


def test_a_valid_instance_has_no_problems() -> None:
    assert SchemaCheck(GREETING).problems({"text": "hello"}) == []


def test_problems_name_the_path_and_the_rule_in_path_order() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}}
    assert messages(SchemaCheck(schema), {"b": 1, "a": "x"}) == [
        "a: 'x' is not of type 'integer'",
        "b: 1 is not of type 'string'",
    ]


def test_a_missing_required_property_is_a_problem() -> None:
    assert messages(SchemaCheck(GREETING), {}) == [": 'text' is a required property"]


@pytest.mark.parametrize(
    ("schema", "good", "bad"),
    [
        ({"prefixItems": [{"type": "integer"}]}, [1, "rest"], ["one"]),
        ({"$defs": {"s": {"type": "string"}}, "properties": {"x": {"$ref": "#/$defs/s"}}}, {"x": "a"}, {"x": 1}),
        ({"properties": {"a": {}}, "unevaluatedProperties": False}, {"a": 1}, {"a": 1, "b": 2}),
        ({"dependentRequired": {"a": ["b"]}}, {"a": 1, "b": 2}, {"a": 1}),
    ],
)
def test_2020_12_keywords_are_enforced(schema: dict[str, Any], good: Any, bad: Any) -> None:
    check = SchemaCheck(schema)
    assert check.problems(good) == []
    assert check.problems(bad) != []


def test_formats_are_annotations_as_the_2020_12_default_says() -> None:
    assert SchemaCheck({"type": "string", "format": "email"}).problems("not an address") == []


def test_an_invalid_schema_is_refused_when_loaded() -> None:
    with pytest.raises(SchemaError):
        SchemaCheck({"type": "no-such-type"})


def test_a_reference_to_another_document_is_refused_when_loaded_and_never_fetched() -> None:
    with pytest.raises(SchemaError, match="https://schemas.invalid/x.json"):
        SchemaCheck({"$ref": "https://schemas.invalid/x.json"})


def test_values_that_are_not_plain_json_are_still_checked() -> None:
    check = SchemaCheck({"type": "object", "properties": {"when": {"type": "string"}}})
    assert messages(check, {"when": datetime.date(2026, 11, 28)}) == [
        "when: datetime.date(2026, 11, 28) is not of type 'string'"
    ]
