from __future__ import annotations

import base64
import dataclasses
from typing import Any

import orjson
import pytest
import yaml
from cryptography import x509

from deployer.errors import ValuesError
from deployer.marketplace.expand import expand, generate_password, nest, project_image
from deployer.marketplace.schema import ImageProperty, Schema, load_schema
from tests.conftest import ROOT

BASE = {"name": "mcp1", "namespace": "ns1", "__image_repo_prefix__": "gcr.io/acme/erlmcp"}


@pytest.fixture(scope="module")
def schema() -> Schema:
    return load_schema(ROOT / "schema.yaml")


def test_schema_defaults_fill_in_what_the_values_leave_out(schema: Schema) -> None:
    final = expand(BASE, schema)
    assert (final["replicaCount"], final["auth.enabled"], final["logLevel"]) == (1, True, "INFO")


def test_the_image_is_projected_from_the_prefix_and_published_version(schema: Schema) -> None:
    final = expand(BASE, schema)
    assert (final["image.repository"], final["image.tag"]) == ("gcr.io/acme/erlmcp", schema.published_version)


def test_values_without_the_image_prefix_marketplace_always_passes_are_refused(schema: Schema) -> None:
    # (Marketplace's deployer always passes it; the CLI fills in the public images' prefix before this step.)
    with pytest.raises(ValuesError, match="__image_repo_prefix__"):
        expand({"name": "mcp1", "namespace": "ns1"}, schema)


@pytest.mark.parametrize(
    ("projection", "expected"),
    [
        ("FULL", "gcr.io/acme/mcp/exporter:1.2.3"),
        ("REGISTRY", "gcr.io"),
        ("REPO_WITH_REGISTRY", "gcr.io/acme/mcp/exporter"),
        ("REPO_WITHOUT_REGISTRY", "acme/mcp/exporter"),
        ("TAG", "1.2.3"),
    ],
)
def test_image_projections_match_googles_tools(projection: str, expected: str) -> None:
    image = ImageProperty("v", "exporter", projection)
    assert project_image("gcr.io/acme/mcp", image, "1.2.3") == expected


def test_a_missing_generated_password_is_generated_and_a_given_one_kept(schema: Schema) -> None:
    generated = expand(BASE, schema)["auth.apiKey"]
    assert len(generated) == 32
    assert generated.isalnum()
    assert expand({**BASE, "auth.apiKey": "mine-0123456789"}, schema)["auth.apiKey"] == "mine-0123456789"


def test_generated_passwords_mix_cases_and_digits_and_avoid_lookalikes() -> None:
    for _ in range(50):
        password = generate_password(8, include_symbols=True)
        assert any(c.islower() for c in password)
        assert any(c.isupper() for c in password)
        assert any(c.isdigit() for c in password)
        assert any(c in "*-+." for c in password)
        assert not set(password) & set("Il0O")


def test_a_base64_generated_password_is_encoded(schema: Schema) -> None:
    # Google's default for generatedPassword: base64-encoded, 10 characters.
    default_config = {"type": "GENERATED_PASSWORD"}
    prop = dataclasses.replace(schema.properties["auth.apiKey"], x_config=default_config)
    custom = dataclasses.replace(schema, properties={**schema.properties, "auth.apiKey": prop})
    decoded = base64.b64decode(expand(BASE, custom)["auth.apiKey"]).decode()
    assert len(decoded) == 10
    assert decoded.isalnum()


def test_nested_values_are_read_as_dotted_names(schema: Schema) -> None:
    assert expand({**BASE, "auth": {"enabled": False}}, schema)["auth.enabled"] is False


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"nope": 1}, "No such property defined in schema: 'nope'"),
        ({"auth": {"nope": 1}}, "'auth.nope'"),
        ({"replicaCount": "two"}, "replicaCount"),
        ({"replicaCount": 0}, "replicaCount"),
        ({"logLevel": "LOUD"}, "logLevel"),
        ({"auth.enabled": "yes"}, "auth.enabled"),
        ({"__image_repo_prefix__": ""}, "__image_repo_prefix__"),
    ],
)
def test_values_that_do_not_fit_the_schema_are_refused_naming_the_property(
    schema: Schema, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValuesError, match=message):
        expand({**BASE, **values}, schema)


def test_a_required_property_without_value_is_refused(schema: Schema) -> None:
    with pytest.raises(ValuesError, match="No value for required property: name"):
        expand({k: v for k, v in BASE.items() if k != "name"}, schema)


def test_dotted_names_become_nested_helm_values() -> None:
    assert nest({"a.b.c": 1, "a.d": 2, "e": 3}) == {"a": {"b": {"c": 1}, "d": 2}, "e": 3}


def test_a_name_that_is_both_value_and_parent_is_refused() -> None:
    with pytest.raises(ValuesError, match="parent"):
        nest({"a": 1, "a.b": 2})


def with_properties(schema: Schema, **extra: dict[str, Any]) -> Schema:
    from deployer.marketplace.schema import parse_schema

    data = yaml.safe_load((ROOT / "schema.yaml").read_text())
    data["properties"].update(extra)
    return parse_schema(data)


def test_an_empty_tls_certificate_is_generated_self_signed_with_base64_copies(schema: Schema) -> None:
    final = expand(BASE, schema)
    pair = orjson.loads(final["tls.certificate"])
    certificate = x509.load_pem_x509_certificate(pair["certificate"].encode())
    assert certificate.subject.rfc4514_string() == "CN=Temporary Certificate"
    assert certificate.public_key().key_size == 2048  # type: ignore[union-attr]
    assert base64.b64decode(final["tls.base64EncodedCertificate"]).decode() == pair["certificate"]
    assert base64.b64decode(final["tls.base64EncodedPrivateKey"]).decode() == pair["private_key"]


def test_a_tls_certificate_that_is_not_the_json_pair_is_refused(schema: Schema) -> None:
    with pytest.raises(ValuesError, match="'tls.certificate': a TLS certificate must be JSON"):
        expand({**BASE, "tls.certificate": "-----BEGIN CERTIFICATE-----"}, schema)


def test_a_string_property_can_ask_for_its_base64_copy(schema: Schema) -> None:
    found = with_properties(schema, greeting={"type": "string", "default": "hello", "x-google-marketplace": {
        "type": "STRING", "string": {"generatedProperties": {"base64Encoded": "greetingB64"}}}})  # fmt: skip
    assert expand(BASE, found)["greetingB64"] == base64.b64encode(b"hello").decode()


def test_the_application_uid_and_whether_to_create_the_application(schema: Schema) -> None:
    found = with_properties(
        schema,
        appUid={
            "type": "string",
            "x-google-marketplace": {
                "type": "APPLICATION_UID",
                "applicationUid": {"generatedProperties": {"createApplicationBoolean": "createApp"}},
            },
        },
    )
    assert (expand(BASE, found)["createApp"], "appUid" in expand(BASE, found)) == (True, False)
    placed = expand(BASE, found, app_uid="1234")
    assert (placed["appUid"], placed["createApp"]) == ("1234", False)


def test_a_generated_property_may_not_collide_with_a_given_value(schema: Schema) -> None:
    found = with_properties(schema, greeting={"type": "string", "default": "hi", "x-google-marketplace": {
        "type": "STRING", "string": {"generatedProperties": {"base64Encoded": "logLevel"}}}})  # fmt: skip
    with pytest.raises(ValuesError, match="'logLevel' \\(from 'greeting'\\) collides"):
        expand(BASE, found)
