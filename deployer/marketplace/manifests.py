"""Reading rendered manifests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from deployer.errors import DeployerError

__all__ = ["Manifest", "find", "find_one", "parse_manifests"]

Manifest = dict[str, Any]


def parse_manifests(text: str) -> list[Manifest]:
    """Every object of a multi-document YAML stream, empty documents left out.

    Raises:
        DeployerError: the text is not YAML, or a document is not a Kubernetes object.
    """
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise DeployerError(f"the rendered manifests are not valid YAML: {exc}") from exc
    objects: list[Manifest] = []
    for document in documents:
        if document is None:
            continue
        if not isinstance(document, dict) or "kind" not in document or "apiVersion" not in document:
            raise DeployerError(f"a rendered document is not a Kubernetes object: {str(document)[:120]}")
        objects.append(document)
    return objects


def find(manifests: Iterable[Manifest], kind: str) -> list[Manifest]:
    """The objects of one kind."""
    return [m for m in manifests if m.get("kind") == kind]


def find_one(manifests: Iterable[Manifest], kind: str, name: str | None = None) -> Manifest:
    """The one object of a kind (and name, when given).

    Raises:
        DeployerError: there is none, or more than one.
    """
    matches = [m for m in find(manifests, kind) if name is None or _name(m) == name]
    what = f"{kind} {name!r}" if name else kind
    if len(matches) != 1:
        raise DeployerError(f"expected exactly one {what} in the rendered manifests, found {len(matches)}")
    return matches[0]


def _name(manifest: Mapping[str, Any]) -> str | None:
    metadata = manifest.get("metadata") or {}
    name = metadata.get("name")
    return name if isinstance(name, str) else None
