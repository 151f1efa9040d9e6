"""Turning a catalogue (or a built-in profile) into the features a server offers."""

from __future__ import annotations

from pathlib import Path

from app.catalog.loader import load_catalog
from app.catalog.model import Catalog
from app.features import Features
from app.features.builtins import BUILTINS
from app.features.tools import Tools, ToolSpec

__all__ = ["PROFILES", "features_from_catalog", "load_features"]

PROFILES = ("conformance",)


def features_from_catalog(catalog: Catalog, *, timeout_seconds: float, page_size: int) -> Features:
    """The features of a catalogue file's entries."""
    specs = [
        ToolSpec(
            name=entry.name,
            title=entry.title,
            description=entry.description,
            input_schema=BUILTINS[entry.builtin].input_schema,
            handler=BUILTINS[entry.builtin].run,
        )
        for entry in catalog.tools
    ]
    return Features(tools=Tools(specs, timeout_seconds=timeout_seconds, page_size=page_size))


def load_features(catalog: str | None, *, timeout_seconds: float, page_size: int) -> Features:
    """The features named by ``--catalog``: a profile name, a YAML file, or the built-in default.

    Raises:
        CatalogError: the file cannot be loaded.
    """
    if catalog == "conformance":
        from app.catalog.conformance import conformance_features

        return conformance_features(timeout_seconds=timeout_seconds, page_size=page_size)
    loaded = load_catalog(Path(catalog) if catalog else None)
    return features_from_catalog(loaded, timeout_seconds=timeout_seconds, page_size=page_size)
