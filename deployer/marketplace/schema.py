"""The Marketplace schema v2 model, with the rules Google's tools enforce when they load a schema."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deployer.errors import SchemaError
from deployer.marketplace.rules import check_cluster_constraints, check_form, check_service_account

__all__ = ["IMAGE_PROJECTIONS", "X_TYPES", "ImageProperty", "Property", "Schema", "load_schema", "parse_schema"]

# The semver rule of Google's config_helper: MAJOR.MINOR.PATCH with optional pre-release and build.
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")
_PROPERTY_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_JSON_TYPES = {"string": str, "integer": int, "int": int, "number": float, "boolean": bool}
IMAGE_PROJECTIONS = frozenset({"FULL", "REGISTRY", "REPO_WITH_REGISTRY", "REPO_WITHOUT_REGISTRY", "TAG"})
# x-google-marketplace types and the JSON type each needs.
X_TYPES: Mapping[str, str] = {
    "NAME": "string",
    "NAMESPACE": "string",
    "DEPLOYER_IMAGE": "string",
    "GENERATED_PASSWORD": "string",
    "MASKED_FIELD": "string",
    "SERVICE_ACCOUNT": "string",
    "STORAGE_CLASS": "string",
    "STRING": "string",
    "APPLICATION_UID": "string",
    "ISTIO_ENABLED": "boolean",
    "INGRESS_AVAILABLE": "boolean",
    "TLS_CERTIFICATE": "string",
    "REPORTING_SECRET": "string",
}


@dataclass(frozen=True, slots=True)
class Property:
    """One schema property: its JSON Schema and its Marketplace type, if any."""

    name: str
    json_type: str
    x_type: str | None
    default: Any
    has_default: bool
    json_schema: Mapping[str, Any]  # the property without x-google-marketplace, for value validation
    x_config: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ImageProperty:
    """A value projected from an image name: which image and which part of it."""

    value_name: str
    image: str
    projection: str


@dataclass(frozen=True, slots=True)
class Schema:
    """A validated schema v2."""

    published_version: str
    application_api_version: str
    partner_id: str | None
    solution_id: str | None
    properties: Mapping[str, Property]
    required: tuple[str, ...]
    images: tuple[ImageProperty, ...]

    def property_of_type(self, x_type: str) -> Property:
        """The single property of a Marketplace type that must appear exactly once (NAME, NAMESPACE)."""
        found = [p for p in self.properties.values() if p.x_type == x_type]
        if len(found) != 1:  # parse_schema already checked; kept for callers that build Schema by hand
            raise SchemaError(f"the schema needs exactly one property of type {x_type}, found {len(found)}")
        return found[0]


def load_schema(path: Path) -> Schema:
    """Read and validate a schema file.

    Raises:
        SchemaError: the file cannot be read, is not YAML, or breaks a rule.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SchemaError(f"cannot read the schema {path}: {exc.strerror or exc}") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SchemaError(f"the schema {path} is not valid UTF-8 YAML: {exc}") from exc
    return parse_schema(data)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SchemaError(f"{where} must be a mapping")
    return value


def _type_matches(value: Any, json_type: str) -> bool:
    expected = _JSON_TYPES[json_type]
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, float)  # as Google's tools: an int default is not a number
    return isinstance(value, expected)


def _parse_property(name: str, raw: Any) -> Property:
    spec = _mapping(raw, f"property {name!r}")
    if not _PROPERTY_NAME.match(name):
        raise SchemaError(f"property name {name!r} may only hold letters, digits, '_', '.' and '-'")
    json_type = spec.get("type")
    if json_type not in _JSON_TYPES:
        raise SchemaError(f"property {name!r} has type {json_type!r}; use one of string, integer, int, number, boolean")
    has_default = "default" in spec
    default = spec.get("default")
    if has_default and default and not _type_matches(default, json_type):
        raise SchemaError(f"property {name!r}: default {default!r} is not of type {json_type}")
    x_type = None
    x_config: Mapping[str, Any] = {}
    if "x-google-marketplace" in spec:
        x_config = _mapping(spec["x-google-marketplace"], f"property {name!r} x-google-marketplace")
        x_type = x_config.get("type")
        if x_type == "IMAGE":
            raise SchemaError(f"property {name!r}: type IMAGE is schema v1 only; declare images under images")
        if not isinstance(x_type, str) or x_type not in X_TYPES:
            raise SchemaError(f"property {name!r}: unknown x-google-marketplace type {x_type!r}")
        needed = X_TYPES[x_type]
        if _JSON_TYPES[json_type] is not _JSON_TYPES[needed]:
            raise SchemaError(f"property {name!r}: type {x_type} needs JSON type {needed}, not {json_type}")
        if x_type == "GENERATED_PASSWORD":
            length = _mapping(x_config.get("generatedPassword", {}), f"{name}.generatedPassword").get("length", 10)
            if not isinstance(length, int) or length < 8:
                raise SchemaError(f"property {name!r}: generatedPassword.length must be an integer of at least 8")
        elif x_type == "SERVICE_ACCOUNT":
            check_service_account(x_config.get("serviceAccount"), f"property {name!r} serviceAccount")
        elif x_type == "STORAGE_CLASS":
            storage = _mapping(x_config.get("storageClass"), f"property {name!r} storageClass")
            if storage.get("type") != "SSD":
                raise SchemaError(f"property {name!r}: storageClass.type is required and must be SSD")
    json_schema = {key: value for key, value in spec.items() if key not in {"x-google-marketplace", "title"}}
    if json_type == "int":
        json_schema["type"] = "integer"
    return Property(name, json_type, x_type, default, has_default, json_schema, x_config)


def parse_schema(data: Any) -> Schema:
    """Validate a parsed schema document.

    Raises:
        SchemaError: a rule is broken; the message names the key.
    """
    root = _mapping(data, "the schema")
    x = _mapping(root.get("x-google-marketplace"), "x-google-marketplace")
    if x.get("schemaVersion") != "v2":
        raise SchemaError(f"x-google-marketplace.schemaVersion must be v2, not {x.get('schemaVersion')!r}")
    for key in ("applicationApiVersion", "publishedVersion", "images"):
        if key not in x:
            raise SchemaError(f"x-google-marketplace.{key} is required in a v2 schema")
    version = x["publishedVersion"]
    if not isinstance(version, str) or not _SEMVER.match(version):
        raise SchemaError(f"publishedVersion {version!r} must be a full semantic version such as '1.0.5'")
    meta = _mapping(x.get("publishedVersionMetadata"), "x-google-marketplace.publishedVersionMetadata")
    if not meta.get("releaseNote"):
        raise SchemaError("x-google-marketplace.publishedVersionMetadata.releaseNote is required")
    partner, solution = x.get("partnerId"), x.get("solutionId")
    if (partner is None) != (solution is None):
        raise SchemaError("give both x-google-marketplace.partnerId and solutionId, or neither")
    kalm = _mapping(x.get("managedUpdates") or {}, "x-google-marketplace.managedUpdates").get("kalmSupported", False)
    if not isinstance(kalm, bool):
        raise SchemaError("x-google-marketplace.managedUpdates.kalmSupported must be true or false")
    if "clusterConstraints" in x:
        check_cluster_constraints(x["clusterConstraints"])
    if "deployerServiceAccount" in x:
        check_service_account(x["deployerServiceAccount"], "x-google-marketplace.deployerServiceAccount")
    check_form(root.get("form"))

    images: list[ImageProperty] = []
    for image, image_spec in _mapping(x["images"] or {}, "x-google-marketplace.images").items():
        projected = _mapping(_mapping(image_spec, f"image {image!r}").get("properties", {}), f"image {image!r}")
        for value_name, projection in projected.items():
            kind = _mapping(projection, f"image {image!r} property {value_name!r}").get("type")
            if kind not in IMAGE_PROJECTIONS:
                raise SchemaError(
                    f"image {image!r} property {value_name!r}: projection {kind!r} is not one of "
                    + ", ".join(sorted(IMAGE_PROJECTIONS))
                )
            images.append(ImageProperty(value_name, str(image), kind))

    properties = {
        str(name): _parse_property(str(name), raw)
        for name, raw in _mapping(root.get("properties", {}), "properties").items()
    }
    for x_type in ("NAME", "NAMESPACE"):
        count = sum(1 for p in properties.values() if p.x_type == x_type)
        if count != 1:
            raise SchemaError(f"the schema needs exactly one property of type {x_type}, found {count}")
    clashes = sorted({image.value_name for image in images} & set(properties))
    if clashes:
        raise SchemaError(f"image value names also declared as properties: {', '.join(clashes)}")
    required = root.get("required", [])
    if not isinstance(required, list):
        raise SchemaError("required must be a list of property names")
    unknown = [name for name in required if name not in properties]
    if unknown:
        raise SchemaError(f"required names properties that are not defined: {', '.join(map(str, unknown))}")
    return Schema(
        published_version=version,
        application_api_version=str(x["applicationApiVersion"]),
        partner_id=partner,
        solution_id=solution,
        properties=properties,
        required=tuple(str(name) for name in required),
        images=tuple(images),
    )


def overlay_test_schema(base: Mapping[str, Any], test: Mapping[str, Any]) -> dict[str, Any]:
    """``/data-test/schema.yaml`` laid over ``/data/schema.yaml`` for a test run, as Google's tools do: only its
    ``properties`` count (they add plain properties or replace existing ones, defaults included); a property
    may not get, lose or change an x-google-marketplace type; everything else in the test schema is ignored.

    Raises:
        SchemaError: the test schema is not a mapping, or it changes a property's Marketplace type.
    """
    merged = dict(base)
    properties = dict(_mapping(base.get("properties", {}), "properties"))
    test_properties = _mapping(_mapping(test, "the test schema").get("properties", {}), "the test schema properties")
    for name, raw in test_properties.items():
        spec = _mapping(raw, f"test schema property {name!r}")
        before = _mapping(properties.get(name, {}), f"property {name!r}").get("x-google-marketplace", {}) or {}
        after = spec.get("x-google-marketplace", {}) or {}
        if _mapping(before, name).get("type") != _mapping(after, name).get("type"):
            raise SchemaError(f"the test schema may not change the x-google-marketplace type of property {name!r}")
        properties[name] = spec
    merged["properties"] = properties
    return merged
