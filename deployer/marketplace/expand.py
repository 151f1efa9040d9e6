"""Marketplace values -> Helm values, as Google's expand_config does.

Values arrive flat, keyed by property name (``auth.enabled``), plus ``__image_repo_prefix__``. Nested mappings
are accepted too and read as dotted names. Expansion checks every value against its property, fills defaults,
generates missing passwords, projects the image names, and nests dotted names into Helm values.
"""

from __future__ import annotations

import base64
import secrets
import string
from collections.abc import Mapping
from typing import Any

import jsonschema
import orjson

from deployer.errors import ValuesError
from deployer.marketplace.certificates import self_signed_certificate
from deployer.marketplace.schema import ImageProperty, Property, Schema

__all__ = [
    "IMAGE_REPO_PREFIX",
    "PUBLIC_IMAGE_REPO_PREFIX",
    "expand",
    "flatten_values",
    "generate_password",
    "nest",
    "project_image",
]

IMAGE_REPO_PREFIX = "__image_repo_prefix__"
# Where the project publishes its images (the chart's defaults): what the CLI renders for when no prefix is given.
PUBLIC_IMAGE_REPO_PREFIX = "gcr.io/erlmcp-public/erlmcp"
# Google's generator leaves out characters that are easily misread: I, l, 0, O.
_LOWER = "".join(c for c in string.ascii_lowercase if c != "l")
_UPPER = "".join(c for c in string.ascii_uppercase if c not in "IO")
_DIGITS = "".join(c for c in string.digits if c != "0")
_SYMBOLS = "*-+."


def flatten_values(values: Mapping[str, Any], schema: Schema, prefix: str = "") -> dict[str, Any]:
    """Read nested mappings as dotted property names.

    Raises:
        ValuesError: a key names no property of the schema.
    """
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if name in schema.properties or (not prefix and name == IMAGE_REPO_PREFIX):
            flat[name] = value
        elif isinstance(value, Mapping) and any(p.startswith(f"{name}.") for p in schema.properties):
            flat.update(flatten_values(value, schema, f"{name}."))
        else:
            raise ValuesError(f"No such property defined in schema: {name!r}")
    return flat


def generate_password(length: int, *, include_symbols: bool = False) -> str:
    """A random password with at least one upper-case letter, lower-case letter and digit (and symbol)."""
    classes = [_LOWER, _UPPER, _DIGITS] + ([_SYMBOLS] if include_symbols else [])
    alphabet = "".join(classes)
    while True:
        candidate = "".join(secrets.choice(alphabet) for _ in range(length))
        if all(any(c in group for c in candidate) for group in classes):
            return candidate


def project_image(prefix: str, image: ImageProperty, version: str) -> str:
    """One projection of the image ``<prefix>[/<image>]:<version>``."""
    repo = f"{prefix}/{image.image}" if image.image else prefix
    registry, _, without_registry = repo.partition("/")
    return {
        "FULL": f"{repo}:{version}",
        "REGISTRY": registry,
        "REPO_WITH_REGISTRY": repo,
        "REPO_WITHOUT_REGISTRY": without_registry,
        "TAG": version,
    }[image.projection]


def _check(prop: Property, value: Any) -> None:
    try:
        jsonschema.validate(value, dict(prop.json_schema))
    except jsonschema.ValidationError as exc:
        raise ValuesError(f"Invalid value for property {prop.name!r}: {exc.message}") from exc


def _generated(prop: Property) -> str:
    config = prop.x_config.get("generatedPassword", {})
    password = generate_password(int(config.get("length", 10)), include_symbols=bool(config.get("includeSymbols")))
    if config.get("base64", True):
        return base64.b64encode(password.encode()).decode()
    return password


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _derived(prop: Property, value: Any, app_uid: str | None) -> dict[str, Any]:
    """The generated properties a property's x-google-marketplace block asks for, from its final value."""
    derived: dict[str, Any] = {}
    if prop.x_type == "STRING":
        target = prop.x_config.get("string", {}).get("generatedProperties", {}).get("base64Encoded")
        if target and value is not None:
            derived[target] = _b64(str(value))
    elif prop.x_type == "TLS_CERTIFICATE":
        names = prop.x_config.get("tlsCertificate", {}).get("generatedProperties", {})
        try:
            pair = orjson.loads(value)
            key, certificate = pair["private_key"], pair["certificate"]
        except (orjson.JSONDecodeError, TypeError, KeyError) as exc:
            raise ValuesError(
                f"Invalid value for property {prop.name!r}: a TLS certificate must be JSON "
                '{"private_key": PEM, "certificate": PEM}'
            ) from exc
        if names.get("base64EncodedPrivateKey"):
            derived[names["base64EncodedPrivateKey"]] = _b64(key)
        if names.get("base64EncodedCertificate"):
            derived[names["base64EncodedCertificate"]] = _b64(certificate)
    elif prop.x_type == "APPLICATION_UID":
        target = prop.x_config.get("applicationUid", {}).get("generatedProperties", {}).get("createApplicationBoolean")
        if target:
            derived[target] = not app_uid  # the chart makes the Application only when none exists yet
    return derived


def expand(values: Mapping[str, Any], schema: Schema, *, app_uid: str | None = None) -> dict[str, Any]:
    """Complete and check the values: flat names to final values, generated and projected ones included.

    ``app_uid`` is the UID of the Application that already exists (Marketplace makes a placeholder).

    Raises:
        ValuesError: unknown key, wrong type, missing required value, no image prefix, or a generated property
            that collides with a given one.
    """
    given = flatten_values(values, schema)
    prefix = given.pop(IMAGE_REPO_PREFIX, None)
    if schema.images and not (isinstance(prefix, str) and prefix):
        raise ValuesError(f"a v2 schema needs {IMAGE_REPO_PREFIX} in the values (the image repository prefix)")
    final: dict[str, Any] = {}
    for name, prop in schema.properties.items():
        if name in given and given[name] is not None:
            final[name] = given[name]
        elif prop.has_default:
            final[name] = prop.default
        elif prop.x_type == "GENERATED_PASSWORD":
            final[name] = _generated(prop)
        elif prop.x_type == "TLS_CERTIFICATE":
            final[name] = self_signed_certificate()
        elif prop.x_type == "APPLICATION_UID" and app_uid:
            final[name] = app_uid
        elif prop.x_type in {"ISTIO_ENABLED"}:
            final[name] = False
        elif prop.x_type in {"INGRESS_AVAILABLE"}:
            final[name] = True
        elif prop.x_type == "DEPLOYER_IMAGE" and isinstance(prefix, str) and prefix:
            final[name] = f"{prefix}/deployer:{schema.published_version}"
        if name in final:
            _check(prop, final[name])
    missing = [name for name in schema.required if name not in final]
    if missing:
        raise ValuesError(f"No value for required property: {', '.join(missing)}")
    for name, prop in schema.properties.items():
        for target, value in _derived(prop, final.get(name), app_uid).items():
            if target in final or target in given:
                raise ValuesError(f"the generated property {target!r} (from {name!r}) collides with a given value")
            final[target] = value
    for image in schema.images:
        final[image.value_name] = project_image(str(prefix), image, schema.published_version)
    return final


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted names to nested mappings: ``{"a.b": 1}`` -> ``{"a": {"b": 1}}``.

    Raises:
        ValuesError: one name is both a value and a parent (``a`` and ``a.b``).
    """
    nested: dict[str, Any] = {}
    for name in sorted(flat):
        *parents, leaf = name.split(".")
        node = nested
        for i, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValuesError(f"{'.'.join(parents[: i + 1])!r} is a value and also the parent of {name!r}")
            node = child
        if isinstance(node.get(leaf), dict):
            raise ValuesError(f"{name!r} is a value and also the parent of other values")
        node[leaf] = flat[name]
    return nested
