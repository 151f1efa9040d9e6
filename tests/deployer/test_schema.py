from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployer.errors import SchemaError
from deployer.schema import load_schema, parse_schema
from tests.conftest import ROOT


def shipped() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "schema.yaml").read_text())
    return data


def test_the_shipped_schema_is_valid_v2_with_name_namespace_and_the_server_image() -> None:
    schema = load_schema(ROOT / "schema.yaml")
    assert schema.property_of_type("NAME").name == "name"
    assert schema.property_of_type("NAMESPACE").name == "namespace"
    assert {(i.value_name, i.projection) for i in schema.images} == {
        ("image.repository", "REPO_WITH_REGISTRY"),
        ("image.tag", "TAG"),
    }


def broken(change: str) -> dict[str, Any]:
    data = copy.deepcopy(shipped())
    x = data["x-google-marketplace"]
    props = data["properties"]
    if change == "version":
        x["schemaVersion"] = "v3"
    elif change == "semver":
        x["publishedVersion"] = "1.0"
    elif change == "release_note":
        del x["publishedVersionMetadata"]["releaseNote"]
    elif change == "partner_only":
        del x["solutionId"]
    elif change == "projection":
        x["images"][""]["properties"]["image.tag"]["type"] = "DIGEST"
    elif change == "type":
        props["replicaCount"]["type"] = "array"
    elif change == "default_type":
        props["replicaCount"]["default"] = "one"
    elif change == "x_type":
        props["logLevel"]["x-google-marketplace"] = {"type": "NOPE"}
    elif change == "x_json_type":
        props["replicaCount"]["x-google-marketplace"] = {"type": "NAME"}
    elif change == "two_names":
        props["other"] = {"type": "string", "x-google-marketplace": {"type": "NAME"}}
    elif change == "required":
        data["required"].append("ghost")
    elif change == "v1_image":
        props["img"] = {"type": "string", "x-google-marketplace": {"type": "IMAGE"}}
    elif change == "short_password":
        props["auth.apiKey"]["x-google-marketplace"]["generatedPassword"]["length"] = 4
    return data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("version", "schemaVersion"),
        ("semver", "semantic version"),
        ("release_note", "releaseNote"),
        ("partner_only", "partnerId and solutionId"),
        ("projection", "projection 'DIGEST'"),
        ("type", "type 'array'"),
        ("default_type", "default 'one'"),
        ("x_type", "unknown x-google-marketplace type"),
        ("x_json_type", "needs JSON type string"),
        ("two_names", "exactly one property of type NAME"),
        ("required", "ghost"),
        ("v1_image", "v1 only"),
        ("short_password", "at least 8"),
    ],
)
def test_a_schema_breaking_a_marketplace_rule_is_refused_with_the_reason(change: str, message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        parse_schema(broken(change))


def test_an_unreadable_schema_is_refused_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="absent"):
        load_schema(tmp_path / "absent.yaml")
