"""Tool argument and output schemas: 2020-12 semantics, errors that name the path, nothing fetched."""

from __future__ import annotations

import datetime
import json
import time
from typing import Any

import pytest

from app.features.schemas import BACKTRACK_LIMIT, MAX_PROBLEMS, SHOWN_CHARS, SchemaCheck, SchemaError

EVIL = r"^([a-zA-Z0-9]+\s?)*$"  # exponential in a backtracking engine
LOOKAROUND = r"^((?!x)a+)+$"  # needs the backtracking engine (lookahead), and backtracks exponentially
GREETING = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}


def messages(check: SchemaCheck, instance: Any) -> list[str]:
    return [f"{'/'.join(map(str, p.path))}: {p.message}" for p in check.problems(instance)]


def test_a_valid_instance_has_no_problems() -> None:
    assert SchemaCheck(GREETING).problems({"text": "hello"}) == []


def test_problems_name_the_path_and_the_rule_in_path_order() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}}
    assert messages(SchemaCheck(schema), {"b": 1, "a": "x"}) == [
        'a: "x" is not of type "integer"',
        'b: 1 is not of type "string"',
    ]


def test_a_missing_required_property_is_a_problem() -> None:
    assert messages(SchemaCheck(GREETING), {}) == [': "text" is a required property']


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


def test_an_invalid_schema_is_refused_with_the_rule_and_the_place_in_the_schema() -> None:
    with pytest.raises(SchemaError) as refused:
        SchemaCheck({"type": "object", "properties": {"city": {"type": "text"}, "n": {"minLength": -1}}})
    assert str(refused.value) in {
        "\"text\" is not valid under any of the schemas listed in the 'anyOf' keyword (at properties/city/type)",
        "-1 is less than the minimum of 0 (at properties/n/minLength)",
    }
    with pytest.raises(SchemaError, match=r"^5 is not of type \"array\" \(at prefixItems\)$"):
        SchemaCheck({"prefixItems": 5})
    with pytest.raises(SchemaError, match=r"is not a \"regex\""):
        SchemaCheck({"type": "object", "properties": {"a": {"type": "string", "pattern": "("}}})


@pytest.mark.parametrize(
    "meta",
    ["http://json-schema.org/draft-07/schema#", "https://schemas.invalid/meta.json", "http://127.0.0.1:1/meta"],
)
def test_a_schema_is_checked_by_2020_12_rules_whatever_its_schema_keyword_names_and_nothing_is_fetched(
    meta: str,
) -> None:
    SchemaCheck({"$schema": meta, **GREETING})  # loads: no meta-schema is retrieved
    with pytest.raises(SchemaError, match="prefixItems"):
        SchemaCheck({"$schema": meta, "prefixItems": 5})  # a 2020-12 keyword, though draft 7 knows none
    with pytest.raises(SchemaError, match=r"\(at \$schema\)"):
        SchemaCheck({"$schema": 5})


def test_a_reference_to_another_document_is_refused_when_loaded_and_never_fetched() -> None:
    with pytest.raises(SchemaError, match="https://schemas.invalid/x.json"):
        SchemaCheck({"$ref": "https://schemas.invalid/x.json"})


def test_values_that_are_not_plain_json_are_checked_as_the_json_the_client_receives() -> None:
    check = SchemaCheck({"type": "object", "properties": {"when": {"type": "integer"}, "day": {"type": "string"}}})
    assert messages(check, {"when": datetime.date(2026, 11, 28)}) == ['when: "2026-11-28" is not of type "integer"']
    assert check.problems({"day": datetime.date(2026, 11, 28)}) == []  # sent as "2026-11-28", a string
    assert messages(check, {"when": {1, 2}}) == [
        ": the value cannot be sent as JSON: Type is not JSON serializable: set"
    ]


def test_values_in_messages_are_written_in_json() -> None:
    schema = {"type": "object", "properties": {"n": {"enum": [None, True, "2"]}}, "additionalProperties": False}
    assert messages(SchemaCheck(schema), {"n": False, "x'": 1}) == [
        ': Additional properties are not allowed ("x\'" was unexpected)',
        'n: false is not one of null, true or "2"',
    ]


def test_a_pattern_that_backtracks_catastrophically_answers_at_once() -> None:
    """``^([a-zA-Z0-9]+\\s?)*$`` on 40 letters and a ``!`` takes hours in Python's re (finding 5)."""
    check = SchemaCheck({"type": "object", "properties": {"text": {"type": "string", "pattern": EVIL}}})
    started = time.monotonic()
    assert messages(check, {"text": "a" * 40 + "!"}) == [
        "text: " + json.dumps("a" * 40 + "!") + f' does not match "{EVIL}"'
    ]
    assert messages(check, {"text": "words with spaces"}) == []
    assert time.monotonic() - started < 5  # a generous bound: the old explanation took hours


def test_a_pattern_that_needs_backtracking_is_cut_off_with_a_clear_message() -> None:
    check = SchemaCheck({"type": "object", "properties": {"text": {"type": "string", "pattern": LOOKAROUND}}})
    assert messages(check, {"text": "aaaa"}) == []
    [message] = messages(check, {"text": "a" * 60 + "!"})
    limit = f"cannot be matched against the schema's pattern within {BACKTRACK_LIMIT} steps"
    assert message == f"text: {json.dumps('a' * 60 + '!')} {limit}"


@pytest.mark.parametrize("schema", [
    {"patternProperties": {EVIL: {"type": "integer"}}, "additionalProperties": False},
    {"propertyNames": {"pattern": EVIL}},
    {"patternProperties": {LOOKAROUND: {"type": "integer"}}, "unevaluatedProperties": False},
])  # fmt: skip
def test_patterns_on_property_names_answer_at_once(schema: dict[str, Any]) -> None:
    check = SchemaCheck({"type": "object", **schema})
    started = time.monotonic()
    assert check.problems({"a" * 40 + "!": 1}) != []
    assert time.monotonic() - started < 5


def test_long_values_are_cut_in_messages_and_problems_are_bounded() -> None:
    [message] = messages(SchemaCheck({"type": "object", "properties": {"t": {"type": "integer"}}}), {"t": "x" * 10_000})
    assert message == 't: "' + "x" * SHOWN_CHARS + '…" (10000 characters) is not of type "integer"'
    found = SchemaCheck({"type": "array", "items": {"type": "string"}}).problems(list(range(1000)))
    assert [problem.path for problem in found] == [(index,) for index in range(MAX_PROBLEMS)]
